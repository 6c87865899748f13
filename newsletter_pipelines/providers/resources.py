"""Dagster resources for the provider clients (the only provider module importing Dagster).

Each resource hands out one client per audience. API keys come from environment variables
through `EnvVar`, so Dagster never stores or shows them. With no key configured, the client
talks to the embedded sandbox (in-process, state kept in a file across runs), and every run's
log says so at resource start.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import Field, PrivateAttr

from newsletter_pipelines.providers.brevo import REQUESTS_PER_SECOND, BrevoClient
from newsletter_pipelines.providers.brevo_attributes import AttributeMap
from newsletter_pipelines.providers.http import PollPolicy
from newsletter_pipelines.providers.mailchimp import (
    ACCOUNT_CONNECTIONS,
    NAME,
    AudienceDefaults,
    MailchimpClient,
)
from newsletter_pipelines.sandbox import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.connection_slots import AccountSlots, account_slots

MAILCHIMP_KEY_ENV = "NEWSLETTER_MAILCHIMP_API_KEY"
BREVO_KEY_ENV = "NEWSLETTER_BREVO_API_KEY"
SANDBOX_AUDIENCE = AudienceDefaults(
    company="Sandbox Example GmbH",
    address1="Beispielstrasse 1",
    city="Berlin",
    country="DE",
    permission_reminder="You signed up for our newsletter.",
    from_name="Newsletter",
    from_email="newsletter@example.com",
)
SANDBOX_POLL = PollPolicy(initial=0.05, maximum=1.0, deadline=600.0)

C = TypeVar("C", MailchimpClient, BrevoClient)
_sandboxes: dict[Path, Sandbox] = {}
_sandboxes_lock = threading.Lock()
_run_clients_lock = threading.Lock()
RunStart = Callable[["MailchimpResource | BrevoResource", InitResourceContext], None]
_run_starts: list[RunStart] = []


def on_run_start(hook: RunStart) -> RunStart:
    """Have `hook(resource, context)` called each time a run sets a provider resource up, once
    its clients can be made (`defs.providers.snapshot_read` starts the snapshot's read there).
    A hook that raises is logged as a warning: the run goes on without what it would start."""
    _run_starts.append(hook)
    return hook


def embedded_sandbox(state_file: Path) -> Sandbox:
    """The process's sandbox for this state file (shared by every client of the process)."""
    path = state_file.resolve()
    with _sandboxes_lock:
        if path not in _sandboxes:
            _sandboxes[path] = Sandbox(state_file=path)
        return _sandboxes[path]


def _state_file(settings: Settings) -> str:
    return str(settings.sandbox_state_file or settings.home / "sandbox.json")


def _sandbox_notice(provider: str, env: str, state_file: str) -> str:
    return (
        f"{provider}: no API key in {env}, so this run uses the EMBEDDED SANDBOX, not "
        f"{provider}: nothing leaves this machine (sandbox state: {state_file})."
    )


class _ProviderResource(ConfigurableResource):
    """What both provider resources share: the key, the sandbox fallback and the run-log line."""

    label: ClassVar[str]
    key_env: ClassVar[str]

    api_key: str | None = Field(default=None, description="EnvVar; unset: the embedded sandbox.")
    sandbox_state_file: str = ".newsletter/sandbox.json"
    # the run's clients (`run_client`): set up for a run, None outside one
    _run_clients: dict[tuple[Any, ...], Any] | None = PrivateAttr(default=None)
    # work started for the run's steps (`start_early`), and its thread
    _early: dict[str, Future[Any]] = PrivateAttr(default_factory=dict)
    _early_thread: ThreadPoolExecutor | None = PrivateAttr(default=None)

    @property
    def uses_sandbox(self) -> bool:
        """True when no API key is configured."""
        return not self.api_key

    def live_description(self) -> str:
        """Which live account the resource reaches (without secrets)."""
        raise NotImplementedError

    def mode(self) -> str:
        """One line for run logs and asset metadata: which provider this resource reaches."""
        if self.uses_sandbox:
            return _sandbox_notice(self.label, self.key_env, self.sandbox_state_file)
        return f"{self.label}: live account ({self.live_description()})"

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Say plainly in the run log whether this run reaches the provider or the sandbox."""
        if context.log is not None:
            (context.log.warning if self.uses_sandbox else context.log.info)(self.mode())
        self._run_clients = {}
        for hook in _run_starts:
            try:
                hook(self, context)  # type: ignore[arg-type] (set up: one of the two)
            except Exception as exc:
                if context.log is not None:
                    context.log.warning(f"{self.label}: nothing started early ({exc!r})")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Close the run's clients, then wait for the work started early that no step took
        (closed clients end its calls)."""
        with _run_clients_lock:
            clients, self._run_clients = self._run_clients or {}, None
            thread, self._early_thread, self._early = self._early_thread, None, {}
        for client in clients.values():
            client.close()
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)

    def start_early(self, key: str, work: Callable[[], Any]) -> None:
        """Run `work` on a thread of the run's until a step takes its future (`take_early`):
        with the in-process executor, the run's steps share this resource."""
        with _run_clients_lock:
            if self._run_clients is None:
                raise RuntimeError("start_early outside a run")
            if self._early_thread is None:
                self._early_thread = ThreadPoolExecutor(1, thread_name_prefix="early")
            self._early[key] = self._early_thread.submit(work)

    def take_early(self, key: str) -> Future[Any] | None:
        """The future of the work started early for `key` (once), or None."""
        with _run_clients_lock:
            return self._early.pop(key, None)

    @contextlib.contextmanager
    def _run_client(self, key: tuple[Any, ...], make: Callable[[], C]) -> Iterator[C]:
        """The run's client for `key`: made once per run (Dagster sets a resource up once per
        run process, so with the in-process executor once per run) and closed when the run's
        resources are torn down, so the run's steps share its setup answers (the audience, its
        fields), connections and pacing. Outside a run, a client of its own, closed on exit."""
        with _run_clients_lock:
            shared = self._run_clients
            client = None if shared is None else shared.get(key)
            if shared is not None and client is None:
                client = shared[key] = make()
        if client is not None:
            yield client
            return
        own = make()
        try:
            yield own
        finally:
            own.close()


