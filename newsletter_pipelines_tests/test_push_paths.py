"""The push's fast paths agree with the slow ones: intents made by one copy, outcomes paired by
position, creates with more than one call in flight and their ledger writes on a thread."""

from __future__ import annotations

import functools
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from newsletter_pipelines.bulk import records, records_in_chunks
from newsletter_pipelines.providers.base import Action, Contact, MemberStatus, Outcome, Result
from newsletter_pipelines.state import ledger as ledger_module
from newsletter_pipelines.state.ledger import (
    LedgerColumns,
    OutcomeColumns,
    OutcomeRecord,
    load_ledger,
    outcomes,
)
from newsletter_pipelines.storage.frames import read_frame, struct_objects, write_frame
from newsletter_pipelines.sync import push
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState
from newsletter_pipelines.sync.push import (
    _INTENT,
    LEDGER,
    _after,
    _by_contact,
    _contact,
    _intent,
    _matched,
    _outcome_for,
)
from newsletter_pipelines.sync.rules import OPTED_OUT, SyncAction
from newsletter_pipelines_tests import world as world_module
from newsletter_pipelines_tests.world import World, open_world

TEXTS = st.text(alphabet="abAB@. é", max_size=6)
MAYBE = st.none() | TEXTS
LEDGER_ROWS = st.builds(
    LedgerRow,
    member_key=TEXTS,
    email=TEXTS,
    owner=MAYBE,
    provider_id=MAYBE,
    tags=st.frozensets(st.sampled_from(["A", "B", "Käufer", "CRM"]), max_size=3),
    state=st.sampled_from(RowState),
    refusal_code=MAYBE,
    refusal_key=MAYBE,
    intent=st.none() | st.sampled_from(Intent),
    intent_key=MAYBE,
    stable_id=MAYBE,
    provider_changed_at=MAYBE,
    moved_from=MAYBE,
    unimported_opt_out=MAYBE,
    settled=st.none() | st.sampled_from(Intent),
)
WRITES = st.sampled_from([a for a in SyncAction if a in _INTENT])


def _intent_in_steps(
    row: Mapping[str, Any], action: SyncAction, moving_to: str | None = None
) -> LedgerRow:
    """`push._intent` as it was first written: a copy per step."""
    before: LedgerRow | None = row["ledger_before"]
    after: LedgerRow = row["ledger_after"]
    if moving_to is not None and before is not None:
        return before.moved(
            intent=Intent.CHANGE_EMAIL, intent_key=moving_to, tags=before.tags | after.tags
        )
    if action is SyncAction.CREATE:
        state, pushed = (before.state, before.tags) if before else (RowState.NEW, frozenset())
        base = after.moved(state=state, tags=after.tags | pushed)
    elif before is not None:
        base = before
    else:
        base = after.moved(state=RowState.SUBSCRIBED)
    refusal = (before.refusal_code, before.refusal_key) if before else (None, None)
    return base.moved(
        intent=push._INTENT[action],
        tags=base.tags | after.tags,
        refusal_code=refusal[0],
        refusal_key=refusal[1],
    )


def _after_eagerly(row: Mapping[str, Any], outcome: Outcome, action: SyncAction) -> LedgerRow:
    """`push._after` as it was first written: the intent made whatever the outcome."""
    after: LedgerRow = row["ledger_after"]
    intent = _intent_in_steps(row, action).moved(intent=None, intent_key=None)
    if outcome.outcome in push._CONFIRMED[action]:
        state = after.state
        if action in (SyncAction.CREATE, SyncAction.UPDATE) and outcome.status is not None:
            if outcome.status.value in OPTED_OUT:
                state = RowState.OPTED_OUT
            elif outcome.status is MemberStatus.ARCHIVED:
                state = RowState.GONE
        return after.moved(
            provider_id=outcome.provider_id or after.provider_id,
            state=state,
            stable_id=after.stable_id or outcome.stable_id,
        )
    if outcome.outcome is Result.REFUSED:
        refused = intent.moved(refusal_code=outcome.code or "refused", refusal_key=row["write_key"])
        before: LedgerRow | None = row["ledger_before"]
        if action is SyncAction.UPDATE and row.get("old_email") and before is not None:
            refused = refused.moved(tags=before.tags)
        if outcome.status is not None and outcome.status.value in OPTED_OUT:
            return refused.moved(state=RowState.OPTED_OUT)
        return refused
    return intent


