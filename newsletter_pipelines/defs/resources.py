"""Resources shared by the Dagster definitions: the CRM, the state database, the providers and
where values go between steps."""

import os
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
from newsletter_pipelines.state.schema import ensure_schema


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

    def engine(self) -> sa.Engine:
        """A shared engine for the state database, its schema at head (`state.schema`: checked
        once per process)."""
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        ensure_schema(self._engine, upgrade=self.upgrade_schema)
        return self._engine

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
    state = StateDatabaseResource(
        database_url=_url_source(
            "NEWSLETTER_STATE_DATABASE_URL", settings.resolved_state_database_url()
        ),
        upgrade_schema=settings.upgrades_state_database(),
    )
    return {
        "crm": crm,
        "state_db": state,
        "mailchimp": MailchimpResource.from_settings(settings),
        "brevo": BrevoResource.from_settings(settings),
        "io_manager": ParquetIOManagerResource(
            base_uri=_url_source("NEWSLETTER_IO_BASE_URI", settings.resolved_io_base_uri())
        ),
    }
