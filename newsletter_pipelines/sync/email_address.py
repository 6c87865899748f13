"""Email syntax checks with the email-validator library (no DNS), with a fast path for the
plain addresses that make up nearly every CRM.

Providers refuse quoted local parts, IP-literal domains, domains without a dot and non-ASCII
local parts, so those are invalid here too. IDN domains are valid and sent in ASCII (punycode).

The fast path (`_plain`) takes addresses of a strict ASCII shape (letters, digits, `_+-` and
single dots before the `@`; host-name labels after it, ending in an alphabetic top-level
domain; no `--`; within the length limits; no role mailbox the library lower-cases; no
special-use domain), checks them in Arrow's vectorised regex engine, and answers exactly what
the library answers for them (a property test holds it to that). Every other address goes
through the library, in this process: no worker processes, so a caller's script needs no
`if __name__ == "__main__"` guard.
"""

from __future__ import annotations

import functools
import importlib
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import email_validator
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    EMAIL_MAX_LENGTH,
    LOCAL_PART_MAX_LENGTH,
)

from newsletter_pipelines.values import is_missing

# (address to send, dedupe key, None) for a valid address, (None, None, reason) otherwise.
CheckResult = tuple[str | None, str | None, str | None]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN = rf"^[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}$"
_ROLE = "^(?i:" + "|".join(CASE_INSENSITIVE_MAILBOX_NAMES) + ")@"


def clean_raw_email(value: Any) -> str | None:
    """Trim and NFC-normalise a raw CRM email value; None when there is nothing to check."""
    if is_missing(value):
        return None
    text = unicodedata.normalize("NFC", str(value).strip())
    return text or None


def check_email(address: str) -> CheckResult:
    """Validate one cleaned address: the ASCII form to send and the lower-cased dedupe key."""
    try:
        result = validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            globally_deliverable=True,
        )
    except EmailNotValidError as exc:
        return None, None, str(exc)
    except Exception as exc:  # a validator bug on odd input must classify, never crash a run
        return None, None, f"address could not be checked ({type(exc).__name__})"
    return result.ascii_email, result.normalized.lower(), None


@contextmanager
def _domain_checks_memoised() -> Iterator[None]:
    """Memoise email-validator's domain check while a batch is checked.

    The domain check is a pure function of the domain and two thirds of the cost of an address;
    CRM addresses share few domains. `validate_email` itself still validates every address.
    """
    module = importlib.import_module("email_validator.validate_email")
    original = module.validate_email_domain_name
    module.validate_email_domain_name = functools.lru_cache(maxsize=100_000)(original)
    try:
        yield
    finally:
        module.validate_email_domain_name = original


def _special_use(domain: str) -> bool:
    """Whether the library rejects `domain` (lower-case) as special-use or reserved."""
    names = email_validator.SPECIAL_USE_DOMAIN_NAMES  # read now: callers may change the list
    return any(domain == d or domain.endswith("." + d) for d in names)


def _plain(addresses: pa.Array) -> tuple[np.ndarray, list[str], list[str]]:
    """Which addresses take the fast path, with their ASCII form and dedupe key."""
    local = pc.replace_substring_regex(addresses, "@.*$", "")
    domain = pc.utf8_lower(pc.replace_substring_regex(addresses, "^[^@]*@", ""))
    plain = pc.and_(
        pc.match_substring_regex(addresses, _PLAIN),
        pc.less_equal(pc.binary_length(addresses), EMAIL_MAX_LENGTH),
    )
    plain = pc.and_kleene(plain, pc.less_equal(pc.binary_length(local), LOCAL_PART_MAX_LENGTH))
    plain = pc.and_kleene(plain, pc.invert(pc.match_substring(domain, "--")))
    plain = pc.and_kleene(plain, pc.invert(pc.match_substring_regex(addresses, _ROLE)))
    special = [d for d in pc.unique(domain).to_pylist() if _special_use(d)]
    if special:
        plain = pc.and_kleene(plain, pc.invert(pc.is_in(domain, pa.array(special))))
    mask = plain.to_numpy(zero_copy_only=False)
    chosen = pa.array(mask)
    at = pa.scalar("@", pa.large_string())
    sent = pc.binary_join_element_wise(pc.filter(local, chosen), pc.filter(domain, chosen), at)
    keys = pc.utf8_lower(pc.filter(addresses, chosen))
    return mask, sent.to_pylist(), keys.to_pylist()


def check_emails(addresses: Sequence[str]) -> list[CheckResult]:
    """Check many distinct cleaned addresses: plain ones at once, the rest one by one."""
    results: list[CheckResult] = [(None, None, None)] * len(addresses)
    if not addresses:
        return results
    mask, sent, keys = _plain(pa.array(addresses, type=pa.large_string()))
    for position, email, key in zip(np.flatnonzero(mask).tolist(), sent, keys, strict=True):
        results[position] = (email, key, None)
    with _domain_checks_memoised():
        for position in np.flatnonzero(~mask).tolist():
            results[position] = check_email(addresses[position])
    return results


def raw_match_key(value: Any) -> str | None:
    """`match_key` of a raw value (a CRM cell, an event's field); None when it holds none."""
    email = clean_raw_email(value)
    return match_key(email) if email else None


def match_key(address: str) -> str:
    """How a provider identifies an address: trimmed, lower-cased, domain in ASCII (punycode).

    The sync sends ASCII addresses; a person may have signed up with a Unicode domain.
    """
    text = address.strip().lower()
    if text.isascii():
        return text
    local, at, domain = text.rpartition("@")
    try:
        return f"{local}{at}{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return text
