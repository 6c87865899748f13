"""The `io_manager` resource (`defs/io_manager.py`, `storage/`): every asset value is stored as
Parquet and read back equal (dtypes, index, attrs, the Python objects of object columns), on a
local folder and on a local S3 server (moto, through s3fs and the standard AWS variables); any
other value is refused with the asset and its type named."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import s3fs
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer
from pydantic_core import TzInfo

from newsletter_pipelines.crm.reader import read_contacts
from newsletter_pipelines.defs.io_manager import (
    ParquetIOManager,
    ParquetIOManagerResource,
    StoredFrame,
)
from newsletter_pipelines.defs.providers.partitions import audience_partitions
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.providers.base import MemberStatus
from newsletter_pipelines.settings import CrmSchema, Settings
from newsletter_pipelines.state.columns import TEXT, python_values
from newsletter_pipelines.storage import frames
from newsletter_pipelines.sync.changes import READ_UPTO
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState
from newsletter_pipelines.sync.import_back import unimported_keys
from newsletter_pipelines.sync.rules import AddressMove, ProviderChange, SyncAction
from newsletter_pipelines_tests.test_sync_assets import metadata, run_sync
from newsletter_pipelines_tests.world import World

SECRET = "moto-secret-access-key-not-for-logs"


# --- a local S3 server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for this module's tests."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new bucket, reached as production reaches one: through the AWS_* variables only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client keeps the endpoint it was made with
    name = f"io-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    yield name
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(params=["local", "s3"])
def base_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the IO manager stores: a local folder, or a prefix in a bucket of the S3 server."""
    if request.param == "local":
        return str(tmp_path / "io")
    return f"s3://{request.getfixturevalue('bucket')}/values"


def manager(base: str) -> ParquetIOManager:
    return ParquetIOManagerResource(base_uri=base).create_io_manager(
        dg.build_init_resource_context()
    )


def _partition(key: str | None) -> dict[str, Any]:
    return {"partition_key": key, "asset_partitions_def": audience_partitions} if key else {}


def store(base: str, asset: str, value: object, partition: str | None = None) -> Any:
    """`value` stored as `asset` (of the audience `partition`) and loaded again."""
    io_manager = manager(base)
    out = dg.build_output_context(asset_key=asset, **_partition(partition))
    io_manager.handle_output(out, value)
    return io_manager.load_input(
        dg.build_input_context(asset_key=asset, upstream_output=out, **_partition(partition))
    )


def stored_files(base: str) -> set[str]:
    """The files under `base`, relative to it."""
    if base.startswith("s3://"):
        root = base.removeprefix("s3://")
        return {p.removeprefix(root + "/") for p in s3fs.S3FileSystem().find(root)}
    return {str(p.relative_to(base)) for p in Path(base).rglob("*") if p.is_file()}


def assert_same(loaded: pd.DataFrame, value: pd.DataFrame) -> None:
    """Equal frames, attrs and cell types; ledger rows also in `moved_from`, which their
    equality ignores."""
    pd.testing.assert_frame_equal(loaded, value, check_exact=True)
    assert loaded.attrs == value.attrs
    for column in value.columns[value.dtypes.map(pd.api.types.is_object_dtype)]:
        assert list(map(type, loaded[column])) == list(map(type, value[column])), column
        rows = [(a, b) for a, b in zip(loaded[column], value[column], strict=True)]
        moved = [(a.moved_from, b.moved_from) for a, b in rows if isinstance(b, LedgerRow)]
        assert all(a == b for a, b in moved), column


# --- frames: every kind of column --------------------------------------------------------------


ROW = LedgerRow(
    member_key="neu@example.de",
    email="neu@example.de",
    owner="7",
    provider_id="p7",
    tags=frozenset({"CRM", "Käufer"}),
    state=RowState.OPTED_OUT,
    intent=Intent.CHANGE_EMAIL,
    moved_from="alt@example.de",
    unimported_opt_out="unsubscribed",
)


