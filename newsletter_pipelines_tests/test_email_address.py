"""The fast path of the address check answers exactly what email-validator answers."""

from __future__ import annotations

import email_validator
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from newsletter_pipelines.crm.loader import read_csv_rows
from newsletter_pipelines.settings import PROJECT_ROOT
from newsletter_pipelines.sync.email_address import _plain, check_email, check_emails

DATA_DIR = PROJECT_ROOT / "data"

# pieces near the fast path's edges: every ASCII character class the library treats apart,
# role mailboxes (lower-cased by it), special-use and numeric top-level domains, punycode
# and `--` labels, Unicode (IDN domains, local parts), long labels for the length limits
LOCAL_PIECES = st.sampled_from(
    [
        "anna",
        "Ben",
        "x",
        "a1",
        "o'neil",
        "a+b",
        "a_b",
        "a-b",
        "a=b",
        "a!",
        "#",
        "{x}",
        "`",
        "~",
        "|",
        "$",
        "%",
        "&",
        "*",
        "/",
        "?",
        "^",
        "",
        " ",
        "ü",
        "é",
        '"q"',
        "\\",
        "(c)",
        "INFO",
        "Info",
        "postmaster",
        "abuse",
        "Sales",
        "www",
        "a" * 30,
        "B" * 64,
    ]
)
LABELS = st.sampled_from(
    [
        "example",
        "Example",
        "de",
        "com",
        "co",
        "uk",
        "1",
        "123",
        "a",
        "x-y",
        "-x",
        "x-",
        "ab--cd",
        "xn--bcher-kva",
        "xn--zz",
        "bücher",
        "ÄÖ",
        "b" * 63,
        "c" * 64,
        "local",
        "test",
        "invalid",
        "localhost",
        "onion",
        "arpa",
        "home",
        "in-addr",
        "d1",
        "_x",
        "x_y",
        "",
    ]
)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    local = ".".join(draw(st.lists(LOCAL_PIECES, min_size=1, max_size=4)))
    domain = ".".join(draw(st.lists(LABELS, min_size=1, max_size=5)))
    at = draw(st.sampled_from(["@", "@", "@", "@@", "", "@x@"]))
    return local + at + domain


ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(addresses(), ANY_TEXT.map(str.strip)), min_size=1, max_size=20))
@example(["Info@Example.DE", "a@x.test", "a@b.local", "a@1.2", "a--b@x.de", "a@b--c.de"])
@example(["x" * 64 + "@a.de", "x" * 65 + "@a.de", "a@" + ".".join(["b" * 63] * 4) + ".de"])
@example([f"{'a' * 60}@{'b' * 63}.{'c' * 63}.{'d' * n}.de" for n in range(58, 66)])  # ≈ 254
def test_check_emails_answers_what_the_library_answers(batch: list[str]) -> None:
    batch = [a for a in dict.fromkeys(batch) if a]
    assert check_emails(batch) == [check_email(a) for a in batch]


def test_the_demo_corpus_is_checked_alike_and_mostly_on_the_fast_path() -> None:
    corpus = [r["email"].strip() for r in read_csv_rows(DATA_DIR / "contacts.csv") if r["email"]]
    corpus = list(dict.fromkeys(a for a in corpus if a))
    assert check_emails(corpus) == [check_email(a) for a in corpus]
    plain, _, _ = _plain(pa.array(corpus, type=pa.large_string()))
    assert plain.mean() > 0.9, plain.mean()  # the fast path is taken, not bypassed


@pytest.mark.parametrize("domain", ["intern.corp", "corp"])
def test_a_special_use_name_a_caller_adds_is_rejected_on_the_fast_path_too(
    domain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(email_validator, "SPECIAL_USE_DOMAIN_NAMES", [domain])
    address = "anna@mail.intern.corp"
    assert check_emails([address]) == [check_email(address)]
    assert check_emails([address])[0][0] is None
