"""Set up Prefect for a loopml project: the webhook automation of ``deployments/automations.yaml``.

    python -m loopml.prefect_setup --webhook https://hooks.example.com/loopml --project churn-example

Creates (or updates) a ``CustomWebhookNotificationBlock`` that POSTs ``{"subject", "body"}`` JSON to
the URL, then creates the automation from the file with the block's id filled in, through the
Prefect CLI against ``PREFECT_API_URL`` (a local ``prefect server`` or Prefect Cloud).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

AUTOMATIONS = Path(__file__).resolve().parents[2] / "deployments" / "automations.yaml"


def create_webhook_block(url: str, name: str, allow_private: bool = False) -> str:
    """Save the webhook notification block; returns its document id."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(name="loopml", url=url, method="POST", allow_private_urls=allow_private,
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    return str(block.save(name, overwrite=True))


def apply_automations(webhook: str, project: str, template: Path = AUTOMATIONS, allow_private: bool = False) -> str:
    """Create the automation for ``project``; returns the Prefect CLI's output."""
    block_id = create_webhook_block(webhook, f"loopml-{project}-webhook".lower(), allow_private)
    text = template.read_text().replace("__PROJECT__", project).replace("__WEBHOOK_BLOCK_ID__", block_id)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
        out.write(text)
    try:
        done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "automation", "create", "--from-file",
                               out.name], capture_output=True, text=True, timeout=120)
    finally:
        Path(out.name).unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"prefect automation create failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhook", required=True, help="URL the notification is POSTed to")
    parser.add_argument("--project", required=True, help="the `project` of loopml.toml")
    parser.add_argument("--allow-private-urls", action="store_true", help="allow a webhook on a private address")
    args = parser.parse_args(argv)
    print(apply_automations(args.webhook, args.project, allow_private=args.allow_private_urls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
