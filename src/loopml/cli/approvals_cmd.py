"""`loopml models request-promotion|approve|reject|requests`: promotion under an approval policy."""

from __future__ import annotations

import hashlib
from typing import Annotated

import typer
from rich.table import Table

from loopml.cli.common import ConfigOpt, JsonOpt, ProfileOpt, models_app, out, print_json, workspace
from loopml.errors import LoopmlError

ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in history and sent with the event).")]


@models_app.command("request-promotion")
def models_request_promotion(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to promote.")],
    alias: Annotated[str, typer.Option("--alias", "-a")] = "production",
    reason: ReasonOpt = "promotion requested",
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Ask for ALIAS to move to a version; it moves when the approvals the policy asks for are in
    (`[approvals]` in loopml.toml). The move is a compare-and-set against where ALIAS points now."""
    from loopml import approvals
    from loopml.cli.models_cmd import _alias_now, _parse_model_ref

    name, version, _ = _parse_model_ref(ref)
    if version is None:
        raise LoopmlError(f"say which version to promote, e.g. {name}:3")
    ws = workspace(config, profile)
    made = approvals.request(ws, ws.registry.get(name, version), alias, expected=_alias_now(ws, name, alias),
                             reason=reason)
    if as_json:
        print_json(made)
        return
    out.print(f"request {made.id}: {name}:v{version} -> {name}@{alias} (now v{made.expected or '-'}), "
              f"awaiting {made.required} approval(s); approve with `loopml models approve {made.id}`")


def _decide(request_id: int, decision: str, reason: str, config: str | None, profile: str | None,
            as_json: bool) -> None:
    from loopml import approvals

    made, move = approvals.decide(workspace(config, profile), request_id, decision, reason=reason)
    if as_json:
        print_json({"request": made, "move": move})
        return
    if move is not None:
        cleared = "".join(f"; {c.alias} v{c.from_version} removed" for c in move.cleared)
        out.print(f"request {made.id} approved by {', '.join(made.approvals)}: {made.name}@{made.alias} "
                  f"v{move.from_version or '-'} -> v{move.to_version}{cleared}")
    elif made.state == "stale":
        out.print(f"request {made.id} is stale: {made.name}@{made.alias} moved since it was requested (it "
                  f"expected v{made.expected or '-'}); request the promotion again if it still stands")
    elif made.state == "rejected":
        out.print(f"request {made.id} rejected: {made.name}:v{made.version} does not become {made.alias}")
    else:
        out.print(f"request {made.id}: {len(made.approvals)} of {made.required} approval(s); still pending")


@models_app.command("approve")
def models_approve(request_id: Annotated[int, typer.Argument(help="The request's id (`loopml models requests`).")],
                   reason: ReasonOpt = "approved", config: ConfigOpt = None, profile: ProfileOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Approve a promotion request. Neither whoever requested it nor whoever trained the version may
    (on PostgreSQL: their database roles); the approval that completes the count moves the alias."""
    _decide(request_id, "approve", reason, config, profile, as_json)


@models_app.command("reject")
def models_reject(request_id: Annotated[int, typer.Argument(help="The request's id (`loopml models requests`).")],
                  reason: ReasonOpt = "rejected", config: ConfigOpt = None, profile: ProfileOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Reject a promotion request: the alias stays where it is."""
    _decide(request_id, "reject", reason, config, profile, as_json)


@models_app.command("requests")
def models_requests(name: Annotated[str | None, typer.Argument()] = None,
                    all_states: Annotated[bool, typer.Option("--all", help="Closed requests too.")] = False,
                    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Promotion requests awaiting approval (with --all, every request and how it ended) and the policy."""
    from loopml import approvals

    registry = approvals.governed(workspace(config, profile))
    found = registry.promotion_requests(name, pending_only=not all_states)
    if as_json:
        print_json({"policy": registry.policy(), "requests": found})
        return
    rules = registry.policy()
    out.print("approval policy: " + (", ".join(f"{a} needs {n}" for a, n in rules.items()) or "none (no alias "
                                     "needs approval; set [approvals] in loopml.toml)"))
    table = Table()
    for col in ("id", "model", "alias", "from", "state", "approvals", "requested by", "reason"):
        table.add_column(col, overflow="fold")
    for r in found:
        table.add_row(str(r.id), f"{r.name}:v{r.version}", r.alias, f"v{r.expected}" if r.expected else "-", r.state,
                      f"{len(r.approvals)}/{r.required}" + (f" ({', '.join(r.approvals)})" if r.approvals else ""),
                      r.requested_by, r.reason)
    out.print(table if found else "no " + ("" if all_states else "pending ") + "promotion requests")


@models_app.command("copy")
def models_copy(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION or NAME@ALIAS in this environment (--profile).")],
    to: Annotated[str, typer.Option("--to", help="The target environment: a profile of this loopml.toml.")],
    to_config: Annotated[str | None, typer.Option(help="The target's loopml.toml, if not this one.")] = None,
    promote: Annotated[bool, typer.Option("--promote", help="Release the copy in the target when its gates "
                                          "pass (its rollout and approval policy apply).")] = False,
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Copy a version (artifact, its datasets, gate report, lineage) into another environment's registry
    and store, verified by sha256; the target judges it with its own gates. Idempotent."""
    from loopml.cli.models_cmd import _parse_model_ref
    from loopml.environment_copy import copy_version
    from loopml.stages.release import release

    name, version, alias = _parse_model_ref(ref)
    source = workspace(config, profile)
    if version is None and alias is not None:
        version = source.registry.get(name, alias=alias).version
    if version is None:
        raise LoopmlError(f"say which version to copy, e.g. {name}:3 or {name}@production")
    target = workspace(to_config or config, to)
    label = f"profile {profile}" if profile else str(source.config.source_file or "default")
    done = copy_version(source, target, name, version, source_label=label)
    move = None
    if promote and done.target.status == "approved":
        production = target.registry.aliases(name).get("production")
        if production != done.target.version:
            key = done.report_key or done.target.lineage.get("validation_report")
            sha = hashlib.sha256(target.store.get(key)).hexdigest() if key else None
            move = release(target, done.target, f"copied from {label} and approved by this environment's gates",
                           sha, {"report": key}, production)
    if as_json:
        print_json({"source": done.source.ref, "target": done.target.ref, "created": done.created,
                    "status": done.target.status, "report": done.report_key, "move": move})
        return
    verdict = ("already held there" if not done.created else
               f"judged there: {done.target.status}" + ("" if done.report is None or done.report.passed else
                                                        " (" + ", ".join(c.name for c in done.report.failed_checks)
                                                        + ")"))
    out.print(f"{done.source.ref} -> {to}: {done.target.ref}, {verdict}"
              + (f"; {move.alias} -> v{move.to_version}" if move else ""), soft_wrap=True, highlight=False)
