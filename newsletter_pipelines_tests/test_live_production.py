"""The production deployment, live: every process of `deploy/compose.yaml` as a subprocess on
free loopback ports, on fresh PostgreSQL databases, with `NEWSLETTER_DEPLOYMENT=production`.

The stack (`production_stack`): Dagster's storage on its own database with the repository's
`dagster.yaml` as it is, the CRM (the demo contacts) and the state database on two more (the
state database upgraded by the compose `migrate` command first: production never upgrades it
on its own; then `dagster instance migrate` creates Dagster's storage once, as processes
started at once on an empty database race to create it and one may die), asset values in a
bucket of a local S3 server (moto, reached through the standard AWS variables only), both
providers served by the sandbox (`python -m newsletter_pipelines.sandbox serve`) under accounts
with fresh random API keys, and alerts posted to a catcher in this process.
The code server, `dagster-webserver`, `dagster-daemon run` (both through a copy of
`deploy/workspace.yaml` naming the code server's port) and the webhook receiver run the
commands of their compose services, with the environment compose gives them (every variable of
its `x-app` environment is set). Then:

1. `full_sync_job` of every audience, launched through the webserver's GraphQL API, succeeds,
   and each audience holds exactly the contacts eligibility finds in the CRM, once each, with
   their names;
2. a CRM user renames a contact and adds a new eligible one: within 60 s of the commit both
   audiences hold both (`crm_changes_sensor` launched the runs; nothing is launched by hand);
3. a person unsubscribes at each audience (sandbox control API): within 60 s the CRM contact
   says `no` (webhook → receiver → `provider_events_sensor` → `provider_events_job`);
4. while an incremental run pushes new contacts to Mailchimp (the write held by a latency fault
   so that it is in flight), the daemon is killed (SIGKILL): the run goes on, as its worker is
   the code server's child, not the daemon's. Its worker is killed too (a crash of the run's
   process): the code server marks the run failed while the held write still reaches the
   provider, leaving the ledger with the write's intents and no outcome. The daemon starts
   again, retries the run (`run_retries`), which succeeds, and alerts the crashed run: every
   contact is at the provider once, the ledger agrees with the provider (no intent left,
   every member's id), and the audiences hold exactly the eligible contacts again;
5. the provider forgets the API keys (sandbox reset: a revoked key answers 401), a CRM change
   starts runs that fail, and the alert catcher receives a run-failure alert naming the job;
6. no API key, webhook secret, alert URL token, database password or object-store secret is in
   any run's event log or run record (every table of Dagster's database), the state database,
   any file of the instance or process log, or any alert; and production wrote nothing into
   NEWSLETTER_HOME.

Each step's time and what it found are printed (`-s`; 3 to 3.5 minutes on two cores). The
retry logs the killed run's writes it found done (`sync_outcomes`, code `interrupted_run`):
every killed create has its `created` outcome. Needs PostgreSQL
(NEWSLETTER_TEST_POSTGRES_URL): skipped without it, except under CI=true, where it fails.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import s3fs
import sqlalchemy as sa
import yaml

from newsletter_pipelines.crm.editor import edit_contact
from newsletter_pipelines.crm.loader import load_demo
from newsletter_pipelines.crm.reader import read_contacts
from newsletter_pipelines.crm.schema import crm_tables
from newsletter_pipelines.providers.base import Member, MemberStatus
from newsletter_pipelines.providers.resources import SANDBOX_AUDIENCE
from newsletter_pipelines.sandbox import BREVO_PREFIX, MAILCHIMP_PREFIX, FaultRule
from newsletter_pipelines.settings import PROJECT_ROOT, Settings
from newsletter_pipelines.state.ledger import ledger, load_ledger, outcomes
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.sync.email_address import match_key
from newsletter_pipelines.sync.identity import RowState
from newsletter_pipelines.sync.rules import OPTED_OUT
from newsletter_pipelines_tests.live import (
    AUDIENCES,
    AlertCatcher,
    LiveStack,
    Person,
    Phases,
    Process,
    Run,
    free_ports,
    process_env,
    serve_sandbox,
    start,
    wait_answering,
    wait_for,
)

pytestmark = [
    pytest.mark.live,
    pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:gql.*"),  # dagster_graphql's client
]

BUDGET_S = 60.0
INCREMENTAL_JOB = "incremental_sync_job"
CHANGE_SENSOR = "crm_changes_sensor"
HELD_WRITE_S = 8.0
"""How long the sandbox holds the Mailchimp write during which the run is killed."""
KILLED_CREATES = 20
COMPOSE = yaml.safe_load((PROJECT_ROOT / "deploy" / "compose.yaml").read_text())
DEPLOY_WORKSPACE = yaml.safe_load((PROJECT_ROOT / "deploy" / "workspace.yaml").read_text())
PROGRAMS = {"python": sys.executable} | {
    name: str(Path(sys.executable).parent / name)
    for name in ("dagster", "dagster-webserver", "dagster-daemon")
}
"""The programs compose's commands name, from this virtualenv."""
WORKER_PID = re.compile(r"Started process for run \(pid: (\d+)\)")


