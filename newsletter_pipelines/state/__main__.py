"""`python -m newsletter_pipelines.state upgrade|current|heads`: the state database's schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import sqlalchemy as sa

from newsletter_pipelines.db import create_engine, safe_url
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.schema import current_revision, head_revision, upgrade


@click.group()
def cli() -> None:
    """Schema migrations of the state database (NEWSLETTER_STATE_DATABASE_URL)."""


@contextmanager
def _state_database() -> Iterator[tuple[str, sa.Engine]]:
    """The state database of the settings: its URL and an engine, disposed afterwards."""
    try:
        url = Settings().resolved_state_database_url()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    engine = create_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()


@cli.command("upgrade")
def upgrade_command() -> None:
    """Upgrade the state database to the newest revision (a database created before the
    migrations is stamped with the revision its tables show first)."""
    with _state_database() as (url, engine):
        try:
            before = upgrade(engine)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    head = head_revision()
    done = "nothing to upgrade" if before == head else f"upgraded from {before or 'none'}"
    click.echo(f"{safe_url(url)}: {head} (head), {done}")


@cli.command("current")
def current_command() -> None:
    """Print the revision the state database is at."""
    with _state_database() as (url, engine):
        revision = current_revision(engine)
    head = head_revision()
    state = "(head)" if revision == head else f"(behind head {head}: run `upgrade`)"
    click.echo(f"{safe_url(url)}: {revision or 'none'} {state}")


@cli.command("heads")
def heads_command() -> None:
    """Print the revision the migrations end at."""
    click.echo(f"{head_revision()} (head)")


if __name__ == "__main__":
    cli()
