"""The CRM read through Arrow (ADBC) builds the frame the row-wise read builds, on SQLite and on
PostgreSQL, and hands over to the row-wise read where it cannot."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter_pipelines.crm import arrow_reader, reader
from newsletter_pipelines.crm.arrow_reader import adbc_source
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.crm.reader import CONTACT_COLUMNS, read_contacts
from newsletter_pipelines.settings import CrmSchema

NAMES = ["id", *CONTACT_COLUMNS[1:]]
TEXT = st.text(st.characters(codec="utf-8"), max_size=8)  # NUL, controls, emoji, combining marks
SQLITE_VALUES = {  # SQLite storage class: its values
    "integer": st.integers(-(2**63), 2**63 - 1),
    "real": st.floats(allow_nan=False),  # SQLite stores NaN as NULL
    "text": TEXT,
    "blob": st.binary(max_size=6),
}


def read_both(engine: sa.Engine) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """`read_contacts` as it reads (and whether through Arrow), and read row-wise."""
    used: list[bool] = []

    def spied(*args: Any) -> Any:
        columns = arrow_reader.read_columns(*args)
        used.append(columns is not None)
        return columns

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "read_columns", spied)
        arrow = read_contacts(engine, CrmSchema())
        patch.setattr(reader, "read_columns", lambda *args: None)
        rows = read_contacts(engine, CrmSchema())
    return arrow, rows, used[0]


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    for name in want.columns:
        got_types = [type(v) for v in got[name].tolist()]
        assert got_types == [type(v) for v in want[name].tolist()], name


def _column(kind: str, rows: int) -> st.SearchStrategy[list[Any]]:
    if kind == "null":
        return st.just([None] * rows)
    return st.lists(st.none() | SQLITE_VALUES[kind], min_size=rows, max_size=rows)


@st.composite
def sqlite_crm(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], list[tuple[Any, Any]]]:
    """Contacts whose every column holds one storage class (and NULL), and their tags."""
    rows = draw(st.integers(0, 12))
    id_kind = draw(st.sampled_from(["integer", "text"]))
    ids = draw(st.lists(SQLITE_VALUES[id_kind], min_size=rows, max_size=rows, unique=True))
    kinds = draw(st.lists(st.sampled_from([*SQLITE_VALUES, "null"]), min_size=8, max_size=8))
    columns = [draw(_column(kind, rows)) for kind in kinds]
    tag_kind = draw(st.sampled_from(["text", "integer"]))
    owners = st.sampled_from(ids) if ids else SQLITE_VALUES[id_kind]
    tag = st.none() | SQLITE_VALUES[tag_kind]
    tags = draw(st.lists(st.tuples(owners | SQLITE_VALUES[id_kind], tag), max_size=20))
    return list(zip(ids, *columns, strict=True)), tags


def _write_sqlite(path: Path, contacts: list[tuple[Any, ...]], tags: list[tuple[Any, Any]]) -> None:
    with sqlite3.connect(path) as conn:  # columns without a type: values kept as given
        conn.execute(f"CREATE TABLE contacts ({', '.join(NAMES)})")
        conn.execute("CREATE TABLE contact_tags (contact_id, tag)")
        conn.executemany(f"INSERT INTO contacts VALUES ({', '.join('?' * len(NAMES))})", contacts)
        conn.executemany("INSERT INTO contact_tags VALUES (?, ?)", tags)
    conn.close()


@settings(max_examples=150, deadline=None)
@given(crm=sqlite_crm())
def test_sqlite_read_through_arrow_is_the_row_wise_frame(
    crm: tuple[list[tuple[Any, ...]], list[tuple[Any, Any]]], tmp_path_factory: Any
) -> None:
    path = tmp_path_factory.mktemp("arrow") / "crm.sqlite3"
    _write_sqlite(path, *crm)
    engine = sa.create_engine(f"sqlite:///{path}")
    arrow, rows, through_arrow = read_both(engine)
    engine.dispose()
    assert through_arrow
    assert_same(arrow, rows)


@pytest.mark.parametrize(
    "values",
    [
        [1, "1"],  # ADBC would read 1 as '1'
        ["x", 2.5],
        [1, 2.5],  # ADBC would read 1 as 1.0
        [b"\x00", "x"],
    ],
)
def test_a_sqlite_column_of_several_storage_classes_is_read_row_wise(
    values: list[object], tmp_path: Path
) -> None:
    contacts = [(i, None, v, None, "a@b.de", "yes", 0, None, None) for i, v in enumerate(values)]
    _write_sqlite(tmp_path / "mixed.sqlite3", contacts, [(0, "VIP"), (1, 7)])
    arrow, rows, through_arrow = read_both(
        sa.create_engine(f"sqlite:///{tmp_path / 'mixed.sqlite3'}")
    )
    assert not through_arrow
    assert_same(arrow, rows)
    assert arrow["first_name"].tolist() == values
    assert arrow["tags"].tolist() == [("VIP",), ("7",)]


def test_a_type_change_after_the_first_batch_is_read_row_wise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADBC's SQLite driver types a column by its first rows; text after NULLs fails there."""
    monkeypatch.setattr(arrow_reader, "_SQLITE_BATCH_ROWS", 2)
    contacts = [
        (i, None, None if i < 3 else "Anna", None, "a@b.de", "yes", 0, None, None) for i in range(5)
    ]
    _write_sqlite(tmp_path / "late.sqlite3", contacts, [])
    arrow, rows, through_arrow = read_both(
        sa.create_engine(f"sqlite:///{tmp_path / 'late.sqlite3'}")
    )
    assert not through_arrow
    assert_same(arrow, rows)


