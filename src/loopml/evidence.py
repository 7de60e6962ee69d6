"""Evidence bundles: one folder an auditor can read offline, and a check that nothing in it changed.

``loopml models evidence churn:3 OUT`` writes:

* ``model.pt2``: the artifact, whose sha256 the registry holds;
* ``model_card.md``: what the model is, what it was trained on, how it was judged, who moved it;
* ``validation_report.html``: the gate report, checked against the sha256 recorded at registration;
* ``data_manifest.json``: each dataset version's manifest (columns, rules, profile) and its source
  files with their sha256;
* ``code.json``: the commit and whether the tree was dirty; ``environment.json``: the environment
  recorded at training and the one the bundle was written in;
* ``history.json``: the model's full append-only history; ``lineage.json`` and ``lineage.html``;
* ``approvals.json``: the registry's approval policy and every request to promote this version, with
  who approved or rejected it and why;
* ``reproduction.json``: the verdict of :func:`loopml.reproduction.reproduce` (unless skipped);
* ``SHA256SUMS``: the sha256 of every file above, in ``sha256sum`` format (``sha256sum -c`` checks
  it too), and, with a team key, ``SHA256SUMS.sig``: an Ed25519 signature of that file.

:func:`verify` recomputes every sum, refuses a missing or an extra file, and checks the signature
with the team's public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml import lineage as lineage_mod
from loopml import lineage_report
from loopml.capabilities import GovernedRegistry
from loopml.errors import LoopmlError
from loopml.exports import importance_lines
from loopml.stages.training import environment

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import ModelVersion
    from loopml.reproduction import Reproduction

SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"


class EvidenceError(LoopmlError):
    """A bundle that cannot be written, or that fails its check (the file named)."""


@dataclass(frozen=True)
class Verification:
    folder: str
    files: int
    signed: bool
    signature_checked: bool
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def _card(model: ModelVersion, lin: lineage_mod.ModelLineage, verdict: Reproduction | None) -> str:
    lines = [f"# {model.ref} ({model.status})", "",
             f"- registered {model.created_at:%Y-%m-%d %H:%M UTC} by {model.created_by}",
             *(f"- {d.role}: {d.ref}, {d.rows:,} rows, from "
               + ", ".join(f"{s.path} (sha256 {s.sha256})" for s in d.sources) for d in lin.datasets),
             f"- features ({lin.feature_view}): {', '.join(lin.features)}",
             f"- code: commit {model.git_commit}" + (" with uncommitted changes" if lin.git_dirty else ""),
             f"- training run {model.run_id}, fingerprint {lin.fingerprint}",
             f"- environment: {', '.join(f'{k} {v}' for k, v in model.environment.items())}",
             f"- artifact sha256 {model.artifact_sha256}", "", "## Metrics", "",
             *(f"- {k}: {v:.4f}" for k, v in sorted(model.metrics.items())), "", "## Gates", "",
             "| check | verdict | value |", "|---|---|---|",
             *(f"| {name} | {'pass' if g.get('passed') else 'FAIL'} | "
               f"{'-' if g.get('value') is None else format(g['value'], '.4g')} |" for name, g in lin.gates.items()),
             "", "## History", "",
             *(f"- {e.at:%Y-%m-%d %H:%M} {e.action}{' @' + e.alias if e.alias else ''} by {e.actor}: {e.reason}"
               for e in lin.history), *importance_lines(model.lineage.get("importance")), "", "## Reproduction", "",
             verdict.describe() if verdict is not None else "not run for this bundle"]
    return "\n".join(lines) + "\n"


def _dataset_manifests(ws: Workspace, lin: lineage_mod.ModelLineage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node in lin.datasets:
        if not node.found:
            out[node.role] = {"ref": node.ref, "missing": "not in this store"}
            continue
        version = ws.datasets.get(node.ref)
        manifest_key = version.data_key.rsplit("/", 1)[0] + "/manifest.json"
        data = ws.store.get(version.data_key)
        out[node.role] = {"ref": version.ref, "id": version.id, "data_sha256": hashlib.sha256(data).hexdigest(),
                          "manifest": json.loads(ws.store.get(manifest_key))}
    return out


def write_bundle(ws: Workspace, name: str, version: int, folder: Path, *, reproduction: Reproduction | None = None,
                 signing_key: Path | None = None) -> list[str]:
    """Write the bundle for ``name:version`` into ``folder`` (new or empty); returns the file names."""
    if folder.exists() and any(folder.iterdir()):
        raise EvidenceError(f"{folder} is not empty: write the bundle to a new folder")
    model = ws.registry.get(name, version)
    lin = lineage_mod.model_lineage(ws, name, version)
    artifact = ws.store.get(model.artifact_key)
    if hashlib.sha256(artifact).hexdigest() != model.artifact_sha256:
        raise EvidenceError(f"the stored artifact of {model.ref} does not match the registry's sha256")
    files: dict[str, bytes] = {"model.pt2": artifact}
    report_key = model.lineage.get("validation_report")
    if report_key and ws.store.exists(report_key):
        report = ws.store.get(report_key)
        expected = model.lineage.get("validation_report_sha256")
        if expected and hashlib.sha256(report).hexdigest() != expected:
            raise EvidenceError(f"the gate report {report_key} changed since {model.ref} was registered")
        files["validation_report.html"] = report
    files["model_card.md"] = _card(model, lin, reproduction).encode()
    files["data_manifest.json"] = _json(_dataset_manifests(ws, lin))
    files["code.json"] = _json({"git_commit": model.git_commit, "git_dirty": lin.git_dirty,
                                "fingerprint": lin.fingerprint, "profile": model.lineage.get("profile")})
    files["environment.json"] = _json({"recorded": dict(model.environment), "bundle_written_with": environment()})
    files["history.json"] = _json([asdict(e) for e in ws.registry.history(name)])
    governed = ws.ability(ws.registry, GovernedRegistry)
    if governed is not None:  # every request to promote this version, its decisions and the policy
        files["approvals.json"] = _json({"policy": governed.policy(), "requests": [
            asdict(r) for r in governed.promotion_requests(name, pending_only=False) if r.version == version]})
    files["lineage.json"] = _json(lin.to_dict())
    files["lineage.html"] = lineage_report.lineage_html(lin).encode()
    files["reproduction.json"] = _json(reproduction.to_dict() if reproduction is not None else {"run": False})
    folder.mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        (folder / file).write_bytes(data)
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {file}\n" for file, data in sorted(files.items()))
    (folder / SUMS).write_text(sums)
    written = [*sorted(files), SUMS]
    if signing_key is not None:
        (folder / SIGNATURE).write_text(_sign(signing_key, sums.encode()))
        written.append(SIGNATURE)
    return written


def _sign(key_file: Path, data: bytes) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise EvidenceError(f"--sign-key {key_file}: not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EvidenceError(f"--sign-key {key_file}: an Ed25519 key is needed, this is {type(key).__name__}; "
                            "make one with `openssl genpkey -algorithm ed25519`")
    return base64.b64encode(key.sign(data)).decode() + "\n"


def _signature_problem(folder: Path, public_key: Path) -> str | None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(public_key.read_bytes())
    except (OSError, ValueError) as exc:
        raise EvidenceError(f"--public-key {public_key}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError(f"--public-key {public_key}: an Ed25519 public key is needed")
    try:
        key.verify(base64.b64decode((folder / SIGNATURE).read_text()), (folder / SUMS).read_bytes())
    except (InvalidSignature, ValueError):
        return f"{SIGNATURE}: the signature does not match {SUMS} for this public key"
    return None


def verify(folder: Path, public_key: Path | None = None) -> Verification:
    """Check every file against ``SHA256SUMS`` (and the signature, given the public key)."""
    sums_file = folder / SUMS
    if not sums_file.is_file():
        raise EvidenceError(f"{folder} has no {SUMS}: not an evidence bundle")
    listed: dict[str, str] = {}
    for line in sums_file.read_text().splitlines():
        digest, _, file = line.partition("  ")
        listed[file] = digest
    problems = []
    for file, digest in sorted(listed.items()):
        path = folder / file
        if not path.is_file():
            problems.append(f"{file}: listed in {SUMS} but missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{file}: its sha256 differs from {SUMS} (changed after the bundle was written)")
    present = {p.name for p in folder.iterdir() if p.is_file()} - {SUMS, SIGNATURE}
    problems += [f"{file}: not listed in {SUMS} (added after the bundle was written)"
                 for file in sorted(present - set(listed))]
    signed = (folder / SIGNATURE).is_file()
    checked = False
    if public_key is not None:
        if not signed:
            problems.append(f"{SIGNATURE}: missing, but a public key was given (the bundle is not signed)")
        else:
            problem = _signature_problem(folder, public_key)
            checked = problem is None
            problems += [problem] if problem else []
    return Verification(str(folder), len(listed), signed, checked, tuple(problems))
