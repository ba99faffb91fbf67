"""The ``kflow`` command: ``kflow operator``, ``kflow runner`` and ``kflow crds``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kflow", description="Durable workflows on Kubernetes")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "operator", help="run the operator (settings from KFLOW_* environment variables)"
    )
    runner = commands.add_parser(
        "runner", help="advance one run by one segment and exit (a segment Pod's entry point)"
    )
    runner.add_argument("--run", required=True, help="the run's id (its WorkflowRun's uid)")
    runner.add_argument(
        "--steal",
        action="store_true",
        help="take the lease even if held (the operator knows the holder is dead)",
    )
    crds = commands.add_parser("crds", help="write the CRD manifests")
    crds.add_argument("folder", type=Path, nargs="?", default=Path("crds"))
    args = parser.parse_args(argv)

    if args.command == "runner":
        from kflow.runner import main as runner_main

        return runner_main(args.run, steal=args.steal)
    if args.command == "crds":
        from kflow.resources import write_crds

        for path in write_crds(args.folder):
            print(path)
        return 0

    from pydantic import ValidationError

    from kflow._serde import describe_validation_error
    from kflow.controller.main import run_operator
    from kflow.settings import OperatorSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    # kopf says "Handler ... succeeded" for every watch event of every run: noise, and
    # CPU under load. Its warnings and errors (a failing handler) still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        settings = OperatorSettings()
    except ValidationError as exc:  # field names and messages only: never the DSN's value
        print(f"kflow operator: bad settings: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    asyncio.run(run_operator(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