def every_kind() -> pd.DataFrame:
    """One column of each kind the assets hold, and some they might."""
    berlin = ZoneInfo("Europe/Berlin")
    objects = {
        "text": ["a", None, "c"],
        "nan_none": ["a", None, np.nan],
        "ints_none": [1, None, 3],
        "tuples": [("b", "a"), (), None],
        "frozensets": [frozenset({"x", "y"}), None, frozenset()],
        "ledger": [ROW, None, ROW.moved(moved_from=None, state=RowState.SUBSCRIBED)],
        "move": [AddressMove("alt@example.de", "neu@example.de", None, "7"), None, None],
        "enums_and_text": [SyncAction.CREATE, "create", None],
        "enums": [ProviderChange.OPTED_OUT, MemberStatus.ARCHIVED, Intent.REMOVE],
        "timestamps": [pd.Timestamp("2026-01-01 12:00", tz="UTC"), pd.NaT, None],
        "datetimes": [
            datetime(2026, 10, 25, 2, 30, tzinfo=berlin, fold=1),
            datetime(2026, 1, 1, 8, tzinfo=TzInfo(3600)),
            datetime(2026, 1, 1, 8, 0, 0, 123456),
        ],
        "misc": [date(2026, 1, 1), timedelta(days=1, seconds=2), Decimal("1.10")],
        "numpy": [np.int64(5), np.float32(1.5), np.bool_(True)],
        "nested": [{"k": (1, 2), 3: [None, float("inf")]}, [1, [2]], {1, 2}],
        "nothing": [None, None, None],
    }
    return pd.DataFrame(
        {
            "int": [1, 2, 3],
            "float": [1.5, np.nan, -0.0],
            "bool": [True, False, True],
            "nullable_int": pd.array([1, None, 3], dtype="Int64"),
            "string": pd.array(["a", None, "c"], dtype="string"),
            "naive": pd.to_datetime(
                ["2026-01-01", None, "2026-01-03 01:02:03.456789"], format="ISO8601"
            ),
            "utc": pd.to_datetime(["2026-01-01", None, "2026-01-03"], utc=True),
            "berlin_us": pd.to_datetime(["2026-01-01", None, "2026-07-03"])
            .tz_localize(berlin)
            .as_unit("us"),
            "duration": pd.to_timedelta([1, None, 3], unit="s"),
            **{name: pd.Series(values, dtype=object) for name, values in objects.items()},
        }
    )


def read_back(frame: pd.DataFrame) -> pd.DataFrame:
    buffer = io.BytesIO()
    frames.write_frame(frame, buffer)
    buffer.seek(0)
    return frames.read_frame(buffer)


VARIANTS: dict[str, Any] = {
    "whole": lambda f: f,
    "filtered index": lambda f: f[f["int"] != 2],
    "no rows": lambda f: f.iloc[:0],
    "no columns": lambda f: f[[]],
    "nothing": lambda f: pd.DataFrame(),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_kind_of_column_reads_back_equal(variant: str) -> None:
    frame = VARIANTS[variant](every_kind())
    frame.attrs = {READ_UPTO: "2026-01-01T10:00:00|42", "none": None, "tuple": ("a", 1)}
    assert_same(read_back(frame), frame)


def test_object_columns_are_tagged_json_and_plain_text_stays_text() -> None:
    table = frames.to_table(every_kind())
    assert table.schema.field("text").type == "string"  # readable as is
    assert table.schema.field("tuples").type == "string"
    assert table.column("tuples").to_pylist()[0] == '{"$t":"tuple","v":["b","a"]}'
    # a column of one dataclass: a struct, its text fields as text, the rest tagged JSON
    ledger = table.column("ledger").to_pylist()
    assert ledger[1] is None
    assert ledger[0]["member_key"] == "neu@example.de"
    assert ledger[0]["moved_from"] == "alt@example.de"  # not compared, still stored
    assert ledger[0]["state"] == '{"$t":"RowState","v":"opted_out"}'
    assert ledger[0]["tags"] == '{"$t":"frozenset","v":["CRM","Käufer"]}'
    assert ledger[2]["moved_from"] is None and ledger[2]["owner"] == "7"


SCALARS = st.sampled_from(["a", "b", 1, 1.0, True, 0, 0.0, False]) | st.just(float("nan"))
GROUPED = st.tuples() | st.tuples(SCALARS) | st.tuples(SCALARS, SCALARS)
GROUPED |= st.frozensets(SCALARS, max_size=2)
TAGS = st.sampled_from([(), ("a",), ("a", "b"), frozenset(), frozenset({"a"})])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | TAGS | GROUPED | SCALARS | st.tuples(GROUPED), max_size=12))
def test_a_column_of_tags_is_encoded_by_distinct_value_as_one_by_one(values: list[Any]) -> None:
    """Encoded per distinct value (tuples and frozensets of texts), a column's texts are
    those of each value encoded on its own: equal values of other types (1, 1.0, True), NaN
    and nested tuples are not taken for one another."""
    for cells in (values, pd.Series(values, dtype=object)):
        encoded = frames._encode_values(cells)
        assert list(encoded) == frames._encoded_one_by_one(values)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.none()
        | st.builds(
            LedgerRow,
            member_key=st.text(max_size=5),
            email=st.text(max_size=5),
            owner=st.none() | st.text(max_size=3),
            provider_id=st.none() | st.text(max_size=3),
            tags=st.frozensets(st.text(max_size=3), max_size=3),
            state=st.sampled_from(RowState),
            intent=st.none() | st.sampled_from(Intent),
            moved_from=st.none() | st.text(max_size=3),
            settled=st.none() | st.sampled_from(Intent),
        ),
        max_size=30,
    )
)
def test_dataclass_columns_read_back_equal_and_unshared_where_mutable(
    rows: list[LedgerRow | None],
) -> None:
    """Any column of ledger rows and None (a struct), and one whose rows carry mutable values
    in a field (tagged JSON there, parsed per cell): equal, of the same types, moved_from too;
    no two cells share a mutable value."""
    mutable = [None if r is None else r.moved(provider_changed_at=[1, {"k": r.tags}]) for r in rows]
    frame = pd.DataFrame(
        {"rows": pd.Series(rows, dtype=object), "mutable": pd.Series(mutable, dtype=object)}
    )
    loaded = read_back(frame)
    assert_same(loaded, frame)
    values = [r.provider_changed_at for r in loaded["mutable"] if r is not None]
    assert len({id(v) for v in values}) == len(values)