def _same(one: LedgerRow, other: LedgerRow) -> bool:
    """Equal in every field, those left out of `==` (`moved_from`, `settled`) included."""
    return one == other and vars(one) == vars(other)


OUTCOMES = st.builds(
    Outcome,
    action=st.sampled_from(Action),
    outcome=st.sampled_from(Result),
    email=TEXTS,
    crm_id=MAYBE,
    provider_id=MAYBE,
    status=st.none() | st.sampled_from(MemberStatus),
    code=MAYBE,
    message=MAYBE,
    stable_id=MAYBE,
)


@st.composite
def push_rows(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "ledger_before": draw(st.none() | LEDGER_ROWS),
        "ledger_after": draw(LEDGER_ROWS),
        "write_key": draw(MAYBE),
        "old_email": draw(MAYBE),
    }


@settings(max_examples=300, deadline=None)
@given(push_rows(), WRITES, st.none() | TEXTS)
def test_an_intent_made_by_one_copy_is_the_intent_made_step_by_step(
    row: dict[str, Any], action: SyncAction, moving_to: str | None
) -> None:
    assert _same(_intent(row, action, moving_to), _intent_in_steps(row, action, moving_to))


@settings(max_examples=300, deadline=None)
@given(push_rows(), WRITES, OUTCOMES)
def test_the_row_after_an_outcome_is_the_one_made_with_the_intent_first(
    row: dict[str, Any], action: SyncAction, outcome: Outcome
) -> None:
    assert _same(_after(row, outcome, action), _after_eagerly(row, outcome, action))


@st.composite
def answered_chunks(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[Outcome]]:
    """Rows of a chunk and a client's outcomes: mostly one per row in the rows' order, as the
    clients answer; sometimes shuffled, short, another address's text, another contact's id,
    or rows sharing an address."""
    emails = draw(st.lists(st.sampled_from(["a@x.de", "A@x.de", "b@x.de", " c@x.de", "d@x.de"])))
    rows = [
        {"email": email, "crm_id": draw(st.none() | st.sampled_from([1, "1", "2", 3]))}
        for email in emails
    ]
    answers = []
    for row in rows:
        crm_id = None if row["crm_id"] is None else str(row["crm_id"])
        email = row["email"]
        if draw(st.integers(0, 9)) == 0:
            email = draw(st.sampled_from([email.upper(), email.strip(), "e@x.de"]))
        if draw(st.integers(0, 9)) == 0:
            crm_id = draw(st.none() | st.sampled_from(["1", "2", "9"]))
        outcome = draw(st.sampled_from(Result))
        answers.append(Outcome(action=Action.UPSERT, outcome=outcome, email=email, crm_id=crm_id))
    if draw(st.booleans()):
        answers = draw(st.permutations(answers))
    if answers and draw(st.integers(0, 9)) == 0:
        answers.pop(draw(st.integers(0, len(answers) - 1)))
    return rows, answers


@settings(max_examples=500, deadline=None)
@given(answered_chunks())
def test_outcomes_paired_by_position_are_those_the_lookup_finds(
    chunk: tuple[list[dict[str, Any]], list[Outcome]],
) -> None:
    rows, answers = chunk
    try:
        found = _by_contact(answers)
        expected = [(row, _outcome_for(row, found)) for row in rows]
    except RuntimeError:  # an outcome missing: both say so
        with pytest.raises(RuntimeError):
            _matched(rows, answers)
        return
    paired = _matched(rows, answers)
    assert [r for r, _ in paired] == rows
    assert [o for _, o in paired] == [o for _, o in expected]
    assert all(o is e for (_, o), (_, e) in zip(paired, expected, strict=True))


