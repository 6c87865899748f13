"""CRM change detection for the change sensor: a watermark over (`updated_at`, id).

Each tick reads the contacts changed after the watermark (oldest first, at most a batch) and
looks back over a small overlap window before it: a transaction that committed late, with an
`updated_at` older than the watermark, lands there. The window is remembered as a digest of its
(id, `updated_at`) pairs, so a tick sees that something arrived late without keeping the rows;
the run it requests then covers the window again (a contact decided twice is sent nothing
twice: the rules find it in sync).

No database and no Dagster here: `crm.changes` reads, the sensor wires.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from newsletter_pipelines.sync.email_address import raw_match_key

# attribute of the CRM frames: the latest change (a `Mark`'s text) before the read they hold
READ_UPTO = "changes_read_upto"


@dataclass(frozen=True, order=True)
class Mark:
    """A contact's place in the change order: its `updated_at`, then its id (as text)."""

    updated_at: datetime
    contact_id: str

    def text(self) -> str:
        """As run keys and run config carry it."""
        return f"{self.updated_at.isoformat()}|{self.contact_id}"

    @classmethod
    def parse(cls, text: str) -> Mark:
        stamp, _, contact_id = text.partition("|")
        return cls(datetime.fromisoformat(stamp), contact_id)


@dataclass(frozen=True)
class Cursor:
    """The watermark and the digest of the overlap window before it."""

    mark: Mark | None = None
    window: str = ""

    def dumps(self) -> str:
        if self.mark is None:
            return ""
        return json.dumps({"mark": self.mark.text(), "window": self.window})

    @classmethod
    def loads(cls, text: str | None) -> Cursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(Mark.parse(data["mark"]), str(data.get("window", "")))


@dataclass(frozen=True)
class Span:
    """The contacts a run decides: changed after `after` (None: from the start), up to `upto`."""

    after: Mark | None
    upto: Mark
    late: bool  # the span reaches back over the window: something committed late there

    def run_key(self, audience: str) -> str:
        late = f":late-{self.after.text() if self.after else 'start'}" if self.late else ""
        return f"{audience}:{self.upto.text()}{late}"


def window_start(mark: Mark, overlap: timedelta) -> datetime:
    """Where the overlap window before `mark` begins."""
    return mark.updated_at - overlap


def digest(window: Sequence[Mark]) -> str:
    """A short fingerprint of the (id, `updated_at`) pairs in a window."""
    text = "\n".join(m.text() for m in sorted(window))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def next_span(
    cursor: Cursor, fresh: Sequence[Mark], window: Sequence[Mark], overlap: timedelta
) -> Span | None:
    """What the tick requests: the `fresh` changes after the watermark (oldest first), reaching
    back over the overlap window when its digest changed (`window`: the marks in it now).
    None: nothing changed."""
    late = cursor.mark is not None and digest(window) != cursor.window
    if not fresh and not late:
        return None
    upto = fresh[-1] if fresh else cursor.mark
    assert upto is not None
    if late:
        assert cursor.mark is not None
        start = window_start(cursor.mark, overlap)
        return Span(after=Mark(start, ""), upto=upto, late=True)
    return Span(after=cursor.mark, upto=upto, late=False)


def about_contacts(diff: pd.DataFrame, ids: Collection[str], keys: Collection[str]) -> pd.Series:
    """Rows of `diff` about these CRM contacts: theirs, at these addresses (where they are, or
    were when the diff's CRM read saw them), or of members they own in the ledger. A run decided
    on an earlier read leaves them to the change sensor's runs, which decide them on the CRM as
    it is now."""
    wanted, at = set(map(str, ids)), set(keys)
    crm = diff["crm_id"].map(lambda v: pd.notna(v) and str(v) in wanted)
    old = diff["old_email"].map(lambda v: raw_match_key(v) in at)
    owned = diff["ledger_before"].map(lambda r: r is not None and str(r.owner) in wanted)
    return crm | diff["match_key"].isin(at) | old | owned