# --- the stack -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """Fresh random secrets of one stack, named: none may show up in any log."""

    values: Mapping[str, str]

    @classmethod
    def new(cls) -> Secrets:
        return cls(
            {
                "mailchimp_api_key": f"{secrets.token_hex(16)}-us21",
                "brevo_api_key": f"xkeysib-{secrets.token_hex(32)}-{secrets.token_hex(8)}",
                "webhook_secret": secrets.token_urlsafe(24),
                "alert_token": secrets.token_urlsafe(18),
                "database_password": secrets.token_urlsafe(12),
                "aws_secret_access_key": secrets.token_urlsafe(30),
            }
        )

    def __getitem__(self, name: str) -> str:
        return self.values[name]


@dataclass
class Production:
    """The running production stack and what the test needs besides `LiveStack`."""

    stack: LiveStack
    root: Path
    secrets: Secrets
    alerts: AlertCatcher
    env: dict[str, str]
    databases: Mapping[str, sa.URL]
    replacements: Mapping[str, str]
    """Compose's hosts, ports and files → this stack's."""

    def start(self, service: str, name: str | None = None) -> Process:
        """The compose service's command as a process of the stack, logging into
        `<name>.log` (default: the service's name)."""
        name = name or service
        process = start(name, self.command(service), env=self.env, cwd=self.root)
        self.stack.processes[service] = process
        return process

    def command(self, service: str) -> list[str]:
        """The compose service's command with this stack's executables, ports and files."""
        return compose_command(service, self.replacements)

    def sandbox(self, verb: str, path: str, body: Any = None) -> httpx.Response:
        """A call to the sandbox's control API (`/_sandbox/<path>`)."""
        url = f"{self.stack.sandbox_url}/_sandbox/{path}"
        answer = httpx.request(verb, url, json=body, timeout=30)
        answer.raise_for_status()
        return answer


def compose_command(service: str, replace: Mapping[str, str]) -> list[str]:
    """The `command` of a compose service, each argument `replace` names replaced, the
    programs taken from this virtualenv."""
    command = COMPOSE["services"][service]["command"]
    return [PROGRAMS.get(arg, replace.get(arg, arg)) for arg in command]


