"""The README documents every env var, asset, check, job and resource (kept true by this test)."""

from __future__ import annotations

from pydantic import BaseModel

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.settings import PROJECT_ROOT, Settings

README = (PROJECT_ROOT / "README.md").read_text()


def env_vars() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        nested = field.annotation if isinstance(field.annotation, type) else None
        if nested is not None and issubclass(nested, BaseModel):
            names += [f"NEWSLETTER_{name}__{sub}".upper() for sub in nested.model_fields]
        else:
            names.append(f"NEWSLETTER_{name}".upper())
    return names


def test_every_setting_is_documented() -> None:
    missing = [name for name in env_vars() if f"`{name}`" not in README]
    assert not missing


def test_every_dagster_object_is_documented() -> None:
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    names = [key.to_user_string() for key in graph.get_all_asset_keys()]
    names += [key.name for key in graph.asset_check_keys]
    names += [job.name for job in repo.get_all_jobs() if not job.name.startswith("__")]
    names += [s.name for s in repo.schedule_defs] + [s.name for s in repo.sensor_defs]
    names += list(repo.get_top_level_resources())
    missing = [name for name in names if f"`{name}`" not in README]
    assert not missing