SUBSETS: dict[str, Any] = {
    "some columns": (["tuples", "int", "ledger", "berlin_us", "text"], ()),
    "rows with a ledger row or a move": (None, ["ledger", "move"]),
    "both": (["move", "utc", "nested"], ["move", "float"]),
    "no row": (["int"], ["nothing"]),
}


@pytest.mark.parametrize("variant", ["whole", "filtered index"])
@pytest.mark.parametrize("subset", SUBSETS)
def test_some_columns_and_rows_read_back_equal_to_that_part(variant: str, subset: str) -> None:
    """Columns (in the stored order, whatever the order asked) and rows with a value in one of
    some columns (not None, nor NaN of a column of numbers), with their index and attrs."""
    frame = VARIANTS[variant](every_kind())
    frame.attrs = {READ_UPTO: "2026-01-01T10:00:00|42"}
    columns, rows_with = SUBSETS[subset]
    buffer = io.BytesIO()
    frames.write_frame(frame, buffer)
    buffer.seek(0)
    loaded = frames.read_frame(buffer, columns, rows_with)
    expected = frame if columns is None else frame[[c for c in frame.columns if c in columns]]
    if rows_with:
        expected = expected[frame[rows_with].notna().any(axis=1)]
    assert_same(loaded, expected)


@pytest.mark.parametrize(
    ("values", "groups_read"),
    [
        ([np.nan] * 5, False),  # numbers, all missing: the statistics say so
        ([np.nan, np.nan, np.nan, np.nan, 1.0], True),  # a value in the last row group
        ([None] * 5, False),  # a column of None only: by its type
    ],
    ids=["all missing", "one value", "None only"],
)
@pytest.mark.parametrize("variant", ["whole", "filtered index"])
def test_rows_with_columns_without_a_value_are_no_rows_and_nothing_is_read(
    values: list[Any], groups_read: bool, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the file tells that the columns `rows_with` hold no value (a diff without provider
    changes), the frame of no rows comes without reading any column; otherwise the rows are
    read as ever. Several row groups."""
    index = pd.RangeIndex(5) if variant == "whole" else pd.Index([3, 1, 4, 1, 5])
    frame = pd.DataFrame(
        {
            "text": ["a", None, "c", "d", "e"],
            "ledger": [ROW, None, None, ROW, None],
            "tuples": [("b",), (), None, None, ("c", "d")],
            "maybe": pd.Series(values, index, object if values[0] is None else float),
        },
        index=index,
    )
    buffer = io.BytesIO()
    pq.write_table(frames.to_table(frame), buffer, row_group_size=2)
    reads: list[object] = []
    read = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: reads.append(k) or read(*a, **k))
    buffer.seek(0)
    loaded = frames.read_frame(buffer, ["text", "ledger", "tuples"], ["maybe"])
    assert_same(loaded, frame.loc[frame["maybe"].notna(), ["text", "ledger", "tuples"]])
    assert bool(reads) == groups_read


ROWS_IN: dict[str, Any] = {
    "some values": (None, (), ("text", {"c", "x"})),
    "None too": (["int", "text"], (), ("text", {None, "a"})),
    "and rows with": (["int", "move"], ["move", "float"], ("text", {"a", "c"})),
    "no value": (["int"], (), ("text", set())),
    "a column of None only": (["int"], (), ("nothing", {None})),
}


@pytest.mark.parametrize("variant", ["whole", "filtered index"])
@pytest.mark.parametrize("subset", ROWS_IN)
def test_rows_with_some_values_of_a_text_column_read_back_equal_to_those_rows(
    variant: str, subset: str
) -> None:
    """Rows whose text column holds one of some values (None matching None), also with some
    columns only and with `rows_with`, with their index and attrs."""
    frame = VARIANTS[variant](every_kind())
    frame.attrs = {READ_UPTO: "2026-01-01T10:00:00|42"}
    columns, rows_with, (name, values) = ROWS_IN[subset]
    buffer = io.BytesIO()
    frames.write_frame(frame, buffer)
    buffer.seek(0)
    loaded = frames.read_frame(buffer, columns, rows_with, (name, values))
    expected = frame if columns is None else frame[[c for c in frame.columns if c in columns]]
    wanted = frame[name].map(lambda v: v in values)
    if rows_with:
        wanted &= frame[list(rows_with)].notna().any(axis=1)
    assert_same(loaded, expected[wanted.to_numpy(dtype=bool)])


def _read_without_and_with(
    variant: str, subset: str | None, **flags: Any
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frame of every kind (`variant`, attrs set) written, then read with the columns and
    rows of `subset`: without `flags`, and with them."""
    frame = VARIANTS[variant](every_kind())
    frame.attrs = {READ_UPTO: "2026-01-01T10:00:00|42"}
    columns, rows_with = (None, ()) if subset is None else SUBSETS[subset]
    buffer = io.BytesIO()
    frames.write_frame(frame, buffer)
    buffer.seek(0)
    expected = frames.read_frame(buffer, columns, rows_with)
    buffer.seek(0)
    return expected, frames.read_frame(buffer, columns, rows_with, **flags)


@pytest.mark.parametrize("variant", ["whole", "filtered index"])
@pytest.mark.parametrize("subset", [None, *SUBSETS])
def test_with_arrow_text_the_text_columns_are_arrow_backed_and_the_rest_as_without(
    variant: str, subset: str | None
) -> None:
    """With `arrow_text` the columns stored as plain text (str and None; a pandas string column)
    are `columns.TEXT` of the same texts, a missing one None as a Python value; every other
    column, the index and attrs are read as without it."""
    expected, loaded = _read_without_and_with(variant, subset, arrow_text=True)
    texts = [c for c in expected.columns if c in ("text", "string")]
    assert [c for c in loaded.columns if loaded[c].dtype == TEXT] == texts
    for column in texts:
        assert python_values(loaded[column]) == python_values(expected[column])
    assert_same(loaded.drop(columns=texts), expected.drop(columns=texts))


@pytest.mark.parametrize("variant", ["whole", "filtered index"])
@pytest.mark.parametrize("subset", [None, *SUBSETS])
def test_struct_columns_left_arrow_backed_decode_to_what_is_read_without(
    variant: str, subset: str | None
) -> None:
    """The struct columns named in `arrow_structs` are Arrow-backed, the rest read as without
    it; decoded whole (`decoded_structs`), or a part at a time (`struct_objects` of a chunk, of
    some rows), they are the objects read without it, moved_from too."""
    expected, loaded = _read_without_and_with(variant, subset, arrow_structs=["ledger", "text"])
    kept = [c for c in expected.columns if c == "ledger"]
    assert [c for c in loaded.columns if isinstance(loaded[c].dtype, pd.ArrowDtype)] == kept
    assert_same(loaded.drop(columns=kept), expected.drop(columns=kept))
    assert_same(frames.decoded_structs(loaded), expected)
    assert frames.decoded_structs(expected) is expected
    for column in kept:
        parts = [slice(0, 1), slice(1, None), np.arange(len(loaded)) != 1]
        for part in parts:
            got = frames.struct_objects(loaded[column][part])
            want = expected[column][part].tolist()
            assert [None if r is None else vars(r) for r in got] == [
                None if r is None else vars(r) for r in want
            ]
            assert list(map(type, got)) == list(map(type, want))


@pytest.mark.parametrize("column", ["tuples", "ledger", "int", "enums_and_text"])
def test_rows_are_selected_by_the_values_of_a_text_column_only(column: str) -> None:
    """A column stored otherwise (JSON per cell, a struct, numbers) holds other values in the
    file than in the frame: selecting rows by them is refused."""
    buffer = io.BytesIO()
    frames.write_frame(every_kind(), buffer)
    with pytest.raises(TypeError, match=column):
        frames.read_frame(buffer, None, (), (column, {"a"}))


def test_an_unknown_column_is_a_key_error() -> None:
    buffer = io.BytesIO()
    frames.write_frame(every_kind(), buffer)
    with pytest.raises(KeyError, match="nope"):
        frames.read_frame(buffer, ["int", "nope"])


def test_an_input_is_what_its_metadata_asks_for(tmp_path: Path) -> None:
    """`AssetIn` metadata: `columns` and `rows_with` read part of the stored frame; `lazy` gives
    a `StoredFrame`, which reads only when loaded."""
    io_manager = manager(str(tmp_path / "io"))
    frame = every_kind()
    out = dg.build_output_context(asset_key="values")
    io_manager.handle_output(out, frame)

    def load(**metadata: Any) -> Any:
        context = dg.build_input_context(
            asset_key="values", upstream_output=out, definition_metadata=metadata
        )
        return io_manager.load_input(context)

    assert_same(load(), frame)
    part = load(columns=["text", "int"], rows_with=["move"])
    assert_same(part, frame.loc[[0], ["int", "text"]])
    lazy = load(lazy=True, columns=["int"])
    assert isinstance(lazy, StoredFrame) and lazy.columns == ["int"]
    assert_same(lazy.load_where("text", {"c"}), frame.loc[[2], ["int"]])
    whole = load(lazy=True)
    assert_same(whole.part(columns=["text", "int"]).load(), frame[["int", "text"]])
    assert_same(whole.part(rows_with=["move"]).load(), frame.loc[[0]])
    assert_same(lazy.part(rows_with=["move"]).load(), frame.loc[[0], ["int"]])
    (tmp_path / "io" / "values.parquet").unlink()
    with pytest.raises(FileNotFoundError):
        lazy.load()  # read only now


# --- the values of a real sync, on a folder and on S3 ------------------------------------------


@pytest.fixture
def crm_contacts(demo_crm_file: Path) -> pd.DataFrame:
    """The demo CRM as `crm_contacts` reads it (values as stored, wrong types included)."""
    engine = sa.create_engine(f"sqlite:///{demo_crm_file}")
    contacts = read_contacts(engine, CrmSchema())
    engine.dispose()
    contacts.attrs[READ_UPTO] = "2026-01-01T10:00:00|5000"
    return contacts


def sync_values(world: World) -> dict[str, pd.DataFrame]:
    """Snapshot, diff and crm_import_back of an audience after people acted at the provider:
    an opt-out, a deletion, an address change (a ledger row with `moved_from`, an
    `AddressMove`), a tag, a sign-up."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person3@example.de", "unsubscribe")
    world.act("person5@example.de", "delete")
    world.act("person7@example.de", "change_email", new_email="neu7@example.de")
    world.act("person2@example.de", "tag", tag="Webinar")
    world.act("neu@example.de", "signup")
    _, snapshot, diff = world.decide()
    plan = world.import_back(diff, snapshot, apply=False)
    unimported = unimported_keys(diff, plan, written=False)  # report only: all of them
    return {
        "provider_audience_snapshot": snapshot,
        "reconciliation_diff": diff,
        "crm_import_back": pd.DataFrame({"match_key": sorted(unimported)}, dtype=object),
    }


def test_the_values_of_a_sync_read_back_equal(
    world: World, base_uri: str, crm_contacts: pd.DataFrame
) -> None:
    audience = world.provider_name
    eligibility = classify(crm_contacts)
    unpartitioned = {
        "crm_contacts": crm_contacts,
        "eligible_subscribers": eligibility.eligible,
        "excluded_contacts": eligibility.excluded,
    }
    partitioned = sync_values(world)
    diff = partitioned["reconciliation_diff"]
    ledger = [r for c in ("ledger_before", "ledger_after") for r in diff[c] if r is not None]
    assert any(r.moved_from for r in ledger)  # what the push relies on
    assert diff["address_move"].map(lambda m: isinstance(m, AddressMove)).any()
    assert diff["import_tags"].map(lambda t: isinstance(t, tuple)).any()
    assert len(partitioned["crm_import_back"])

    for asset, value in unpartitioned.items():
        assert_same(store(base_uri, asset, value), value)
    for asset, value in partitioned.items():
        assert_same(store(base_uri, asset, value, partition=audience), value)
    assert stored_files(base_uri) == {f"{a}.parquet" for a in unpartitioned} | {
        f"{a}/{audience}.parquet" for a in partitioned
    }


# --- anything else is refused ------------------------------------------------------------------


def test_a_value_of_another_type_is_refused_naming_the_asset_and_type(tmp_path: Path) -> None:
    base = str(tmp_path / "io")
    with pytest.raises(TypeError, match=r"asset crm_import_back: a builtins\.frozenset cannot"):
        store(base, "crm_import_back", frozenset({"a@example.de"}), partition="brevo")
    odd = pd.DataFrame({"match_key": ["a@example.de"], "why": [object()]})
    with pytest.raises(TypeError, match=r"asset odd: .*column 'why'.*builtins\.object"):
        store(base, "odd", odd)
    assert not Path(base).exists() or stored_files(base) == set()  # nothing half-written


def test_a_local_value_is_replaced_whole_so_a_concurrent_reader_reads_one_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two audiences' runs share the unpartitioned values: while one run writes
    `crm_contacts.parquet`, another reading it gets the old file or the new one, whole."""
    base = str(tmp_path / "io")
    old = pd.DataFrame({"contact_id": ["1", "2"]})
    new = pd.DataFrame({"contact_id": ["3"]})
    store(base, "crm_contacts", old)
    io_manager = manager(base)
    seen_while_writing = []

    def write_table(table: Any, file: Any) -> None:
        seen_while_writing.append(
            io_manager.load_input(dg.build_input_context(asset_key="crm_contacts"))
        )
        frames.write_table(table, file)

    monkeypatch.setattr("newsletter_pipelines.defs.io_manager.write_table", write_table)
    io_manager.handle_output(dg.build_output_context(asset_key="crm_contacts"), new)
    (during,) = seen_while_writing
    assert_same(during, old)
    assert_same(io_manager.load_input(dg.build_input_context(asset_key="crm_contacts")), new)
    assert stored_files(base) == {"crm_contacts.parquet"}  # no temporary file left


def test_a_run_that_returns_another_type_fails_and_says_why(tmp_path: Path) -> None:
    @dg.asset
    def counts() -> dict[str, int]:
        return {"created": 1}

    result = dg.materialize(
        [counts],
        resources={"io_manager": ParquetIOManagerResource(base_uri=str(tmp_path))},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None
    assert "asset counts: a builtins.dict cannot be stored" in error.to_string()


# --- the resources and a whole run on S3 -------------------------------------------------------


def test_values_go_under_newsletter_home_unless_the_variable_says_where(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    io_manager = build_resources(settings)["io_manager"]
    assert io_manager.base_uri == str((settings.home / "io").resolve())
    monkeypatch.setenv("NEWSLETTER_IO_BASE_URI", "s3://newsletter-values/dagster")
    io_manager = build_resources(Settings())["io_manager"]
    assert isinstance(io_manager.base_uri, dg.EnvVar)  # the UI shows the variable's name
    assert io_manager.base_uri.env_var_name == "NEWSLETTER_IO_BASE_URI"


def test_a_full_sync_stores_its_values_in_the_bucket(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"s3://{bucket}/dagster"
    monkeypatch.setenv("NEWSLETTER_IO_BASE_URI", base)
    with dg.instance_for_test() as instance:
        first = run_sync(instance, "mailchimp")
        second = run_sync(instance, "mailchimp")  # its steps load what the first one stored
    assert first.success and second.success
    assert metadata(second, "audience_sync")["created"] == 0
    assert stored_files(base) == {
        "crm_contacts.parquet",
        "eligible_subscribers.parquet",
        "excluded_contacts.parquet",
        "provider_audience_snapshot/mailchimp.parquet",
        "reconciliation_diff/mailchimp.parquet",
        "crm_import_back/mailchimp.parquet",
    }
    path = metadata(second, "reconciliation_diff")["path"]
    assert path == f"{base}/reconciliation_diff/mailchimp.parquet"
    shown = repr(
        [
            e.materialization.metadata
            for r in (first, second)
            for e in r.get_asset_materialization_events()
        ]
    )
    assert SECRET not in shown and "moto-key-id" not in shown
    loaded = manager(base).load_input(
        dg.build_input_context(asset_key="reconciliation_diff", **_partition("mailchimp"))
    )
    assert_same(loaded, second.output_for_node("reconciliation_diff"))