def production_env(
    found: Secrets,
    urls: Mapping[str, sa.URL],
    *,
    sandbox: str,
    receiver: str,
    alerts: str,
    s3: str,
    bucket: str,
) -> dict[str, str]:
    """The variables compose's `x-app` sets, pointed at this stack."""

    def url(name: str, driver: str = "postgresql") -> str:
        with_password = urls[name].set(drivername=driver, password=found["database_password"])
        return with_password.render_as_string(hide_password=False)

    return {
        "NEWSLETTER_DEPLOYMENT": "production",
        "DAGSTER_POSTGRES_URL": url("dagster", "postgresql+psycopg2"),
        "NEWSLETTER_CRM_DATABASE_URL": url("crm"),
        "NEWSLETTER_STATE_DATABASE_URL": url("state"),
        "NEWSLETTER_MAILCHIMP_API_KEY": found["mailchimp_api_key"],
        "NEWSLETTER_MAILCHIMP_BASE_URL": sandbox + MAILCHIMP_PREFIX,
        # a fresh account has no audience: the sync creates it
        "NEWSLETTER_MAILCHIMP_AUDIENCE_DEFAULTS": SANDBOX_AUDIENCE.model_dump_json(),
        "NEWSLETTER_BREVO_API_KEY": found["brevo_api_key"],
        "NEWSLETTER_BREVO_BASE_URL": sandbox + BREVO_PREFIX,
        "NEWSLETTER_WEBHOOK_SECRET": found["webhook_secret"],
        "NEWSLETTER_WEBHOOK_PUBLIC_URL": receiver,
        "NEWSLETTER_ALERT_WEBHOOK_URL": alerts,
        "NEWSLETTER_TIMEZONE": "Europe/Berlin",
        "NEWSLETTER_IO_BASE_URI": f"s3://{bucket}/values",
        "AWS_ACCESS_KEY_ID": "live-production-test",
        "AWS_SECRET_ACCESS_KEY": found["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3,
    }


@contextmanager
def production_stack(
    root: Path,
    home: Path,
    new_database: Callable[[], sa.URL],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Production]:
    """The production processes on fresh databases (see the module docstring); ready when
    yielded, stopped afterwards (the logs' tails printed when the block raised). This process
    gets the same environment, so its `Settings()` are the processes' settings."""
    root.mkdir(parents=True)
    dagster_home = root / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    found = Secrets.new()
    urls = {name: new_database() for name in ("dagster", "crm", "state")}
    code_port, webserver_port, receiver_port, s3_port = free_ports(4)
    workspace = root / "workspace.yaml"
    pointed = copy.deepcopy(DEPLOY_WORKSPACE)
    (entry,) = pointed["load_from"]
    entry["grpc_server"] |= {"host": "127.0.0.1", "port": code_port}
    workspace.write_text(yaml.safe_dump(pointed))
    base_env = {
        k: v for k, v in process_env(home, dagster_home).items() if not k.startswith("AWS_")
    }
    bucket = f"live-{uuid.uuid4().hex[:12]}"
    processes: dict[str, Process] = {}
    with ExitStack() as stack:
        stack.callback(stop_all, processes)
        alerts = stack.enter_context(AlertCatcher(f"/services/T0/B0/{found['alert_token']}"))
        s3_url = f"http://127.0.0.1:{s3_port}"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)]
        processes["s3"] = start("s3", argv, env=base_env, cwd=root)
        wait_answering(processes["s3"], s3_url, what="the S3 server answers")
        processes["sandbox"], sandbox_url = serve_sandbox(root, base_env)
        receiver_url = f"http://127.0.0.1:{receiver_port}"
        settings_env = production_env(
            found,
            urls,
            sandbox=sandbox_url,
            receiver=receiver_url,
            alerts=alerts.url,
            s3=s3_url,
            bucket=bucket,
        )
        missing = set(COMPOSE["x-app"]["environment"]) - set(settings_env)
        assert not missing, f"compose sets variables this stack does not: {missing}"
        env = base_env | settings_env
        for name, value in settings_env.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(bucket)
        s3fs.S3FileSystem.clear_instance_cache()
        accounts = (
            ("mailchimp/accounts", {"api_key": found["mailchimp_api_key"]}),
            (
                "brevo/accounts",
                {
                    "api_key": found["brevo_api_key"],
                    "attributes": [{"name": "SALUTATION"}, {"name": "NEWSLETTER_TAGS"}],
                },
            ),
        )
        for path, body in accounts:
            httpx.post(f"{sandbox_url}/_sandbox/{path}", json=body).raise_for_status()
        settings = Settings()
        load_demo(settings.resolved_crm_database_url(), settings.demo_data_dir, settings.crm_schema)
        production = Production(
            stack=LiveStack(
                root,
                settings,
                processes,
                receiver_url,
                webserver_port,
                sandbox_url=sandbox_url,
            ),
            root=root,
            secrets=found,
            alerts=alerts,
            env=env,
            databases=urls,
            replacements={
                "0.0.0.0": "127.0.0.1",
                "4000": str(code_port),
                "3000": str(webserver_port),
                "8780": str(receiver_port),
                "/opt/dagster/workspace.yaml": str(workspace),
            },
        )
        # compose's one-shot `migrate` (its shell finds this virtualenv's programs first): the
        # state database, then Dagster's storage, created once before the processes start (at
        # once on an empty database they race to create it: `type "pending_steps" already
        # exists`)
        path = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
        migrate = production.command("migrate")
        done = start("migrate", migrate, env=env | {"PATH": path}, cwd=root)
        if done.popen.wait(timeout=120) != 0:
            raise RuntimeError(f"{' '.join(migrate)} failed:\n{done.tail()}")
        for service in ("code-server", "receiver", "webserver", "daemon"):
            production.start(service)
        try:
            production.stack.wait_until_ready()
            yield production
        except BaseException:
            print(production.stack.logs(), file=sys.stderr, flush=True)
            raise


