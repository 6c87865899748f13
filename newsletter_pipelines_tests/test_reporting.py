"""The diff's explanation table counts each contact in the rows it belongs to."""

from __future__ import annotations

import pandas as pd

from newsletter_pipelines.reporting import explain_diff
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
