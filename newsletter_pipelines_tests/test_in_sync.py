"""The bulk pre-pass decides exactly what the per-contact rules decide."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from newsletter_pipelines.sync.inputs import (
    SNAPSHOT_COLUMNS,
    actual_members,
    build_diff,
    crm_exclusions,
    desired_contacts,
)
from newsletter_pipelines.sync.eligibility import ELIGIBLE_COLUMNS, EXCLUDED_COLUMNS
from newsletter_pipelines.sync.settled import match_keys
from newsletter_pipelines.sync.rules import LedgerEntry, fields_hash, fields_hashes, reconcile

STATUSES = [
    "subscribed",
    "subscribed",
    "subscribed",
    "pending",
    "unsubscribed",
    "cleaned",
    "archived",
    "transactional",
]
TAGS = [(), ("VIP",), ("Käufer", "VIP"), ("CRM",), ("Mieter",)]


def scenario(
    seed: int, system_tag: str | None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[LedgerEntry]]:
    rnd = random.Random(seed)
    eligible, members, ledger, excluded = [], [], [], []
    for i in range(300):
        email = (
            f"Person{i}@Example.de"
            if i % 7
            else f"person{i}@bücher.de".replace("bücher", "xn--bcher-kva")
        )
        tags = rnd.choice(TAGS)
        first, last, salutation = rnd.choice(["Anna", "Ben"]), "Schmidt", rnd.choice(["", "Frau"])
        kind = rnd.random()
        if kind < 0.8:
            eligible.append((i, email, email.lower(), salutation, first, last, tags, None))
        elif kind < 0.9:
            excluded.append(
                (
                    i,
                    rnd.choice(["opted_out", "private", "not_opted_in"]),
                    email,
                    email.lower(),
                    email,
                    None,
                )
            )
        if rnd.random() < 0.85:
            member_tags = set(tags) | ({system_tag} if system_tag and rnd.random() < 0.9 else set())
            if rnd.random() < 0.1:
                member_tags.add("Webinar")
            members.append(
                (
                    f"p{i}",
                    email.lower() if rnd.random() < 0.5 else email,
                    rnd.choice(STATUSES),
                    salutation,
                    first if rnd.random() < 0.9 else "Changed",
                    last,
                    tuple(sorted(member_tags)),
                    None,
                )
            )
        if rnd.random() < 0.7:
            pushed = rnd.choice(TAGS)
            ledger.append(
                LedgerEntry(
                    str(i),
                    email.lower(),
                    email,
                    f"p{i}",
                    fields_hash(email, salutation, first, last, pushed),
                    frozenset(pushed),
                    rnd.choice(["subscribed", "removed", "unsubscribed"]),
                )
            )
    return (
        pd.DataFrame(eligible, columns=list(ELIGIBLE_COLUMNS)),
        pd.DataFrame(excluded, columns=list(EXCLUDED_COLUMNS)),
        pd.DataFrame(members, columns=list(SNAPSHOT_COLUMNS)),
        ledger,
    )


def rows(frame: pd.DataFrame) -> set[tuple]:
    return {
        tuple(None if pd.isna(v) else v for v in row)
        for row in frame.itertuples(index=False, name=None)
    }


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("system_tag", ["CRM", None])
def test_bulk_and_per_contact_decisions_agree(seed: int, system_tag: str | None) -> None:
    eligible, excluded, snapshot, ledger = scenario(seed, system_tag)
    reference = reconcile(
        desired_contacts(eligible),
        actual_members(snapshot),
        ledger,
        crm_exclusions(excluded),
        system_tag,
    ).frame()
    fast = build_diff(eligible, excluded, snapshot, ledger, system_tag)
    assert (fast["action"] == "unchanged").sum() > 20  # the pre-pass did settle contacts
    assert rows(fast) == rows(reference)


def test_match_keys_column_equals_the_function() -> None:
    emails = pd.Series([" A@X.de", "info@Bücher.de", "b@y.org "])
    assert list(match_keys(emails)) == ["a@x.de", "info@xn--bcher-kva.de", "b@y.org"]


def test_column_hashes_equal_the_single_hash() -> None:
    args = (["A@x.de", "b@y.de"], ["Frau", ""], ["Anna", "Ben"], ["S", ""], [("K", "VIP"), ()])
    columns = [pd.Series(values) for values in args]
    assert fields_hashes(*columns) == [fields_hash(*row) for row in zip(*args, strict=True)]