def stop_all(processes: dict[str, Process]) -> None:
    """Stop the processes, the last started first (a daemon started again: first)."""
    for process in reversed(list(processes.values())):
        process.stop()


# --- what the providers, the CRM and the ledger hold -----------------------------------------


def members(stack: LiveStack, audience: str) -> dict[str, Member]:
    """The audience's members by match key; fails on two members at one address."""
    client = stack.provider_client(audience)
    try:
        snapshot = client.snapshot()
    finally:
        client.close()
    found: dict[str, Member] = {}
    for member in snapshot:
        key = match_key(member.email)
        assert key not in found, f"{audience}: two members at {key}: {found[key]}, {member}"
        found[key] = member
    return found


def members_at(stack: LiveStack, audience: str, emails: Sequence[str]) -> dict[str, Member]:
    """The members at these addresses, by match key (`Provider.members`)."""
    client = stack.provider_client(audience)
    try:
        return {match_key(m.email): m for m in client.members(list(emails))}
    finally:
        client.close()


def eligible(stack: LiveStack) -> dict[str, tuple[str, str]]:
    """The contacts eligibility finds in the CRM now: match key → (first name, last name)."""
    engine = stack.crm_engine()
    try:
        contacts = read_contacts(engine, stack.settings.crm_schema)
    finally:
        engine.dispose()
    frame = classify(contacts, stack.settings.crm_values).eligible
    return {
        match_key(email): (first, last)  # the address sent (domain in ASCII), as providers key it
        for email, first, last in zip(
            frame["email"], frame["first_name"], frame["last_name"], strict=True
        )
    }


def assert_holds_exactly_the_eligible(
    stack: LiveStack, unsubscribed: Sequence[Person] = ()
) -> dict[str, int]:
    """Each audience's subscribed members are the eligible contacts, once each, with their
    names; its other members are the `unsubscribed` people, opted out (Mailchimp
    `unsubscribed`, Brevo `blacklisted`)."""
    wanted = eligible(stack)
    opted_out = {match_key(p.email) for p in unsubscribed}
    held = {}
    for audience in AUDIENCES:
        found = members(stack, audience)
        subscribed = {k for k, m in found.items() if m.status == MemberStatus.SUBSCRIBED}
        assert subscribed == set(wanted), (
            audience,
            sorted(subscribed - set(wanted))[:5],
            sorted(set(wanted) - subscribed)[:5],
        )
        others = {k: m.status for k, m in found.items() if k not in subscribed}
        assert set(others) == opted_out, (audience, others)
        assert set(others.values()) <= OPTED_OUT, (audience, others)
        names = {k: (m.first_name, m.last_name) for k, m in found.items()}
        wrong = {k: (names[k], wanted[k]) for k in wanted if names[k] != wanted[k]}
        assert not wrong, (audience, list(wrong.items())[:5])
        held[audience] = len(subscribed)
    return held


def assert_ledger_agrees(stack: LiveStack) -> None:
    """Every audience's ledger agrees with its provider: no write in flight, a row for each
    member with its provider id, and every row the sync counts as subscribed is a member."""
    engine = stack.state_engine()
    try:
        for audience in AUDIENCES:
            found = members(stack, audience)
            rows = {r.member_key: r for r in load_ledger(engine, audience)}
            pending = [r for r in rows.values() if r.intent is not None]
            assert not pending, (audience, pending[:5])
            missing = sorted(set(found) - set(rows))
            assert not missing, (audience, missing[:5])
            wrong_ids = [
                (key, rows[key].provider_id, m.provider_id)
                for key, m in found.items()
                if rows[key].provider_id != m.provider_id
            ]
            assert not wrong_ids, (audience, wrong_ids[:5])
            gone = [
                key
                for key, r in rows.items()
                if r.state == RowState.SUBSCRIBED and key not in found
            ]
            assert not gone, (audience, gone[:5])
    finally:
        engine.dispose()


