"""`python -m newsletter_pipelines.webhooks serve --host 127.0.0.1 --port 8780`."""

from __future__ import annotations

import logging

import click
import uvicorn

from newsletter_pipelines.settings import Settings
from newsletter_pipelines.webhooks.app import create_app


@click.group()
def cli() -> None:
    """The webhook receiver of newsletter_pipelines."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8780, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(host: str, port: int, log_level: str) -> None:
    """Serve the webhook endpoints until interrupted."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        app = create_app(Settings())
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"webhook receiver on http://{host}:{port}/webhooks/{{mailchimp,brevo}}/<audience>")
    # No access log: Mailchimp's secret travels in the query string.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


if __name__ == "__main__":
    cli()