ODD_VALUES = st.none() | st.integers() | st.floats() | st.just(b"x")


@settings(max_examples=300, deadline=None)
@given(
    crm_id=st.integers() | TEXTS,
    email=TEXTS | ODD_VALUES,
    names=st.lists(TEXTS | st.none() | ODD_VALUES, min_size=3, max_size=3),
    tags=st.none() | st.tuples() | st.lists(TEXTS | st.integers(), max_size=3).map(tuple),
)
def test_a_contact_made_unvalidated_is_the_validated_one(
    crm_id: object, email: object, names: list[object], tags: object
) -> None:
    row = {
        "crm_id": crm_id,
        "email": email,
        "first_name": names[0],
        "last_name": names[1],
        "salutation": names[2],
        "provider_tags": tags,
    }
    values = {
        "crm_id": str(crm_id),
        "email": email,
        "first_name": names[0] or "",
        "last_name": names[1] or "",
        "salutation": names[2] or "",
        "tags": frozenset(tags or ()),
    }
    try:
        expected = Contact(**values)
    except ValidationError as error:
        with pytest.raises(ValidationError) as raised:
            _contact(row)
        assert raised.value.errors() == error.errors()
        return
    made = _contact(row)
    assert made == expected
    assert vars(made) == vars(expected) and list(vars(made)) == list(vars(expected))
    assert made.model_fields_set == expected.model_fields_set
    assert all(type(v) is type(vars(expected)[k]) for k, v in vars(made).items())


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(), MAYBE, st.none() | LEDGER_ROWS), max_size=40),
    size=st.integers(1, 7),
    per_read=st.integers(1, 4),
    start=st.integers(0, 3),
)
def test_chunks_read_a_few_at_a_time_are_the_chunks_sliced_one_by_one(
    rows: list[tuple[Any, ...]], size: int, per_read: int, start: int
) -> None:
    frame = pd.DataFrame(rows, columns=["n", "text", "row"]).iloc[start:]  # an index not from 0
    frame["flag"] = frame["n"] > 0
    chunks = list(records_in_chunks(frame, size, per_read))
    expected = [records(frame.iloc[at : at + size]) for at in range(0, len(frame), size)]
    assert chunks == expected
    assert all(
        type(a[k]) is type(b[k])
        for got, want in zip(chunks, expected, strict=True)
        for a, b in zip(got, want, strict=True)
        for k in a
    )


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(st.tuples(MAYBE, st.none() | LEDGER_ROWS, LEDGER_ROWS), max_size=40),
    size=st.integers(1, 7),
    per_read=st.integers(1, 4),
)
def test_ledger_rows_decoded_chunk_by_chunk_are_those_decoded_at_once(
    rows: list[tuple[Any, ...]], size: int, per_read: int
) -> None:
    """A stored diff's ledger rows left Arrow-backed (as `audience_sync` reads them) and decoded
    a chunk at a time (`create`) are the rows of the diff read decoded, moved_from too."""
    frame = pd.DataFrame(rows, columns=["email", *LEDGER])
    buffer = io.BytesIO()
    write_frame(frame, buffer)
    buffer.seek(0)
    decoded = read_frame(buffer)
    buffer.seek(0)
    arrow = read_frame(buffer, arrow_structs=LEDGER)
    per_chunk = dict.fromkeys(LEDGER, struct_objects)
    chunks = list(records_in_chunks(arrow, size, per_read, per_chunk))
    expected = list(records_in_chunks(decoded, size, per_read))
    assert chunks == expected
    assert [[{k: _fields(v) for k, v in r.items()} for r in c] for c in chunks] == [
        [{k: _fields(v) for k, v in r.items()} for r in c] for c in expected
    ]