def add_contacts(stack: LiveStack, count: int, label: str) -> list[Person]:
    """`count` new eligible CRM contacts (newsletter `yes`, fresh addresses), committed in one
    transaction as a CRM would insert them; as people of the Mailchimp audience."""
    schema = stack.settings.crm_schema
    contacts = crm_tables(schema).contacts
    now = datetime.now(UTC).replace(tzinfo=None)
    engine = stack.crm_engine()
    try:
        with engine.begin() as conn:
            first = int(conn.execute(sa.select(sa.func.max(contacts.c[schema.id]))).scalar_one())
            rows = [
                {
                    schema.id: first + n,
                    schema.salutation: "Frau",
                    schema.first_name: f"Live{n}",
                    schema.last_name: label.capitalize(),
                    schema.email: f"{label}.{n}.{uuid.uuid4().hex[:8]}@mail.example.net",
                    schema.newsletter: stack.settings.crm_values.yes,
                    schema.is_private: False,
                    schema.updated_at: now,
                    schema.created_at: now,
                }
                for n in range(1, count + 1)
            ]
            conn.execute(contacts.insert(), rows)
    finally:
        engine.dispose()
    return [Person("mailchimp", r[schema.id], r[schema.email]) for r in rows]


def edit(stack: LiveStack, person: Person, **fields: str) -> None:
    """A CRM user edits the person's contact (`updated_at` bumped)."""
    engine = stack.crm_engine()
    try:
        edit_contact(engine, stack.settings.crm_schema, str(person.contact_id), fields)
    finally:
        engine.dispose()


def wait_held(
    stack: LiveStack, wanted: Mapping[str, tuple[str, str]], since: float
) -> dict[str, float]:
    """Poll both audiences (every 0.5 s) until each holds every address of `wanted` (address →
    (first name, last name)) subscribed with those names; seconds from `since` to when each
    audience first held all of them."""
    seen: dict[str, float] = {}
    emails = list(wanted)
    expected = {match_key(e): names for e, names in wanted.items()}

    def held() -> bool:
        stack.check_alive()
        for audience in AUDIENCES:
            if audience in seen:
                continue
            found = members_at(stack, audience, emails)
            now = {k: (m.first_name, m.last_name) for k, m in found.items()}
            subscribed = all(m.status == MemberStatus.SUBSCRIBED for m in found.values())
            if now == expected and subscribed:
                seen[audience] = round(time.time() - since, 1)
        return len(seen) == len(AUDIENCES)

    wait_for(held, what=f"both audiences hold {emails}", timeout=BUDGET_S + 30, every=0.5)
    return seen


def ledger_intents(stack: LiveStack, audience: str, people: Sequence[Person]) -> dict[str, str]:
    """The write in flight of each person's ledger row (member key → intent), where one is."""
    keys = [match_key(p.email) for p in people]
    query = sa.select(ledger.c.member_key, ledger.c.intent).where(
        ledger.c.audience == audience, ledger.c.member_key.in_(keys), ledger.c.intent.is_not(None)
    )
    engine = stack.state_engine()
    try:
        with engine.connect() as conn:
            return {key: intent for key, intent in conn.execute(query)}
    finally:
        engine.dispose()


def outcome_rows(stack: LiveStack, audience: str, people: Sequence[Person]) -> list[Any]:
    """The outcome log's rows of these people's addresses in the audience."""
    query = sa.select(outcomes).where(
        outcomes.c.audience == audience, outcomes.c.email.in_([p.email for p in people])
    )
    engine = stack.state_engine()
    try:
        with engine.connect() as conn:
            return list(conn.execute(query))
    finally:
        engine.dispose()


def batch_subscribes(production: Production) -> int:
    """Mailchimp batch subscribes (`POST /lists/{list_id}`) the sandbox has served."""
    calls = production.sandbox("GET", "stats").json()["calls"]
    return sum(
        c["count"]
        for c in calls
        if (c["provider"], c["method"], c["route"]) == ("mailchimp", "POST", "/lists/{list_id}")
    )


def the_run(stack: LiveStack, run_id: str) -> Run:
    """The run with this id now."""
    (found,) = [r for r in stack.runs() if r.run_id == run_id]
    return found


# --- where secrets could show up -------------------------------------------------------------


