"""Blocking checks of `eligible_subscribers`, emitted with its materialization."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from newsletter_pipelines.sync.email_address import check_emails
from newsletter_pipelines.sync.guards import DropVerdict, check_count_drop

if TYPE_CHECKING:
    from newsletter_pipelines.defs.crm.assets import EligibilityConfig

ASSET = "eligible_subscribers"
CHECK_SPECS = [
    dg.AssetCheckSpec(
        "unique_email_keys",
        asset=ASSET,
        blocking=True,
        description="No two eligible subscribers share an email key.",
    ),
    dg.AssetCheckSpec(
        "valid_emails",
        asset=ASSET,
        blocking=True,
        description="Every eligible email re-validates to itself with email-validator.",
    ),
    dg.AssetCheckSpec(
        "eligible_count_drop",
        asset=ASSET,
        blocking=True,
        description="The eligible count did not drop by more than the configured share against "
        "the last accepted materialization.",
    ),
]


def count_drop_judge(
    context: dg.AssetExecutionContext, eligible: pd.DataFrame, config: EligibilityConfig
) -> Callable[[int | None], DropVerdict]:
    """The verdict on the eligible count against the stored baseline; before the state
    database held one, against the one the last materialization recorded."""

    def judge(stored: int | None) -> DropVerdict:
        previous = stored if stored is not None else _recorded_baseline(context)
        return check_count_drop(previous, len(eligible), config.max_drop_share, config.accept_drop)

    return judge


def _recorded_baseline(context: dg.AssetExecutionContext) -> int | None:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(ASSET))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("eligible_baseline")
    return int(value.value) if value is not None else None


def eligibility_check_results(
    context: dg.AssetExecutionContext, eligible: pd.DataFrame, verdict: DropVerdict
) -> list[dg.AssetCheckResult]:
    """The three check results; `verdict` is the count-drop judge's."""
    duplicated = eligible.loc[eligible["email_key"].duplicated(keep=False), "contact_id"]
    emails = list(eligible["email"])
    invalid = [e for e, (sent, _, _) in zip(emails, check_emails(emails), strict=True) if sent != e]
    results = [
        dg.AssetCheckResult(
            check_name="unique_email_keys",
            passed=duplicated.empty,
            metadata={
                "contacts_sharing_a_key": len(duplicated),
                "sample_contact_ids": str(list(duplicated.head(20))),
            },
        ),
        dg.AssetCheckResult(
            check_name="valid_emails",
            passed=not invalid,
            metadata={"invalid_count": len(invalid)},
        ),
        dg.AssetCheckResult(
            check_name="eligible_count_drop",
            passed=verdict.passed,
            description=verdict.message,
            metadata={"drop_share": verdict.drop_share, "baseline": verdict.baseline},
        ),
    ]
    if not verdict.passed:
        context.log.error(verdict.message)
    return results
