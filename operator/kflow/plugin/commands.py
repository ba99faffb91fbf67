"""The command line of ``kubectl kflow``: arguments, the commands, errors as one line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kflow._models import RunStatus
from kflow._workflow import EVENT_NAME_RE
from kflow.controller.annotations import ACTIONS, EVENT_PREFIX
from kflow.plugin import render
from kflow.plugin.api import Cluster, PluginError
from kflow.plugin.manifest import ManifestError, ManifestOptions, render_manifests

__all__ = ["build_parser", "event_value", "main", "refusal"]

ACTION_KEYS: dict[str, str] = {verb: key for key, verb in ACTIONS.items()}


def _common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: the options may come before or after the command, and a subcommand's
    # default would otherwise overwrite a value given before it.
    parser.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS,
        help="the namespace (default: the kubeconfig context's, else 'default')",
    )  # fmt: skip
    parser.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="path to the kubeconfig file"
    )
    parser.add_argument(
        "--context", default=argparse.SUPPRESS, help="the kubeconfig context to use"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl kflow",
        description="Inspect and drive kflow WorkflowRuns.",
    )
    _common(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _common(sub)
        return sub

    runs = command("runs", "list WorkflowRuns: phase, current step, what each waits for")
    runs.add_argument(
        "-A", "--all-namespaces", action="store_true", help="list the runs of every namespace"
    )
    describe = command("describe", "show a run: steps, wait, events, conditions, output")
    describe.add_argument("run", metavar="RUN")

    event = command("event", "deliver an event to a run (annotation event.kflow.io/NAME)")
    event.add_argument("run", metavar="RUN")
    event.add_argument("name", metavar="NAME", help="the event's name")
    payload = event.add_mutually_exclusive_group()
    payload.add_argument("--data", metavar="JSON", help="the payload (default: null)")
    payload.add_argument("--file", metavar="FILE", help="read the payload from FILE ('-': stdin)")

    for verb, effect in (
        ("cancel", "cancel a run; its compensations run (-> Compensated)"),
        ("retire", "retire a run no code will resume (-> RetiredUnresumable)"),
    ):
        action = command(verb, effect)
        action.add_argument("run", metavar="RUN")
        action.add_argument("--reason", default="", help="recorded on the run's error")
    retry = command("retry", "resume a Failed or Blocked run, keeping its completed steps")
    retry.add_argument("run", metavar="RUN")

    manifest = command("manifest", "print the Workflow resources a Python module defines")
    manifest.add_argument("module", metavar="MODULE", help="e.g. orders.workflows")
    manifest.add_argument("--workflow", metavar="NAME", help="only this workflow")
    manifest.add_argument("--image", help="the image segment Pods run (implies --executor pod)")
    manifest.add_argument("--executor", choices=["pod", "inline"], help="where segments run")
    manifest.add_argument(
        "--service-account", metavar="NAME", help="the segment Pods' service account"
    )
    manifest.add_argument(
        "--inactive", action="store_true", help="declare the versions without making them active"
    )
    return parser


def event_value(text: str | None, source: str) -> str:
    """The annotation value for a payload given as JSON text: compact JSON, and empty for
    null (the operator reads an empty value as null). Bad JSON is refused here, before
    anything is sent, naming where it came from."""
    if text is None:
        return ""
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PluginError(f"{source} is not JSON: {exc}") from None
    if payload is None:
        return ""
    # Compact, so the same payload written with other spacing is the same event: the
    # operator's dedupe key hashes the annotation's exact value.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def refusal(verb: str, name: str, phase: str | None) -> str | None:
    """Why ``verb`` would be pointless for a run in ``phase`` (None: go ahead).

    The operator would refuse too, but only in an Event the user has to look for."""
    if verb == "retry":
        if phase == RunStatus.FAILED.value or (phase or "").startswith("Blocked"):
            return None
        now = phase or "not started"
        return f"workflowrun {name} is {now}: only a Failed or Blocked run can be retried"
    if phase in render.FINISHED:
        what = "it takes no more events" if verb == "event" else f"there is nothing to {verb}"
        return f"workflowrun {name} is {phase}: {what}"
    return None


def _phase(run: dict[str, Any]) -> str | None:
    phase = (run.get("status") or {}).get("phase")
    return str(phase) if phase else None


def _read_payload(args: argparse.Namespace) -> str:
    if args.file is None:
        return event_value(args.data, "--data")
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise PluginError(f"cannot read {args.file}: {why}") from None
    return event_value(text, args.file)


def _runs(cluster: Cluster, args: argparse.Namespace) -> int:
    found = cluster.list_runs(all_namespaces=args.all_namespaces)
    if not found:
        where = "any namespace" if args.all_namespaces else f"namespace {cluster.namespace}"
        print(f"No workflowruns found in {where}.", file=sys.stderr)
        return 0
    print(render.runs_table(found, datetime.now(UTC), all_namespaces=args.all_namespaces))
    return 0


def _describe(cluster: Cluster, args: argparse.Namespace) -> int:
    run = cluster.get_run(args.run)
    events = cluster.run_events(run)
    now = datetime.now(UTC)
    if isinstance(events, str):
        print(render.describe(run, None, now, events_refused=events))
    else:
        print(render.describe(run, events, now))
    return 0


def _event(cluster: Cluster, args: argparse.Namespace) -> int:
    if not EVENT_NAME_RE.match(args.name):
        raise PluginError(
            f"invalid event name {args.name!r}: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    value = _read_payload(args)  # before any call: bad JSON sends nothing
    _check(cluster, "event", args.run)
    cluster.annotate_run(args.run, EVENT_PREFIX + args.name, value)
    print(f"workflowrun.kflow.io/{args.run}: event {args.name} sent")
    return 0


def _action(cluster: Cluster, args: argparse.Namespace) -> int:
    verb: str = args.command
    _check(cluster, verb, args.run)
    cluster.annotate_run(args.run, ACTION_KEYS[verb], getattr(args, "reason", ""))
    print(f"workflowrun.kflow.io/{args.run}: {verb} requested")
    return 0


def _check(cluster: Cluster, verb: str, name: str) -> None:
    why = refusal(verb, name, _phase(cluster.get_run(name)))
    if why is not None:
        raise PluginError(why)


COMMANDS: dict[str, Callable[[Cluster, argparse.Namespace], int]] = {
    "runs": _runs,
    "describe": _describe,
    "event": _event,
    "cancel": _action,
    "retire": _action,
    "retry": _action,
}


def _manifest(args: argparse.Namespace) -> int:
    if "" not in sys.path:
        sys.path.insert(0, "")  # as `python -m` does: a console script's path lacks the cwd
    options = ManifestOptions(
        module=args.module,
        image=args.image,
        executor=args.executor,
        service_account=args.service_account,
        namespace=getattr(args, "namespace", None),
        active=not args.inactive,
    )
    try:
        print(render_manifests(options, args.workflow), end="")
    except ManifestError as exc:
        raise PluginError(str(exc)) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "manifest":
            return _manifest(args)
        cluster = Cluster.connect(
            kubeconfig=getattr(args, "kubeconfig", None),
            context=getattr(args, "context", None),
            namespace=getattr(args, "namespace", None),
        )
        try:
            return COMMANDS[args.command](cluster, args)
        finally:
            cluster.close()
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
