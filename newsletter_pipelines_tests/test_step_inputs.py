"""What the full sync's steps read of their stored inputs (`defs/io_manager.py`): the push reads
the CRM frames and the snapshot only when it needs them, the import-back only the columns and
rows it uses."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from upath import UPath

from newsletter_pipelines.bulk import collect_garbage, thaw
from newsletter_pipelines.defs import io_manager
from newsletter_pipelines.defs.crm.assets import crm_contacts, eligible_subscribers
from newsletter_pipelines.defs.import_back.assets import crm_import_back
from newsletter_pipelines.defs.providers.accounts import account_tags
from newsletter_pipelines.defs.providers.assets import (
    audience_sync,
    provider_audience_snapshot,
    reconciliation_diff,
)
from newsletter_pipelines.defs.providers.partitions import audience_partitions
from newsletter_pipelines.defs.providers.pushing import stored_push_input
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.storage import frames
from newsletter_pipelines.sync.eligibility import ELIGIBLE_COLUMNS, EXCLUDED_COLUMNS
from newsletter_pipelines.sync.inputs import ELIGIBLE_READ, EXCLUDED_READ, SNAPSHOT_COLUMNS
from newsletter_pipelines.sync.push import COUNTED
from newsletter_pipelines.sync.rules import DIFF_COLUMNS
from newsletter_pipelines_tests.test_import_back_assets import (
    act,
    an_eligible_address,
    crm,
    run_import_back,
)
from newsletter_pipelines_tests.test_sync_assets import QUIET, metadata, run_sync

UPSTREAM = (
    crm_contacts,
    eligible_subscribers,
    provider_audience_snapshot,
    reconciliation_diff,
    crm_import_back,
)
PARTITIONS = set(audience_partitions.get_partition_keys())


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, pd.DataFrame]]]:
    """Every stored frame the IO manager reads: (asset, frame read)."""
    found: list[tuple[str, pd.DataFrame]] = []
    read = io_manager.read_frame

    def spy(file: Any, *args: Any, **kwargs: Any) -> pd.DataFrame:
        frame = read(file, *args, **kwargs)
        path = Path(getattr(file, "name", None) or file.path)  # <asset>[/<partition>].parquet
        found.append((path.parent.name if path.stem in PARTITIONS else path.stem, frame))
        return frame

    monkeypatch.setattr(io_manager, "read_frame", spy)
    yield found


def push_alone(instance: dg.DagsterInstance, audience: str) -> dg.ExecuteInProcessResult:
    """`audience_sync` alone, on the values the last full sync stored."""
    result = dg.materialize(
        [*UPSTREAM, audience_sync],
        selection=[audience_sync],
        instance=instance,
        partition_key=audience,
        run_config=QUIET,
        resources=build_resources(Settings()),
        tags=account_tags(audience),
    )
    assert result.success
    return result


def crm_update(settings: Settings, sql: str, **values: Any) -> None:
    engine = sa.create_engine(settings.resolved_crm_database_url())
    with engine.begin() as conn:
        conn.execute(sa.text(sql), values)
    engine.dispose()


def crm_value(settings: Settings, contact_id: int) -> str:
    ((newsletter,),) = crm(settings, f"SELECT newsletter FROM contacts WHERE id = {contact_id}")
    return str(newsletter)


def test_the_push_reads_the_snapshot_for_updates_and_the_crm_frames_never(
    settings: Settings, reads: list[tuple[str, pd.DataFrame]]
) -> None:
    """The CRM frames and the snapshot are the push's inputs only to decide again contacts whose
    address change the provider refuses: a push without one does not read the CRM frames, and
    reads the snapshot only for the members it updates."""
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success  # creates only
        reads.clear()
        first = metadata(push_alone(instance, "mailchimp"), "audience_sync")  # the creates again
        assert first["created"] + first["updated"] + first["unchanged"] > 0
        assert {asset for asset, _ in reads} == {"reconciliation_diff", "crm_import_back"}

        contact_id, _ = an_eligible_address(settings)
        crm_update(
            settings, "UPDATE contacts SET last_name = 'Neumann' WHERE id = :id", id=contact_id
        )
        assert run_sync(instance, "mailchimp").success  # one update
        reads.clear()
        again = push_alone(instance, "mailchimp")
        assert metadata(again, "audience_sync")["updated"] == 1
        assert metadata(again, "audience_sync")["decided_again"] == 0
        read = {asset for asset, _ in reads}
        assert read == {"reconciliation_diff", "crm_import_back", "provider_audience_snapshot"}


def test_a_refused_address_change_reads_the_crm_frames_and_is_decided_again(
    settings: Settings, reads: list[tuple[str, pd.DataFrame]]
) -> None:
    """Mailchimp refuses to give a member a permanently deleted address: the push reads the CRM
    frames and the snapshot then, and decides the contact again in the same run."""
    taken = "taken.fullsync@example.org"
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        act(settings, "mailchimp", taken, "signup")
        act(settings, "mailchimp", taken, "delete")
        contact_id, _ = an_eligible_address(settings)
        crm_update(
            settings, "UPDATE contacts SET email = :e WHERE id = :id", e=taken, id=contact_id
        )
        result = run_sync(instance, "mailchimp")
        assert result.success
        pushed = metadata(result, "audience_sync")
        assert pushed["refused"] >= 1 and pushed["decided_again"] == 1
        reads.clear()
        again = metadata(push_alone(instance, "mailchimp"), "audience_sync")  # refused again
        assert again["refused"] >= 1 and again["decided_again"] == 1
        read = {asset for asset, _ in reads}
        assert read == {
            "reconciliation_diff",
            "crm_import_back",
            "provider_audience_snapshot",
            "eligible_subscribers",
            "excluded_contacts",
        }


def test_the_import_back_reads_only_the_rows_and_columns_it_uses(
    settings: Settings, reads: list[tuple[str, pd.DataFrame]]
) -> None:
    """Of a full sync's diff, the import-back reads the rows with a provider-side change, and of
    each input only the columns it uses; it still takes the change in."""
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        contact_id, email = an_eligible_address(settings)
        act(settings, "mailchimp", email, "unsubscribe")
        reads.clear()
        result = run_import_back(instance, "mailchimp")
        assert result.success
        assert metadata(result, "crm_import_back")["planned_newsletter_unsubscribed"] >= 1
        assert crm_value(settings, contact_id) == "no"
    frames = {asset: frame for asset, frame in reads}  # the last read of each: the import-back's
    statuses, members = [f for asset, f in reads if asset == "provider_audience_snapshot"][-2:]
    assert list(statuses.columns) == ["status"] and len(statuses) > 1  # every member's
    assert list(members["match_key"]) == [email]  # the member it acts on, whole
    diff = frames["reconciliation_diff"]
    assert email in set(diff["match_key"])
    assert diff["provider_change"].notna().all()  # no unsubscribe: only the changes
    assert "settled_intent" not in diff.columns and "write_key" not in diff.columns
    assert list(frames["eligible_subscribers"].columns) == ["contact_id", "email_key", "updated_at"]
    assert set(frames["excluded_contacts"].columns) == {
        "contact_id",
        "email_key",
        "updated_at",
        "newsletter",
    }


def test_an_import_back_with_nothing_to_take_in_reads_no_crm_frame(
    reads: list[tuple[str, pd.DataFrame]],
) -> None:
    """When the provider changed nothing, the import-back reads neither eligibility frame (the
    diff, in the same run, reads its columns of them), and of the snapshot its statuses only
    (the vanish guard's base), no member."""
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        reads.clear()
        result = run_import_back(instance, "mailchimp")
        assert result.success
        planned = metadata(result, "crm_import_back")
        assert not [k for k, v in planned.items() if k.startswith("planned_") and v], planned
    crm_reads = [(asset, list(f.columns)) for asset, f in reads if asset == "eligible_subscribers"]
    assert crm_reads == [("eligible_subscribers", list(ELIGIBLE_READ))]  # the diff's only
    assert [asset for asset, _ in reads].count("excluded_contacts") == 1
    snapshot = [list(f.columns) for asset, f in reads if asset == "provider_audience_snapshot"]
    assert snapshot[-1] == ["status"], snapshot  # the diff's read, then the statuses


def test_before_a_step_reads_its_inputs_the_memory_earlier_steps_freed_is_handed_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The steps of a run share its process: once per step, before its first input, the frames
    earlier steps let go are collected and the freed memory handed back to the system."""
    released: list[int] = []
    monkeypatch.setattr(io_manager, "release_freed_memory", lambda: released.append(1))
    with dg.instance_for_test() as instance:
        result = run_sync(instance, "mailchimp")
        assert result.success
    reading = {e.step_key for e in result.all_events if e.event_type_value == "LOADED_INPUT"}
    assert len(reading) >= 4 and len(released) == len(reading)


class _Node:
    itself: object = None


def _cycle() -> weakref.ref[_Node]:
    """A reference cycle no one holds (only the cyclic collector frees it)."""
    node = _Node()
    node.itself = node
    return weakref.ref(node)


def _frozen(obj: object) -> bool:
    """Whether the collector skips `obj` (`gc.get_objects` leaves out what is frozen)."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def test_each_collection_before_a_step_frees_cycles_and_freezes_what_survived_it() -> None:
    """A step's collection frees the cycles made since the one before and freezes what
    survived, so the next step's collection does not go over it again; `thaw` (as a run
    ends) hands it back to the collector."""
    collect_garbage()
    try:
        kept = _Node()
        kept.itself = kept
        dead = _cycle()
        collect_garbage()
        assert dead() is None and _frozen(kept)
        dead = _cycle()
        collect_garbage()
        assert dead() is None
    finally:
        thaw()
    assert gc.get_freeze_count() == 0 and not _frozen(kept)


def test_the_diff_step_reads_the_columns_it_uses_and_the_push_the_rows_it_acts_on(
    settings: Settings, reads: list[tuple[str, pd.DataFrame]]
) -> None:
    """The diff reads of the CRM frames and the snapshot only the columns it uses. Of a re-run's
    diff, the push reads every row's action, provider status and old address (what it plans and
    guards), and whole only the rows it acts on; of the snapshot, the members it updates."""
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        contact_id, email = an_eligible_address(settings)
        crm_update(
            settings, "UPDATE contacts SET last_name = 'Neumann' WHERE id = :id", id=contact_id
        )
        reads.clear()
        result = run_sync(instance, "mailchimp")
        assert result.success
        assert metadata(result, "audience_sync")["updated"] == 1
    read: dict[str, list[pd.DataFrame]] = {}
    for asset, frame in reads:
        read.setdefault(asset, []).append(frame)
    eligible, *_ = read["eligible_subscribers"]  # the diff's, the import-back's
    assert list(eligible.columns) == [c for c in ELIGIBLE_COLUMNS if c in ELIGIBLE_READ]
    excluded, *_ = read["excluded_contacts"]  # the diff's, the import-back's
    assert list(excluded.columns) == [c for c in EXCLUDED_COLUMNS if c in EXCLUDED_READ]
    snapshot, *_, updated = read["provider_audience_snapshot"]  # the diff's, …, the push's
    assert list(snapshot.columns) == list(SNAPSHOT_COLUMNS)
    assert list(updated["match_key"]) == [email]
    *_, counted, acting = read["reconciliation_diff"]  # the import-back's first
    assert set(counted.columns) == set(COUNTED) and len(counted) == len(snapshot)
    assert list(acting.columns) == list(DIFF_COLUMNS)
    assert list(acting["action"]) == ["update"] and list(acting["match_key"]) == [email]


def diff_row(action: str, key: str, **values: object) -> dict[str, object]:
    return {**dict.fromkeys(DIFF_COLUMNS), "action": action, "match_key": key, **values}


def test_the_push_input_is_the_rows_it_acts_on_and_the_counted_columns(tmp_path: Path) -> None:
    """`stored_push_input`: the rows with a write or a value the push acts on; were a write
    stored without one, the whole diff."""
    rows = [
        diff_row("unchanged", "a@x.de", detail="in sync", provider_status="subscribed"),
        diff_row("update", "b@x.de", provider_status="subscribed", ledger_after="row"),
        diff_row("unchanged", "c@x.de", settled_intent="create"),
        diff_row("import_back", "d@x.de", provider_change="opted_out"),
        diff_row("blocked_by_provider", "e@x.de", provider_status="unsubscribed"),
        diff_row("unchanged", "f@x.de", old_email="alt@x.de"),
    ]
    path = tmp_path / "diff.parquet"
    with path.open("wb") as file:
        frames.write_frame(pd.DataFrame(rows).astype({"eligible": bool}), file)
    stored = io_manager.StoredFrame(UPath(path))
    counted, acting = stored_push_input(stored)
    assert set(counted.columns) == set(COUNTED) and len(counted) == len(rows)
    assert list(acting.index) == [1, 2, 3, 5]
    rows[1]["ledger_after"] = None  # a write the columns would miss
    with path.open("wb") as file:
        frames.write_frame(pd.DataFrame(rows).astype({"eligible": bool}), file)
    _, acting = stored_push_input(stored)
    assert len(acting) == len(rows)


def test_a_run_freezes_what_exists_as_it_starts_and_thaws_all_it_froze_as_it_ends(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The definitions and modules, alive as a run starts, are frozen before its first step's
    collection; as the run ends nothing stays frozen, so a process running many runs (a test
    session, a notebook) keeps none of their garbage."""
    frozen_at_first_collection: list[int] = []
    collect = io_manager.collect_garbage

    def noting() -> None:
        if not frozen_at_first_collection:
            frozen_at_first_collection.append(gc.get_freeze_count())
        collect()

    monkeypatch.setattr(io_manager, "collect_garbage", noting)
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
    assert frozen_at_first_collection[0] > 0
    assert gc.get_freeze_count() == 0
