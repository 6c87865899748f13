"""The definitions load, and the graph has the expected shape (snapshot, update deliberately)."""

from __future__ import annotations

import dagster as dg
import pytest
from syrupy.assertion import SnapshotAssertion

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.settings import Settings


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)


def test_graph_shape(snapshot: SnapshotAssertion) -> None:
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    shape = {
        "assets": sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
        "groups": {
            key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()
        },
        "upstream": {
            key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
            for key in graph.get_all_asset_keys()
        },
        "checks": sorted(
            f"{key.asset_key.to_user_string()}:{key.name}"
            f"{' (blocking)' if graph.get_check_spec(key).blocking else ''}"
            for key in graph.asset_check_keys
        ),
        "resources": sorted(repo.get_top_level_resources()),
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "schedules": sorted(s.name for s in repo.schedule_defs),
        "sensors": sorted(s.name for s in repo.sensor_defs),
    }
    assert shape == snapshot


def test_urls_from_env_vars_stay_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_CRM_DATABASE_URL", "postgresql://crm:s3cret@db.internal/crm")
    crm = build_resources(Settings())["crm"]
    assert isinstance(crm.database_url, dg.EnvVar)  # the UI shows the variable, not the value
    assert crm.database_url.env_var_name == "NEWSLETTER_CRM_DATABASE_URL"
    assert crm.embedded_demo_dir is None


def test_embedded_defaults_say_so(settings: Settings) -> None:
    resources = build_resources(settings)
    assert resources["crm"].describe().startswith("embedded demo CRM")
    assert "state.sqlite3" in resources["state_db"].describe()
