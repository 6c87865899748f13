"""The diff's explanation table counts each contact in the rows it belongs to."""

from __future__ import annotations

import pandas as pd

from newsletter_pipelines.reporting import diff_samples, explain_diff
from newsletter_pipelines_tests.test_sync_assets import table_value

# (eligible, provider status, action) per contact
CONTACTS = [
    (True, None, "create"),
    (True, None, "create"),
    (True, "subscribed", "unchanged"),
    (True, "subscribed", "update"),
    (True, "unsubscribed", "blocked_by_provider"),
    (True, "archived", "import_back"),
    (False, "subscribed", "unsubscribe"),
    (False, "subscribed", "remove"),
    (False, "subscribed", "remove"),
    (False, "subscribed", "import_back"),
    (False, "unsubscribed", "unchanged"),
]


def test_explain_diff_counts_every_row_of_the_table() -> None:
    diff = pd.DataFrame(CONTACTS, columns=["eligible", "provider_status", "action"])
    table = explain_diff(diff)
    expected = {
        "eligible in the CRM": 6,
        "… at the provider (in sync, or updated now)": 2,
        "… not at the provider yet: created now": 2,
        "… blocked by the provider (opted out there, refused, archived): never re-subscribed": 1,
        "… deleted or archived at the provider since the last sync (import back)": 1,
        "subscribed at the provider before this sync": 6,
        "… eligible in the CRM": 2,
        "… newsletter = no in the CRM: unsubscribed now": 1,
        "… private, deleted or no longer eligible: removed now": 2,
        "… signed up at the provider, not eligible in the CRM (import back)": 1,
        "subscribed at the provider after this sync (expected)": 6 + 2 - 1 - 2,
    }
    assert {label: table_value(table, label) for label in expected} == expected


def test_diff_samples_are_the_first_rows_of_each_action_in_order() -> None:
    actions = ["update", "create", "remove", "create", "update", "create", "create"]
    diff = pd.DataFrame(
        {
            "action": actions,
            "crm_id": [str(i) for i in range(len(actions))],
            "email": [f"person{i}@example.com" for i in range(len(actions))],
            "provider_status": [None, None, "subscribed", None, "subscribed", None, None],
            "detail": [f"why {i}" for i in range(len(actions))],
        }
    )
    table = diff_samples(diff, per_action=2)
    ids = [line.split("|")[2].strip() for line in table.splitlines()[2:]]
    assert ids == ["1", "3", "2", "0", "4"]  # create ×2, remove, update ×2: first rows each
    assert "person1@example.com" not in table and "why 3" in table