def test_text_that_is_not_utf8_fails_the_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "latin1.sqlite3"
    _write_sqlite(path, [(1, None, None, None, "a@b.de", "yes", 0, None, None)], [])
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE contacts SET last_name = CAST(x'4dfc6c6c6572' AS TEXT)"
        )  # Müller, Latin-1
    conn.close()
    with pytest.raises(CrmError, match="cannot read the CRM tables"):
        read_contacts(sa.create_engine(f"sqlite:///{path}"), CrmSchema())


@pytest.mark.parametrize(
    ("url", "has_source"),
    [
        ("sqlite:////tmp/crm.sqlite3", True),
        ("sqlite://", False),
        ("sqlite:///:memory:", False),
        ("sqlite:///file:crm.sqlite3?mode=ro&uri=true", False),
        ("sqlite:///file:crm.sqlite3", False),  # sqlite3 opens a file of that name, ADBC a URI
        ("postgresql://u:p%40ss@db:5433/crm?sslmode=require", True),
        ("postgresql+psycopg://u@db/crm", True),
        ("postgresql+pg8000://u@db/crm", False),
        ("mysql+pymysql://u@db/crm", False),
    ],
)
def test_which_urls_are_read_through_adbc(url: str, has_source: bool) -> None:
    source = adbc_source(sa.engine.make_url(url))
    assert (source is not None) == has_source
    if source and url.startswith("postgresql://"):
        assert source[1] == url  # the password is passed on, still URL-encoded


# PostgreSQL column types: the values the test writes; None for those read row-wise
PG_TYPES: dict[str, tuple[st.SearchStrategy[Any], bool]] = {
    "text": (st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8), True),
    "varchar(20)": (st.text(alphabet="aäß😀 ", max_size=8), True),
    "bigint": (st.integers(-(2**63), 2**63 - 1), True),
    "integer": (st.integers(-(2**31), 2**31 - 1), True),
    "smallint": (st.integers(-(2**15), 2**15 - 1), True),
    "double precision": (st.floats(), True),  # NaN and infinities too
    "boolean": (st.booleans(), True),
    "timestamp": (st.datetimes(), True),  # also outside pandas' nanosecond years
    "date": (st.dates(), True),
    "numeric": (st.decimals(allow_nan=False, places=2, min_value=-1000, max_value=1000), False),
    "timestamptz": (st.datetimes(min_value=datetime(1900, 1, 1)), False),
    "bytea": (st.binary(max_size=4), False),
}


