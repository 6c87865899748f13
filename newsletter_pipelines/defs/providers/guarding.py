"""The push's mass guards with the limits of the settings and a run's releases."""

from typing import Any

import pandas as pd

from newsletter_pipelines.settings import Settings
from newsletter_pipelines.sync.guards import MassLimits, MassVerdict, push_verdicts

_SETTINGS = Settings()


def push_guards(
    diff: pd.DataFrame, config: dict[str, Any], active: int | None = None
) -> dict[str, MassVerdict]:
    """`removal_guard` and `rename_guard` of `diff`; `config` may release them
    (`allow_mass_removal`, `allow_mass_rename`); `active`: the audience's active members when
    the diff covers only some."""
    limits = MassLimits(
        _SETTINGS.removal_max_share,
        _SETTINGS.removal_min_count,
        _SETTINGS.rename_max_share,
        _SETTINGS.rename_min_count,
    )
    return push_verdicts(
        diff,
        limits,
        bool(config.get("allow_mass_removal")),
        bool(config.get("allow_mass_rename")),
        active,
    )
