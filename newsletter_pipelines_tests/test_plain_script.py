"""The pipelines run from a plain script: no `if __name__ == "__main__"` guard, as in a
notebook or a user's own script. Nothing may start processes that re-import the caller's main
module (the spawn method does), whatever the input's size."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from itertools import islice
from pathlib import Path

import sqlalchemy as sa

from newsletter_pipelines.crm.loader import insert_rows
from newsletter_pipelines.crm.schema import create_schema
from newsletter_pipelines.crm.synthetic import iter_crm
from newsletter_pipelines.settings import CrmSchema

CONTACTS = 120_000  # above any size at which the address checks went parallel

SCRIPT = """
import dagster as dg
from newsletter_pipelines.defs.crm.assets import crm_contacts, eligible_subscribers
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.settings import Settings

result = dg.materialize(
    [crm_contacts, eligible_subscribers],
    resources=build_resources(Settings()),
    instance=dg.DagsterInstance.ephemeral(),
)
events = result.asset_materializations_for_node("eligible_subscribers")
event = [e for e in events if e.asset_key == dg.AssetKey("eligible_subscribers")][-1]
print("eligible", event.metadata["eligible_count"].value)
"""


def build_crm(path: Path, rows: int) -> None:
    schema = CrmSchema()
    engine = sa.create_engine(f"sqlite:///{path}")
    create_schema(engine, schema)
    stream = iter_crm(rows, 7)
    while chunk := list(islice(stream, 20_000)):
        insert_rows(engine, schema, [c for c, _ in chunk], [t for _, ts in chunk for t in ts])
    engine.dispose()


def test_eligibility_of_a_large_crm_runs_from_a_script_without_a_main_guard(
    tmp_path: Path, isolated_home: Path
) -> None:
    crm = tmp_path / "crm.sqlite3"
    build_crm(crm, CONTACTS)
    script = tmp_path / "sync.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(isolated_home),
        "DAGSTER_HOME": str(isolated_home / "dagster_home"),
        "NEWSLETTER_DEPLOYMENT": "embedded",
        "NEWSLETTER_HOME": str(isolated_home),
        "NEWSLETTER_CRM_DATABASE_URL": f"sqlite:///{crm}",
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    assert "bootstrapping phase" not in done.stderr
    eligible = int(done.stdout.split("eligible")[-1])
    assert 0.5 * CONTACTS < eligible < CONTACTS