def _fields(value: Any) -> Any:
    return vars(value) if isinstance(value, LedgerRow) else value


# --- creates with more than one call in flight ----------------------------------------------


def _create_intents(rows: Sequence[LedgerRow] | LedgerColumns) -> bool:
    """Whether `record` was given create intents (as rows or column-wise)."""
    intents = rows.intent if isinstance(rows, LedgerColumns) else [r.intent for r in rows]
    return bool(intents) and intents[0] is Intent.CREATE


def _actions(logged: Sequence[OutcomeRecord] | OutcomeColumns) -> list[str]:
    """The actions of outcomes given to `record` (as records or column-wise)."""
    return list(logged.action) if isinstance(logged, OutcomeColumns) else [o.action for o in logged]


def _synced(folder: Path, in_flight: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A first sync of 130 contacts created 20 a call with `in_flight` calls in flight, then a
    second sync after a few changes: what the provider, the ledger and the log hold."""
    folder.mkdir()
    context = functools.partial(push.PushContext, creates_in_flight=in_flight)
    with monkeypatch.context() as patched, open_world("mailchimp", folder, contacts=130) as world:
        patched.setattr(world_module, "PushContext", context)
        first, summary = world.sync()
        assert first["action"].eq("create").all()
        world.set(3, first_name="Changed")
        world.set(5, newsletter="no")
        world.set(7, email="moved7@example.de")
        _, again = world.sync()
        return {
            "summaries": (dict(summary.results), dict(again.results)),
            "members": world.members(),
            "ledger": _ledger(world),
            "log": _log(world.engine),
            "calls": _calls(world),
        }


def _ledger(world: World) -> list[tuple[Any, ...]]:
    stable = {m.key: m.stable_id for m in world.provider.snapshot()}
    rows = load_ledger(world.engine, world.provider_name)
    assert all(r.stable_id == stable.get(r.member_key) for r in rows if r.stable_id)
    # the sandbox numbers its members in the order the calls arrive: compared above instead
    return sorted(tuple(v for k, v in vars(r).items() if k != "stable_id") for r in rows)


def _log(engine: sa.Engine) -> Counter[tuple[Any, ...]]:
    columns = ("run_id", "crm_id", "email", "action", "outcome", "provider_id", "code")
    with engine.connect() as conn:
        found = conn.execute(sa.select(*(outcomes.c[c] for c in columns))).all()
    return Counter(tuple(row) for row in found)


def _calls(world: World) -> Counter[tuple[str, str, int]]:
    return Counter(
        {(m, t, s): n for (p, m, t, s), n in world.sandbox.stats.calls.items() if p == "mailchimp"}
    )


@pytest.mark.parametrize("in_flight", [2, 3])
def test_creates_with_calls_in_flight_end_as_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    one = _synced(tmp_path / "one", 1, monkeypatch)
    many = _synced(tmp_path / "many", in_flight, monkeypatch)
    assert one["summaries"][0] == {"created": 130}
    assert many == one


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_a_chunks_intents_are_written_before_the_outcomes_that_came_back_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    """130 creates, 20 a call: a chunk's intents are written as soon as the call before it is
    sent, ahead of the outcomes of the chunk `in_flight + 1` calls earlier (which came back
    while that call was on its way), so its own call never waits behind their write."""
    writes: list[str] = []
    record = push.record

    def spy(engine: Any, audience: str, run_id: str, rows: Any, **kw: Any) -> None:
        if _create_intents(rows):
            writes.append("intents")
        elif "create" in _actions(kw.get("logged", ())):
            writes.append("outcomes")
        record(engine, audience, run_id, rows, **kw)

    context = functools.partial(push.PushContext, creates_in_flight=in_flight)
    monkeypatch.setattr(world_module, "PushContext", context)
    monkeypatch.setattr("newsletter_pipelines.sync.push.record", spy)
    with open_world("mailchimp", tmp_path, contacts=130) as world:
        world.sync()
    chunks = 7
    intents = [i for i, kind in enumerate(writes) if kind == "intents"]
    settled = [i for i, kind in enumerate(writes) if kind == "outcomes"]
    assert len(intents) == len(settled) == chunks
    assert all(intents[k] < settled[k - in_flight - 1] for k in range(in_flight + 1, chunks))


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_no_create_call_goes_out_before_its_intents_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    """The ledger writer fails on the third chunk's intents: that chunk is never sent, nor any
    later one, and the push fails with the writer's error."""
    written: list[int] = []
    record = push.record

    def failing_record(engine: Any, audience: str, run_id: str, rows: Any, **kw: Any) -> None:
        if _create_intents(rows):
            written.append(len(rows))
            if len(written) == 3:
                raise OSError("disk full")
        record(engine, audience, run_id, rows, **kw)

    context = functools.partial(push.PushContext, creates_in_flight=in_flight)
    monkeypatch.setattr(world_module, "PushContext", context)
    monkeypatch.setattr("newsletter_pipelines.sync.push.record", failing_record)
    with open_world("mailchimp", tmp_path, contacts=130) as world:
        world.provider.ensure_audience()
        world.sandbox.stats.reset()
        with pytest.raises(OSError, match="disk full"):
            world.sync()
        assert written == [20, 20, 20]
        sent = world.sandbox.stats.count("mailchimp", method="POST", template="/lists/{list_id}")
        assert sent == 2
        assert len(world.members()) == 40
        intents = Counter(r.intent for r in load_ledger(world.engine, world.provider_name))
        assert sum(intents.values()) == 40  # the third chunk's intents were never written


# --- creates of contacts new to the provider and the ledger, column-wise --------------------

FRESH_AFTER = LEDGER_ROWS.map(lambda row: row.moved(moved_from=None, settled=None))


@st.composite
def fresh_creates(draw: st.DrawFn) -> tuple[pd.DataFrame, list[Outcome]]:
    """A diff's creates of contacts new to the provider and the ledger, with a client's
    answer: mostly each contact's outcome at its position, confirming (any status, ids or
    not); sometimes a refusal or a failure, another order, one missing or two rows sharing
    an address."""
    emails = draw(st.lists(st.sampled_from(["a@x.de", "b@x.de", "C@x.de", "d@x.de"]), max_size=8))
    if draw(st.booleans()):
        emails = list(dict.fromkeys(emails))  # the usual case: every address once
    rows = [
        {
            "crm_id": draw(st.integers(1, 5) | st.sampled_from(["7", "x"])),
            "email": email,
            "match_key": email.lower(),
            "first_name": draw(MAYBE),
            "last_name": draw(MAYBE),
            "salutation": draw(MAYBE),
            "provider_tags": draw(st.lists(st.sampled_from(["A", "Käufer"]), max_size=2)),
            "provider_id": draw(MAYBE),
            "provider_status": None,
            "write_key": draw(MAYBE),
            "old_email": None,
            "ledger_before": None,
            "ledger_after": draw(FRESH_AFTER),
        }
        for email in emails
    ]
    confirmed = st.sampled_from(push._CONFIRMED[SyncAction.CREATE])
    answers = [
        Outcome(
            action=Action.UPSERT,
            outcome=draw(confirmed if draw(st.integers(0, 9)) else st.sampled_from(Result)),
            email=row["email"],
            crm_id=str(row["crm_id"]),
            provider_id=draw(MAYBE),
            stable_id=draw(MAYBE),
            status=draw(st.none() | st.sampled_from(MemberStatus)),
            code=draw(MAYBE),
            message=draw(MAYBE),
        )
        for row in rows
    ]
    if draw(st.integers(0, 9)) == 0:
        answers = draw(st.permutations(answers))
    if answers and draw(st.integers(0, 9)) == 0:
        answers.pop(draw(st.integers(0, len(answers) - 1)))
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else None), answers