@st.composite
def postgresql_crm(
    draw: st.DrawFn,
) -> tuple[list[str], list[tuple[Any, ...]], list[tuple[int, str]]]:
    rows = draw(st.integers(0, 10))
    types = draw(st.lists(st.sampled_from(sorted(PG_TYPES)), min_size=8, max_size=8))
    ids = draw(
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=rows, max_size=rows, unique=True)
    )
    columns = [
        draw(st.lists(st.none() | PG_TYPES[kind][0], min_size=rows, max_size=rows))
        for kind in types
    ]
    owners = st.sampled_from(ids) if ids else st.integers(0, 5)
    tags = draw(st.lists(st.tuples(owners, PG_TYPES["text"][0]), max_size=15, unique=True))
    return types, list(zip(ids, *columns, strict=True)), tags


@pytest.fixture(params=["psycopg2", "psycopg"])
def postgres_crm(request: pytest.FixtureRequest, postgres_url: str) -> Callable[..., sa.Engine]:
    """Writes a CRM with the given column types into the test database; an engine on it."""
    url = sa.engine.make_url(postgres_url).set(drivername=f"postgresql+{request.param}")
    engine = sa.create_engine(url)
    request.addfinalizer(engine.dispose)

    def write(
        types: list[str], contacts: list[tuple[Any, ...]], tags: list[tuple[int, str]]
    ) -> sa.Engine:
        columns = ", ".join(f"{n} {t}" for n, t in zip(NAMES[1:], types, strict=True))
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS contacts, contact_tags")
            conn.exec_driver_sql(f"CREATE TABLE contacts (id bigint PRIMARY KEY, {columns})")
            conn.exec_driver_sql("CREATE TABLE contact_tags (contact_id bigint, tag text)")
            marks = ", ".join(["%s"] * len(NAMES))
            if contacts:
                conn.exec_driver_sql(f"INSERT INTO contacts VALUES ({marks})", contacts)
            if tags:
                conn.exec_driver_sql("INSERT INTO contact_tags VALUES (%s, %s)", tags)
        return engine

    return write


@pytest.mark.postgres
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(crm=postgresql_crm())
def test_postgresql_read_through_arrow_is_the_row_wise_frame(
    crm: tuple[list[str], list[tuple[Any, ...]], list[tuple[int, str]]],
    postgres_crm: Callable[..., sa.Engine],
) -> None:
    types = crm[0]
    arrow, rows, through_arrow = read_both(postgres_crm(*crm))
    assert through_arrow == all(PG_TYPES[t][1] for t in types)
    assert_same(arrow, rows)


@pytest.mark.postgres
def test_the_benchmark_crm_on_postgresql_is_read_through_arrow(
    postgres_crm: Callable[..., sa.Engine],
) -> None:
    """The default schema's types, with NULLs, unicode and a timestamp in every column."""
    types = ["text", "text", "text", "text", "text", "boolean", "timestamp", "timestamp"]
    when = datetime(2025, 3, 1, 12, 30, 15, 123456)
    contacts = [
        (2, "Frau", "Käthe", "Müller-Lüdenscheidt", " k@bücher.de ", "yes", False, when, None),
        (1, None, "😀", None, None, None, None, None, when),
        (3, "Herr", "Jörg", "O'Brien", "J@X.DE", "no", True, None, when),
    ]
    arrow, rows, through_arrow = read_both(postgres_crm(types, contacts, [(2, "VIP"), (2, "A")]))
    assert through_arrow
    assert_same(arrow, rows)
    assert arrow["tags"].tolist() == [(), ("A", "VIP"), ()]
    assert str(arrow["updated_at"].dtype) == "datetime64[ns]"
