"""Engine creation for the CRM and state databases, with SQLite folders created on demand."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa


def create_engine(url: str) -> sa.Engine:
    """An engine for `url`; for a SQLite file its folder is created first."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def safe_url(url: str) -> str:
    """The URL with its password hidden, fit for logs and metadata."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)