class MailchimpResource(_ProviderResource):
    """Mailchimp clients, one per audience. Without an API key: the embedded sandbox."""

    label: ClassVar[str] = "Mailchimp"
    key_env: ClassVar[str] = MAILCHIMP_KEY_ENV

    base_url: str | None = Field(default=None, description="Default: from the key's data center.")
    max_connections: int = Field(default=ACCOUNT_CONNECTIONS, ge=1, le=ACCOUNT_CONNECTIONS)
    connection_slots_url: str | None = Field(
        default=None,
        description="The state database's (EnvVar). PostgreSQL: every call holds one of the "
        "account's connection slots there, shared by all processes; else none.",
    )
    salutation_tag: str = "SALUTATION"
    audience_defaults: dict[str, str] = Field(
        default_factory=dict, description="Lets the sync create a missing audience."
    )

    @classmethod
    def from_settings(
        cls, settings: Settings, connection_slots_url: str | EnvVar | None = None
    ) -> MailchimpResource:
        """The resource for these settings; the key is referenced, never copied.
        `connection_slots_url`: the state database's, as its resource has it (on PostgreSQL,
        the account's connection slots)."""
        return cls(
            api_key=None if settings.uses_sandbox("mailchimp") else EnvVar(MAILCHIMP_KEY_ENV),
            base_url=settings.mailchimp_base_url,
            max_connections=settings.mailchimp_max_connections,
            connection_slots_url=connection_slots_url,
            salutation_tag=settings.mailchimp_salutation_tag,
            audience_defaults=settings.mailchimp_audience_defaults,
            sandbox_state_file=_state_file(settings),
        )

    def live_description(self) -> str:
        """The API root (or that it comes from the key's data center)."""
        return self.base_url or "data center from the key"

    def account_slots(self) -> AccountSlots | None:
        """The account's connection slots, shared by every process that calls it (None: the
        state database is not PostgreSQL, each run keeps to a fixed share)."""
        url = self.connection_slots_url
        if isinstance(url, EnvVar):  # the resource used outside a run: its variable unresolved
            url = url.get_value()
        if not url:
            return None
        return account_slots(url, NAME, ACCOUNT_CONNECTIONS)

    def client(self, audience_name: str, max_connections: int | None = None) -> MailchimpClient:
        """A client for one audience (close it when done), opening at most `max_connections`
        (default: the resource's) connections at once."""
        connections = min(max_connections or self.max_connections, self.max_connections)
        slots = self.account_slots()
        account_slot = None if slots is None else slots.slot
        if self.uses_sandbox:
            sandbox = embedded_sandbox(Path(self.sandbox_state_file))
            return MailchimpClient(
                SANDBOX_MAILCHIMP_KEY,
                audience_name,
                base_url=SANDBOX_ORIGIN + MAILCHIMP_PREFIX,
                max_connections=connections,
                account_slot=account_slot,
                salutation_tag=self.salutation_tag,
                audience_defaults=SANDBOX_AUDIENCE,
                poll=SANDBOX_POLL,
                transport=SandboxTransport(sandbox),
            )
        assert self.api_key is not None
        defaults = self.audience_defaults
        return MailchimpClient(
            self.api_key,
            audience_name,
            base_url=self.base_url,
            max_connections=connections,
            salutation_tag=self.salutation_tag,
            audience_defaults=AudienceDefaults.model_validate(defaults) if defaults else None,
            account_slot=account_slot,
        )

    def run_client(
        self, audience_name: str, max_connections: int | None = None
    ) -> contextlib.AbstractContextManager[MailchimpClient]:
        """`client`, shared by the steps of a run (see `_run_client`); do not close it."""
        connections = min(max_connections or self.max_connections, self.max_connections)
        return self._run_client(
            (audience_name, connections), lambda: self.client(audience_name, connections)
        )