@settings(max_examples=300, deadline=None)
@given(fresh_creates(), st.booleans())
def test_fresh_creates_made_column_wise_are_those_made_row_by_row(
    chunk: tuple[pd.DataFrame, list[Outcome]], stored: bool
) -> None:
    """The intents, ledger rows and outcome log of creates of contacts new to the provider
    and the ledger, made field by field (`_FreshCreates`), are those the rows' dicts give
    (`_Push.intents`, `_Push.settled`), from a diff as computed or as `audience_sync` reads
    it (ledger rows Arrow-backed)."""
    frame, answers = chunk
    if frame.empty:
        return
    if stored:
        buffer = io.BytesIO()
        write_frame(frame, buffer)
        buffer.seek(0)
        frame = read_frame(buffer, arrow_structs=LEDGER)
    assert push._fresh(frame).all()
    rows = records(push.decoded_structs(frame))
    context = push.PushContext(engine=None, audience="mailchimp", run_id="run")  # type: ignore[arg-type]
    by_rows, by_columns = push._Push(None, {}, context), push._Push(None, {}, context)  # type: ignore[arg-type]
    fresh = push._FreshCreates(by_columns, frame)
    now = "2026-12-05T00:00:00+00:00"
    expected = by_rows.intents(rows, SyncAction.CREATE)
    intents = fresh.intents()
    assert _values(intents.rows, now) == _values(expected.rows, now)
    assert intents.fresh and not expected.fresh  # copied straight into the ledger
    assert by_columns.sent == by_rows.sent
    try:
        expected = by_rows.settled(rows, answers, SyncAction.CREATE)
    except RuntimeError:  # an outcome missing: both say so
        with pytest.raises(RuntimeError):
            fresh.settled(answers)
        return
    settled = fresh.settled(answers)
    assert _values(settled.rows, now) == _values(expected.rows, now)
    assert _logged(settled.logged, now) == _logged(expected.logged, now)
    assert by_columns.summary == by_rows.summary


