"""Command line: `python -m newsletter_pipelines.crm load-demo|create-schema|edit …`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from newsletter_pipelines.crm.editor import edit_contact
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.loader import load_demo
from newsletter_pipelines.crm.schema import create_schema
from newsletter_pipelines.db import create_engine, safe_url
from newsletter_pipelines.settings import Settings


@click.group()
def cli() -> None:
    """CRM database tools."""


@cli.command("load-demo")
@click.option(
    "--url",
    help="SQLAlchemy URL of the target CRM (default: NEWSLETTER_CRM_DATABASE_URL"
    " or the embedded demo SQLite file).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Folder with contacts.csv and contact_tags.csv (default: data/).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Delete the contacts, tags and activities already in the tables first.",
)
def load_demo_command(url: str | None, data_dir: Path | None, replace: bool) -> None:
    """Create the default CRM schema at URL and load the demo contacts into it."""
    settings = Settings()
    target = url or settings.resolved_crm_database_url()
    try:
        contacts, tags = load_demo(
            target, data_dir or settings.demo_data_dir, settings.crm_schema, replace
        )
    except CrmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"loaded {contacts} contacts and {tags} tags into {safe_url(target)}")


@cli.command("create-schema")
@click.option("--url", required=True, help="SQLAlchemy URL of the target CRM.")
def create_schema_command(url: str) -> None:
    """Create the (mapped) CRM tables at URL if missing."""
    engine = create_engine(url)
    create_schema(engine, Settings().crm_schema)
    engine.dispose()
    click.echo(f"schema ready at {safe_url(url)}")


@cli.command("edit")
@click.argument("contact_id")
@click.option("--salutation")
@click.option("--first-name")
@click.option("--last-name")
@click.option("--email")
@click.option("--newsletter", help="The CRM's value, e.g. yes or no.")
@click.option("--private/--not-private", default=None, help="is_private.")
@click.option("--tags", help='Exactly these tags, comma-separated ("" for none).')
@click.option("--url", help="SQLAlchemy URL of the CRM (default: as the sync reads it).")
def edit_command(
    *,
    contact_id: str,
    salutation: str | None,
    first_name: str | None,
    last_name: str | None,
    email: str | None,
    newsletter: str | None,
    private: bool | None,
    tags: str | None,
    url: str | None,
) -> None:
    """Edit contact CONTACT_ID as a CRM user would; its updated_at is bumped, so the change
    sensor pushes the change within a minute."""
    settings = Settings()
    given = {
        "salutation": salutation,
        "first_name": first_name,
        "last_name": last_name,
        "email": email,
        "newsletter": newsletter,
        "is_private": private,
    }
    fields = {k: v for k, v in given.items() if v is not None}
    tag_set = None if tags is None else frozenset(t.strip() for t in tags.split(",") if t.strip())
    if not fields and tag_set is None:
        raise click.UsageError("nothing to change: give at least one option")
    target = url or settings.resolved_crm_database_url()
    engine = create_engine(target)
    try:
        edit_contact(engine, settings.crm_schema, contact_id, fields, tags=tag_set)
    except CrmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        engine.dispose()
    changed = ", ".join([*fields, *(["tags"] if tag_set is not None else [])])
    click.echo(f"contact {contact_id}: {changed} changed in {safe_url(target)}")


if __name__ == "__main__":
    cli()
