"""Shared fixtures: isolated settings, the demo CRM on SQLite, throwaway PostgreSQL databases."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter_pipelines.crm.loader import load_demo
from newsletter_pipelines.providers.resources import embedded_sandbox
from newsletter_pipelines.sandbox import Sandbox
from newsletter_pipelines.settings import PROJECT_ROOT, Settings
from newsletter_pipelines_tests.world import World, open_world

DEFAULT_TEST_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATA_DIR = PROJECT_ROOT / "data"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own NEWSLETTER_HOME and no inherited NEWSLETTER_* database URLs."""
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_") and name != "NEWSLETTER_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("NEWSLETTER_HOME", str(home))
    return home


@pytest.fixture
def settings(isolated_home: Path) -> Settings:
    """Settings of the isolated home (embedded demo CRM, SQLite state database)."""
    return Settings()


@pytest.fixture
def sandbox(settings: Settings) -> Sandbox:
    """The embedded sandbox (both providers) the resources use in this test's NEWSLETTER_HOME."""
    return embedded_sandbox(settings.home / "sandbox.json")


@pytest.fixture(scope="session")
def demo_crm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo CRM loaded once into a SQLite file; copy it before writing to it."""
    path = tmp_path_factory.mktemp("crm") / "demo.sqlite3"
    load_demo(f"sqlite:///{path}", DATA_DIR)
    return path


def _server_url() -> str:
    return os.environ.get("NEWSLETTER_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL)


@pytest.fixture(scope="session")
def postgres_server() -> sa.Engine:
    """An AUTOCOMMIT engine on the test server; skips without one, fails under CI=true."""
    url = _server_url()
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = f"no PostgreSQL reachable at NEWSLETTER_TEST_POSTGRES_URL: {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return engine


@pytest.fixture
def new_postgres_database(postgres_server: sa.Engine) -> Iterator[Callable[[], sa.URL]]:
    """Makes fresh databases on the test server (each call one, its URL returned), all dropped
    after the test."""
    names: list[str] = []

    def create() -> sa.URL:
        name = f"nlp_test_{uuid.uuid4().hex[:12]}"
        with postgres_server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        names.append(name)
        return sa.engine.make_url(_server_url()).set(database=name)

    yield create
    with postgres_server.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(new_postgres_database: Callable[[], sa.URL]) -> str:
    """URL of a fresh database, dropped after the test."""
    return new_postgres_database().render_as_string(hide_password=False)


@pytest.fixture(params=["mailchimp", "brevo"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """Fifty CRM contacts and an empty audience of each provider (see `world.World`)."""
    with open_world(request.param, tmp_path) as opened:
        yield opened


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How much the model-based test exercised, when it ran."""
    model = sys.modules.get("newsletter_pipelines_tests.test_model")
    if model is not None and model.STATS:
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(model.STATS.items()))
        terminalreporter.write_line(f"model-based test: {counts}")
