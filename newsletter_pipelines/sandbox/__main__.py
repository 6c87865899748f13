"""`python -m newsletter_pipelines.sandbox serve --port 8765 [--state-file PATH] [--latency S]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from newsletter_pipelines.sandbox.engine import (
    BREVO_PREFIX,
    CONTROL_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    Sandbox,
)
from newsletter_pipelines.sandbox.faults import FaultRule
from newsletter_pipelines.sandbox.server import serve


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="python -m newsletter_pipelines.sandbox")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve both emulated APIs over HTTP")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8765)
    run.add_argument("--state-file", type=Path, help="load the state from and save it to PATH")
    run.add_argument(
        "--batch-delay", type=float, default=0.0, help="seconds a Mailchimp batch waits"
    )
    run.add_argument(
        "--process-delay", type=float, default=0.0, help="seconds a Brevo import waits"
    )
    run.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds every Mailchimp and Brevo API call waits before it is served (a latency "
        "fault rule with rate 1; the control API is not delayed; DELETE /_sandbox/faults or "
        "POST /_sandbox/reset removes it)",
    )
    args = parser.parse_args(argv)
    if args.latency < 0:
        parser.error("--latency must not be negative")
    sandbox = Sandbox(
        state_file=args.state_file,
        batch_delay=args.batch_delay,
        process_delay=args.process_delay,
    )
    if args.latency:
        sandbox.faults.add(FaultRule(kind="latency", rate=1.0, seconds=args.latency))
    root = f"http://{args.host}:{args.port}"
    print(f"Mailchimp: {root}{MAILCHIMP_PREFIX}  key {SANDBOX_MAILCHIMP_KEY}")
    print(f"Brevo:     {root}{BREVO_PREFIX}  key {SANDBOX_BREVO_KEY}")
    print(f"Control:   {root}{CONTROL_PREFIX}")
    if args.latency:
        print(f"Latency:   {args.latency:g} s before every provider API call")
    serve(sandbox, args.host, args.port)


if __name__ == "__main__":
    main()
