"""Tag keys per provider: a frozenset's keys are remembered, and equal those computed afresh."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from newsletter_pipelines.sync.tags import TAG_STYLES

TAGS = st.lists(st.sampled_from(["VIP", "vip", "Käufer", "a,b", "a;b", "ß", "SS"]) | st.text())


@given(st.sampled_from(sorted(TAG_STYLES)), TAGS)
def test_the_keys_of_a_frozenset_are_those_of_its_tags_one_by_one(provider: str, tags: list[str]):
    style = TAG_STYLES[provider]
    fresh = frozenset(style.key(style.form(t)) for t in tags)
    assert style.keys(tags) == fresh
    assert style.keys(frozenset(tags)) == fresh
    assert style.keys(frozenset(tags)) == fresh  # remembered: the same answer again
