"""`python -m newsletter_pipelines.sandbox serve --port 8765 [--state-file PATH] [--latency S]`
(every provider call answered S seconds after it arrived, its processing counted inside)
and `… person PROVIDER EMAIL ACTION [--new-email X] [--tag T] [--list NAME] [--state-file PATH]`:
a person acts at the embedded sandbox (`make dev`), whose state file the sync shares."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from newsletter_pipelines.sandbox.brevo_rules import BrevoError
from newsletter_pipelines.sandbox.engine import (
    BREVO_PREFIX,
    CONTROL_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    Sandbox,
)
from newsletter_pipelines.sandbox.faults import FaultRule
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError
from newsletter_pipelines.sandbox.people import PersonEvent, brevo_person, mailchimp_person
from newsletter_pipelines.sandbox.server import serve
from newsletter_pipelines.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="python -m newsletter_pipelines.sandbox")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve both emulated APIs over HTTP")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8765)
    run.add_argument("--state-file", type=Path, help="load the state from and save it to PATH")
    run.add_argument(
        "--batch-delay",
        type=float,
        default=0.0,
        help="seconds a Mailchimp batch waits: its result (GET /batches/{id} finished) is ready "
        "that long after it was submitted, i.e. served (Mailchimp takes about 1 s for a small "
        "batch)",
    )
    run.add_argument(
        "--process-delay", type=float, default=0.0, help="seconds a Brevo import waits"
    )
    run.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds every Mailchimp and Brevo API call takes, as a provider's round trip: the "
        "call is served when it arrives and answered S seconds after it arrived, the "
        "sandbox's own processing (and its wait for the state, which concurrent calls share) "
        "counted inside those S seconds, not added on top; a call whose processing takes "
        "longer is answered when done (a latency fault rule with rate 1 and round_trip; the "
        "control API is not delayed; DELETE /_sandbox/faults or POST /_sandbox/reset removes "
        "it)",
    )
    person = commands.add_parser(
        "person",
        help="a person acts at a sandbox audience in the state file (the embedded sandbox); "
        "the audience's webhooks are called",
    )
    person.add_argument("provider", choices=["mailchimp", "brevo"])
    person.add_argument("email")
    person.add_argument("action", help="e.g. unsubscribe, signup, delete, tag, change_email")
    person.add_argument("--new-email", help="change_email: the new address")
    person.add_argument("--tag", help="tag / untag: the tag")
    person.add_argument("--list", help="the audience's name (needed when there are several)")
    person.add_argument(
        "--state-file",
        type=Path,
        help="the sandbox state (default: NEWSLETTER_SANDBOX_STATE_FILE, else "
        ".newsletter/sandbox.json under NEWSLETTER_HOME)",
    )
    args = parser.parse_args(argv)
    if args.command == "person":
        act(parser, args)
        return
    if args.latency < 0:
        parser.error("--latency must not be negative")
    sandbox = Sandbox(
        state_file=args.state_file,
        batch_delay=args.batch_delay,
        process_delay=args.process_delay,
    )
    if args.latency:
        sandbox.faults.add(
            FaultRule(kind="latency", rate=1.0, seconds=args.latency, round_trip=True)
        )
    root = f"http://{args.host}:{args.port}"
    print(f"Mailchimp: {root}{MAILCHIMP_PREFIX}  key {SANDBOX_MAILCHIMP_KEY}")
    print(f"Brevo:     {root}{BREVO_PREFIX}  key {SANDBOX_BREVO_KEY}")
    print(f"Control:   {root}{CONTROL_PREFIX}")
    if args.latency:
        print(f"Latency:   {args.latency:g} s from arrival to answer of every provider API call")
    serve(sandbox, args.host, args.port)


def act(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Apply one person's action to the state file and print the member afterwards."""
    settings = Settings()
    state_file = args.state_file or settings.sandbox_state_file or settings.home / "sandbox.json"
    if not Path(state_file).exists():
        parser.error(f"no sandbox state at {state_file}: run a sync first (make demo or make dev)")
    sandbox = Sandbox(state_file=Path(state_file))
    lists = audiences(sandbox, args.provider)
    chosen = [i for i, name in lists.items() if args.list in (None, name)]
    if len(chosen) != 1:
        names = ", ".join(sorted(lists.values())) or "none"
        parser.error(f"{args.provider}: name the audience with --list (audiences: {names})")
    try:
        event = PersonEvent(
            list_id=chosen[0],
            email=args.email,
            action=args.action,
            new_email=args.new_email,
            tag=args.tag,
        )
    except ValidationError as exc:
        parser.error(f"action {args.action!r}: {exc.errors()[0]['msg']}")
    apply = mailchimp_person if args.provider == "mailchimp" else brevo_person
    try:
        answer = apply(sandbox, event)
    except (ProblemError, BrevoError) as exc:
        print(f"refused by the sandbox: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(answer, indent=2, default=str))


def audiences(sandbox: Sandbox, provider: str) -> dict[str, str]:
    """List id → name of the provider's audiences in the sandbox."""
    with sandbox.transaction(write=False) as state:
        if provider == "mailchimp":
            return {i: lst.name for a in state.mailchimp.values() for i, lst in a.lists.items()}
        return {str(i): lst.name for a in state.brevo.values() for i, lst in a.lists.items()}


if __name__ == "__main__":
    main()
