"""Resources shared by the Dagster definitions: the CRM, the state database, the providers and
where values go between steps."""

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import PrivateAttr

from newsletter_pipelines.crm.embedded import ensure_demo_crm
from newsletter_pipelines.crm.reader import read_contacts
from newsletter_pipelines.db import create_engine, safe_url
from newsletter_pipelines.defs.io_manager import ParquetIOManagerResource
from newsletter_pipelines.providers.resources import BrevoResource, MailchimpResource
from newsletter_pipelines.settings import CrmSchema, Settings
from newsletter_pipelines.state.ledger import load_ledger_frame, load_small_ledger_frame
from newsletter_pipelines.state.schema import ensure_schema

_early_lock = threading.Lock()


def _url_source(env_var: str, default: str) -> str | dg.EnvVar:
    """The env var by reference when it is set (its value stays out of the UI), else the default."""
    return dg.EnvVar(env_var) if os.environ.get(env_var) else default


class CrmResource(dg.ConfigurableResource):
    """The CRM database (SQLAlchemy URL) and the names of its tables and columns."""

    database_url: str
    schema_mapping: dict[str, str] = {}  # noqa: RUF012 (Dagster config field)
    embedded_demo_dir: str | None = None  # set for the embedded demo CRM: built on first use
    _engine: sa.Engine | None = PrivateAttr(default=None)

    @property
    def crm_schema(self) -> CrmSchema:
        """The table and column mapping."""
        return CrmSchema(**self.schema_mapping)

    def describe(self) -> str:
        """Where the CRM is, without secrets."""
        if self.embedded_demo_dir:
            return f"embedded demo CRM (SQLite built from {self.embedded_demo_dir})"
        return f"CRM at {safe_url(self.database_url)}"

    def engine(self) -> sa.Engine:
        """A shared engine; the embedded demo CRM is built first if it does not exist."""
        if self._engine is None:
            if self.embedded_demo_dir:
                ensure_demo_crm(self.database_url, Path(self.embedded_demo_dir))
            self._engine = create_engine(self.database_url)
        return self._engine

    def read_contacts(self) -> pd.DataFrame:
        """All contacts with their tags (see `crm.reader.read_contacts`)."""
        return read_contacts(self.engine(), self.crm_schema)


class StateDatabaseResource(dg.ConfigurableResource):
    """The state database: eligibility exclusions, sync ledger, outcome log, webhook inbox."""

    database_url: str
    upgrade_schema: bool = False  # True (embedded): upgraded on first use; else at head or error
    _engine: sa.Engine | None = PrivateAttr(default=None)
    # ledgers read ahead for a later step of the run (`read_ledger_early`), and their thread
    _early: dict[str, Future[pd.DataFrame | None]] = PrivateAttr(default_factory=dict)
    _early_thread: ThreadPoolExecutor | None = PrivateAttr(default=None)

    def engine(self) -> sa.Engine:
        """A shared engine for the state database, its schema at head (`state.schema`: checked
        once per process)."""
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        ensure_schema(self._engine, upgrade=self.upgrade_schema)
        return self._engine

    def read_ledger_early(self, audience: str, most: int) -> bool:
        """Start reading the audience's ledger on a thread of the run's, for `ledger_frame` in
        a later step of the same run (with the in-process executor the run's steps share this
        resource); True if started. Only on PostgreSQL, and only a ledger of at most `most`
        rows is kept. SQLite is left to the step: a file's ledger is read through a SQLite
        library of its own, whose closing drops the locks the process holds on the file, so
        it is read only while no other connection of the process is at work; an in-memory
        database would be another, empty one on the thread's connection.

        One run at a time per audience (the run queue's limit) is what makes a ledger read
        ahead the ledger the step would read: no one else writes it meanwhile."""
        engine = self.engine()
        if engine.dialect.name != "postgresql":
            return False
        with _early_lock:
            if self._early_thread is None:
                self._early_thread = ThreadPoolExecutor(1, thread_name_prefix="early-ledger")
            self._early[audience] = self._early_thread.submit(
                load_small_ledger_frame, engine, audience, most
            )
        return True

    def ledger_frame(self, audience: str) -> tuple[pd.DataFrame, str]:
        """The audience's ledger (`state.ledger.load_ledger_frame`) and how it was read: read
        ahead in this run (`read_ledger_early`, waited for), or now when none was, it was too
        large or its read failed (the failure is said)."""
        with _early_lock:
            early = self._early.pop(audience, None)
        if early is not None:
            try:
                frame = early.result()
            except Exception as exc:  # read again below; a lasting fault fails there
                how = f"read in the step: its read ahead failed ({type(exc).__name__})"
            else:
                if frame is not None:
                    return frame, "read ahead while the snapshot was read"
                how = "read in the step: too many rows to read ahead"
        else:
            how = "read in the step"
        return load_ledger_frame(self.engine(), audience), how

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Wait for a ledger read ahead that no step took (a run ended early) and let it go."""
        with _early_lock:
            thread, self._early_thread, self._early = self._early_thread, None, {}
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        """Where the state database is, without secrets."""
        return f"state database at {safe_url(self.database_url)}"


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """Resources from the settings; URLs given by env var are passed by reference."""
    settings = settings or Settings()
    crm = CrmResource(
        database_url=_url_source(
            "NEWSLETTER_CRM_DATABASE_URL", settings.resolved_crm_database_url()
        ),
        schema_mapping=settings.crm_schema.model_dump(exclude_none=True),
        embedded_demo_dir=str(settings.demo_data_dir) if settings.uses_embedded_crm() else None,
    )
    state_url = _url_source("NEWSLETTER_STATE_DATABASE_URL", settings.resolved_state_database_url())
    state = StateDatabaseResource(
        database_url=state_url, upgrade_schema=settings.upgrades_state_database()
    )
    return {
        "crm": crm,
        "state_db": state,
        "mailchimp": MailchimpResource.from_settings(settings, connection_slots_url=state_url),
        "brevo": BrevoResource.from_settings(settings),
        "io_manager": ParquetIOManagerResource(
            base_uri=_url_source("NEWSLETTER_IO_BASE_URI", settings.resolved_io_base_uri())
        ),
    }