def database_texts(url: sa.URL, label: str) -> dict[str, str]:
    """Every row of every table of the database as text, by `label:table`."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
            return {
                f"{label}:{table}": "\n".join(
                    conn.execute(sa.text(f'SELECT CAST(t AS text) FROM "{table}" t')).scalars()
                )
                for table in list(tables)
            }
    finally:
        engine.dispose()


def file_texts(root: Path) -> dict[str, str]:
    """Every file under `root` (process logs, the instance's compute logs, ...) as text."""
    return {
        str(path.relative_to(root)): path.read_text(errors="replace")
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --- the test --------------------------------------------------------------------------------


def test_production_stack_syncs_recovers_alerts_and_keeps_its_secrets(
    tmp_path: Path,
    isolated_home: Path,
    new_postgres_database: Callable[[], sa.URL],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    phase = Phases()
    facts: dict[str, object] = {}

    def fact(name: str, value: object) -> None:
        facts[name] = value
        print(f"           {name}: {value}", flush=True)

    with production_stack(
        tmp_path / "production", isolated_home, new_postgres_database, monkeypatch
    ) as production:
        stack = production.stack
        phase("stack ready")

        # 1. full sync of every audience through GraphQL
        stack.full_sync(AUDIENCES, timeout=240)
        fact("members after the full sync", assert_holds_exactly_the_eligible(stack))
        phase("1. full syncs, audiences hold exactly the eligible contacts")
        stack.wait_until_quiet()
        refused = production.stack.processes["receiver"].log.read_text().count("429 too many")
        fact("webhooks the receiver refused with 429 (the Brevo sync's echo)", refused)
        phase("   echo applied, no run active")

        # 2. a CRM change reaches both audiences by itself
        wait_for(
            lambda: stack.sensor(CHANGE_SENSOR)["sensorState"]["ticks"],
            what=f"{CHANGE_SENSOR} has set its watermark",
            timeout=60,
        )
        (renamed,) = stack.people("mailchimp", 1)
        wanted = {
            renamed.email: ("Renamedlive", eligible(stack)[match_key(renamed.email)][1]),
        }
        committed = time.time()
        edit(stack, renamed, first_name="Renamedlive")
        (added,) = add_contacts(stack, 1, "added")
        wanted[added.email] = ("Live1", "Added")
        latency = wait_held(stack, wanted, committed)
        fact("CRM change → audiences, s", latency)
        assert all(s <= BUDGET_S for s in latency.values()), latency
        phase("2. CRM changes held by both audiences")

        # 3. an unsubscribe at each audience reaches the CRM
        people: list[Person] = []
        for audience in AUDIENCES:
            people += stack.people(audience, 1, exclude=[renamed, added, *people])
        acks = [stack.unsubscribe(person) for person in people]
        seen = stack.wait_for_crm(acks, timeout=BUDGET_S)
        unsubscribed = {a.person.audience: round(seen[a.person] - a.acked_at, 1) for a in acks}
        fact("unsubscribe → CRM, s", unsubscribed)
        assert all(s <= BUDGET_S for s in unsubscribed.values()), unsubscribed
        phase("3. unsubscribes written into the CRM")

        # 4. the daemon and the run's worker die during a push; the run is retried
        stack.wait_until_quiet()
        subscribes = batch_subscribes(production)
        held = FaultRule(
            kind="latency",
            provider="mailchimp",
            method="POST",
            path_prefix="/lists/",
            seconds=HELD_WRITE_S,
            rate=1.0,
        )
        production.sandbox("POST", "faults", held.model_dump(exclude_none=True))
        created = add_contacts(stack, KILLED_CREATES, "killed")
        wait_for(
            lambda: len(ledger_intents(stack, "mailchimp", created)) == KILLED_CREATES,
            what="a run records the create intents (its write goes out)",
            timeout=90,
            every=0.2,
        )
        sent_at = time.time()
        # one run of the audience at a time (dagster.yaml): the one pushing the creates
        (run,) = [
            r
            for r in stack.runs(statuses=["STARTED"])
            if r.tags.get("dagster/partition") == "mailchimp"
        ]
        assert run.job == INCREMENTAL_JOB, run
        messages = stack.run_messages(run.run_id)
        (worker_pid,) = {int(m[1]) for m in map(WORKER_PID.search, messages) if m}
        worker = psutil.Process(worker_pid)
        doomed = [worker, *worker.children(recursive=True)]
        stack.processes.pop("daemon").kill()
        killed_at = time.time()
        time.sleep(2)
        now = the_run(stack, run.run_id)
        fact(
            "2 s after the daemon's SIGKILL",
            f"run {now.status}, worker {'alive' if worker.is_running() else 'gone'}",
        )
        assert now.status == "STARTED" and worker.is_running(), facts
        for process in doomed:
            process.kill()
        psutil.wait_procs(doomed, timeout=10)
        fact("worker killed after the write went out, s", round(time.time() - sent_at, 1))
        # the sandbox counts a call once it has served it: the write is still held
        assert batch_subscribes(production) == subscribes, "raise HELD_WRITE_S"
        wait_for(
            lambda: the_run(stack, run.run_id).status == "FAILURE",
            what="the code server marks the killed run failed",
            timeout=30,
        )
        fact("killed run failed after, s", round(time.time() - killed_at, 1))
        wait_for(
            lambda: batch_subscribes(production) > subscribes,
            what="the held write reaches the provider",
            timeout=HELD_WRITE_S + 30,
        )
        production.sandbox("DELETE", "faults")
        at_provider = members_at(stack, "mailchimp", [p.email for p in created])
        fact(
            "after the crash",
            (
                f"{len(at_provider)} of {KILLED_CREATES} at Mailchimp, "
                f"{len(ledger_intents(stack, 'mailchimp', created))} intents in the ledger, "
                f"{len(outcome_rows(stack, 'mailchimp', created))} outcomes logged"
            ),
        )
        assert len(at_provider) == KILLED_CREATES, facts  # the write landed: the hard case
        production.start("daemon", "daemon-restarted")

        def retried() -> Run | None:
            stack.check_alive()
            retries = [
                r
                for r in stack.runs(INCREMENTAL_JOB)
                if r.tags.get("dagster/parent_run_id") == run.run_id
            ]
            assert len(retries) <= 1, retries
            if retries and retries[0].status in ("FAILURE", "CANCELED"):
                raise AssertionError(f"the retry failed: {retries[0]}")
            return retries[0] if retries and retries[0].status == "SUCCESS" else None

        retry = wait_for(retried, what="the daemon retries the killed run", timeout=180, every=1)
        crash_alerts = wait_for(
            lambda: [t for t in list(production.alerts.texts) if run.run_id in t],
            what=f"an alert on the killed run {run.run_id}",
            timeout=90,
        )
        fact("alert on the killed run", crash_alerts[0])
        stack.wait_until_quiet()
        fact("retry", f"{retry.run_id} {retry.status}, {retry.ended - killed_at:.0f} s")
        logged = outcome_rows(stack, "mailchimp", created)
        fact(
            "outcomes of the killed creates",
            sorted({(r.run_id == run.run_id, r.action, r.outcome, r.code) for r in logged}),
        )
        created_logged = {r.email for r in logged if r.outcome == "created"}
        assert {p.email for p in created} <= created_logged, "an outcome of the killed run lost"
        assert_holds_exactly_the_eligible(stack, unsubscribed=people)
        assert_ledger_agrees(stack)
        phase("4. daemon and worker killed mid-push, retried, ledger agrees")

        # 5. a provider fails: the alert catcher hears of it
        (changed,) = stack.people("brevo", 1, exclude=[renamed, added, *people, *created])
        alerts_before = len(list(production.alerts.texts))
        production.sandbox("POST", "reset")  # our accounts and keys are gone: 401
        failing_at = time.time()
        edit(stack, changed, last_name="Failing")

        def alerted() -> list[str]:
            stack.check_alive()
            failures = {
                r.run_id
                for r in stack.runs(INCREMENTAL_JOB, statuses=["FAILURE"])
                if r.created >= failing_at
            }
            return [
                text
                for text in list(production.alerts.texts)[alerts_before:]
                if INCREMENTAL_JOB in text and any(run_id in text for run_id in failures)
            ]

        run_alerts = wait_for(alerted, what="a run-failure alert", timeout=120, every=1)
        fact("alert", run_alerts[0])
        phase("5. provider failure alerted")

    # 6. no secret in any log
    texts = file_texts(production.root)
    for name in ("dagster", "state"):
        texts |= database_texts(production.databases[name], name)
    texts |= {f"alert {n}": text for n, text in enumerate(list(production.alerts.texts))}
    assert run.run_id in texts["dagster:event_logs"]  # the grep reads real material
    assert any(run.run_id in text for name, text in texts.items() if name.endswith(".log"))
    leaks = [
        f"{name} in {where}"
        for where, text in texts.items()
        for name, value in production.secrets.values.items()
        if value in text
    ]
    assert not leaks, leaks
    written = sorted(str(p) for p in isolated_home.rglob("*")) if isolated_home.exists() else []
    assert not written, f"production wrote into NEWSLETTER_HOME: {written}"
    phase("6. no secret in logs, records or alerts; stopped")
    size = sum(map(len, texts.values()))
    fact("searched", f"{len(texts)} files, tables and alerts, {size:,} characters")
    print(f"phases, s: {phase.times}")