class BrevoResource(_ProviderResource):
    """Brevo clients, one per list. Without an API key: the embedded sandbox."""

    label: ClassVar[str] = "Brevo"
    key_env: ClassVar[str] = BREVO_KEY_ENV

    base_url: str = "https://api.brevo.com/v3"
    requests_per_second: float = Field(default=REQUESTS_PER_SECOND, gt=0, le=10)
    folder_name: str = "newsletter_pipelines"
    first_name_attribute: str = "FIRSTNAME"
    last_name_attribute: str = "LASTNAME"
    salutation_attribute: str = "SALUTATION"
    tags_attribute: str | None = "NEWSLETTER_TAGS"

    @classmethod
    def from_settings(cls, settings: Settings) -> BrevoResource:
        """The resource for these settings; the key is referenced, never copied."""
        return cls(
            api_key=None if settings.uses_sandbox("brevo") else EnvVar(BREVO_KEY_ENV),
            base_url=settings.brevo_base_url,
            requests_per_second=settings.brevo_requests_per_second,
            folder_name=settings.brevo_folder_name,
            first_name_attribute=settings.brevo_attributes.first_name,
            last_name_attribute=settings.brevo_attributes.last_name,
            salutation_attribute=settings.brevo_attributes.salutation,
            tags_attribute=settings.brevo_tags_attribute or None,
            sandbox_state_file=_state_file(settings),
        )

    def live_description(self) -> str:
        """The API root."""
        return self.base_url

    def run_client(self, list_name: str) -> contextlib.AbstractContextManager[BrevoClient]:
        """`client`, shared by the steps of a run (see `_run_client`); do not close it."""
        return self._run_client((list_name,), lambda: self.client(list_name))

    def client(self, list_name: str) -> BrevoClient:
        """A client for one list (close it when done)."""
        mapping = AttributeMap(
            first_name=self.first_name_attribute,
            last_name=self.last_name_attribute,
            salutation=self.salutation_attribute,
            tags=self.tags_attribute or None,
        )
        if self.uses_sandbox:
            sandbox = embedded_sandbox(Path(self.sandbox_state_file))
            return BrevoClient(
                SANDBOX_BREVO_KEY,
                list_name,
                base_url=SANDBOX_ORIGIN + BREVO_PREFIX,
                folder_name=self.folder_name,
                attributes=mapping,
                requests_per_second=self.requests_per_second,
                poll=SANDBOX_POLL,
                transport=SandboxTransport(sandbox),
            )
        assert self.api_key is not None
        return BrevoClient(
            self.api_key,
            list_name,
            base_url=self.base_url,
            folder_name=self.folder_name,
            attributes=mapping,
            requests_per_second=self.requests_per_second,
        )
