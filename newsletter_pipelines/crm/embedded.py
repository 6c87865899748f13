"""The embedded demo CRM: a SQLite file in NEWSLETTER_HOME built from the CSVs in data/."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import sqlalchemy as sa

from newsletter_pipelines.crm.loader import load_demo

log = logging.getLogger(__name__)


def sqlite_path(url: str) -> Path:
    """The file behind a SQLite URL."""
    database = sa.engine.make_url(url).database
    if not database:
        raise ValueError(f"not a SQLite file URL: {url}")
    return Path(database)


def ensure_demo_crm(url: str, data_dir: Path, rebuild: bool = False) -> bool:
    """Build the demo SQLite CRM at `url` unless it exists; True when it was (re)built.

    The file is written beside its final name and renamed, so a reader never sees half a CRM.
    """
    path = sqlite_path(url)
    if path.exists() and not rebuild:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    contacts, tags = load_demo(f"sqlite:///{partial}", data_dir)
    partial.replace(path)
    log.info("built the demo CRM at %s: %d contacts, %d tags", path, contacts, tags)
    return True