def _values(rows: Any, now: str) -> list[tuple[Any, ...]]:
    return ledger_module._ledger_values("mailchimp", rows, now)


def _logged(logged: Any, now: str) -> list[tuple[Any, ...]]:
    return ledger_module._outcome_values("mailchimp", "run", logged, now)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.none() | LEDGER_ROWS, LEDGER_ROWS, st.none() | st.just("archived")),
        min_size=1,
        max_size=12,
    ),
    stored=st.booleans(),
)
def test_creates_are_fresh_exactly_when_nothing_is_known_of_their_address(
    rows: list[tuple[Any, ...]], stored: bool
) -> None:
    """`_fresh` (read off the Arrow arrays when stored) says which creates have no ledger row
    before, no member, and a row after that moved from nowhere and settles nothing."""
    frame = pd.DataFrame(rows, columns=["ledger_before", "ledger_after", "provider_status"])
    if stored:
        buffer = io.BytesIO()
        write_frame(frame, buffer)
        buffer.seek(0)
        frame = read_frame(buffer, arrow_structs=LEDGER)
    expected = [
        before is None and status is None and after.moved_from is None and after.settled is None
        for before, after, status in rows
    ]
    assert push._fresh(frame).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(total=st.integers(1, 5_000), size=st.integers(1, 700))
def test_create_progress_logs_the_first_chunk_and_one_line_a_tenth(total: int, size: int) -> None:
    lines: list[str] = []
    progress = push._Progress(total, lines.append)
    for start in range(0, total, size):
        progress.sending(min(size, total - start))
    assert lines[0].startswith(f"creating contacts 1–{min(size, total):,} of {total:,}")
    assert len(lines) == len({(start * 10) // total for start in range(0, total, size)}) <= 10
