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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from email_validator import EmailNotValidError, EmailSyntaxError, validate_email
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
_BATCH = 100_000  # addresses checked on the fast path at once
# first and last character printable ASCII other than space: `str.strip` keeps it whole
_TRIMMED = r"(?s)^[!-~](.*[!-~])?$"
_ROLE = "^(?i:" + "|".join(CASE_INSENSITIVE_MAILBOX_NAMES) + ")@"


def clean_raw_email(value: Any) -> str | None:
    """Trim and NFC-normalise a raw CRM email value; None when there is nothing to check."""
    if is_missing(value):
        return None
    text = unicodedata.normalize("NFC", str(value).strip())
    return text or None


def clean_raw_emails(values: np.ndarray) -> np.ndarray:
    """`clean_raw_email` of each value, as an object array. ASCII text without outer white
    space is kept as it is (the same object); other values are cleaned once per distinct value.

    Text is told apart as Python compares it (pandas' factorize takes two strings that differ
    only after a NUL character for one); other values as factorize tells them apart (1, 1.0 and
    True are one value).
    """
    out = np.full(len(values), None, dtype=object)
    kept = np.zeros(len(values), dtype=bool)
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "string":
        text = pa.array(values, type=pa.large_string(), from_pandas=True)
        trimmed = pc.and_(pc.string_is_ascii(text), pc.match_substring_regex(text, _TRIMMED))
        kept = trimmed.fill_null(False).to_numpy(zero_copy_only=False)
        out[kept] = values[kept]
    rest = np.flatnonzero(~kept)
    is_text = np.fromiter((type(v) is str for v in values[rest]), dtype=bool, count=len(rest))
    cleaned: dict[str, str | None] = {}
    out[rest[is_text]] = [
        cleaned[v] if v in cleaned else cleaned.setdefault(v, clean_raw_email(v))
        for v in values[rest[is_text]]
    ]
    other = rest[~is_text]
    if len(other):  # NULL, numbers, bytes, …: once per distinct value
        codes, uniques = pd.factorize(values[other], use_na_sentinel=True)
        mapped = np.empty(len(uniques) + 1, dtype=object)
        mapped[:-1] = [clean_raw_email(u) for u in uniques]
        mapped[-1] = None  # code -1: NULL
        out[other] = mapped[codes]
    return out


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
    """Memoise email-validator's domain check while a batch is checked, its verdict on invalid
    domains too.

    The domain check is a pure function of the domain and two thirds of the cost of an address;
    CRM addresses share few domains. `validate_email` itself still validates every address.
    """
    module = importlib.import_module("email_validator.validate_email")
    original = module.validate_email_domain_name

    @functools.lru_cache(maxsize=100_000)
    def verdict(*args: Any, **kwargs: Any) -> tuple[Any, str | None]:
        try:
            return original(*args, **kwargs), None
        except EmailSyntaxError as exc:  # the only error it raises
            return None, str(exc)

    def memoised(*args: Any, **kwargs: Any) -> Any:
        checked, error = verdict(*args, **kwargs)
        if error is not None:
            raise EmailSyntaxError(error)  # a new exception each time: no shared traceback
        return checked

    module.validate_email_domain_name = memoised
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
    mask, sent, keys = _plain_arrays(addresses)
    return mask, sent.to_pylist(), keys.to_pylist()


def _plain_arrays(addresses: pa.Array) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """`_plain` with the ASCII forms and keys of the chosen addresses as Arrow arrays."""
    shaped = pc.and_(
        pc.match_substring_regex(addresses, _PLAIN),
        pc.less_equal(pc.binary_length(addresses), EMAIL_MAX_LENGTH),
    )
    shaped = shaped.fill_null(False)
    candidates = addresses.filter(shaped)
    parts = pc.split_pattern(candidates, "@", max_splits=1)  # the shape has exactly one @
    local = pc.list_element(parts, 0)
    domain = pc.utf8_lower(pc.list_element(parts, 1))
    plain = pc.and_(
        pc.less_equal(pc.binary_length(local), LOCAL_PART_MAX_LENGTH),
        pc.invert(pc.match_substring(domain, "--")),
    )
    plain = pc.and_(plain, pc.invert(pc.match_substring_regex(candidates, _ROLE)))
    special = [d for d in pc.unique(domain).to_pylist() if _special_use(d)]
    if special:
        plain = pc.and_(plain, pc.invert(pc.is_in(domain, pa.array(special))))
    mask = shaped.to_numpy(zero_copy_only=False)
    mask[mask] = plain.to_numpy(zero_copy_only=False)
    at = pa.scalar("@", pa.large_string())
    sent = pc.binary_join_element_wise(local.filter(plain), domain.filter(plain), at)
    keys = pc.utf8_lower(candidates.filter(plain))
    return mask, sent, keys


def check_emails(addresses: Sequence[str]) -> list[CheckResult]:
    """Check many cleaned addresses: plain ones at once, the rest one by one."""
    if not len(addresses):
        return []
    sent, keys, reasons = check_addresses(addresses)
    return list(zip(sent.tolist(), keys.tolist(), reasons.tolist(), strict=True))


def check_addresses(addresses: Sequence[str] | np.ndarray) -> tuple[np.ndarray, ...]:
    """`check_emails` as three object arrays: ASCII forms, dedupe keys, reasons. Addresses may
    repeat: the library checks each address off the fast path once (a verdict per distinct
    address), so the caller need not find the distinct ones first.

    A result equal to the address (or the key equal to the ASCII form) is the same object,
    not a copy: most CRM addresses are lower-case ASCII already.
    """
    given = np.empty(len(addresses), dtype=object)
    given[:] = addresses
    sent = np.full(len(given), None, dtype=object)
    keys = np.full(len(given), None, dtype=object)
    reasons = np.full(len(given), None, dtype=object)
    if not len(given):
        return sent, keys, reasons
    arrow = pa.array(given, type=pa.large_string())
    mask = np.zeros(len(given), dtype=bool)
    for start in range(0, len(given), _BATCH):  # Arrow's intermediate arrays stay small
        batch = arrow.slice(start, _BATCH)
        mask[start : start + _BATCH], plain_sent, plain_keys = _plain_arrays(batch)
        chosen = start + np.flatnonzero(mask[start : start + _BATCH])
        plain = batch.filter(pa.array(mask[start : start + _BATCH]))
        sent[chosen] = _same_or_new(given[chosen], plain, plain_sent)
        keys[chosen] = _same_or_new(sent[chosen], plain_sent, plain_keys)
        del batch, plain, plain_sent, plain_keys
    verdicts: dict[str, CheckResult] = {}
    with _domain_checks_memoised():
        for position in np.flatnonzero(~mask).tolist():
            address = given[position]
            if address not in verdicts:
                verdicts[address] = check_email(address)
            sent[position], keys[position], reasons[position] = verdicts[address]
    return sent, keys, reasons


def _same_or_new(objects: np.ndarray, texts: pa.Array, results: pa.Array) -> np.ndarray:
    """`results` as Python strings, taking the string of `objects` where `texts` equals it."""
    out = objects.copy()
    differs = pc.invert(pc.equal(texts, results))
    out[differs.to_numpy(zero_copy_only=False)] = results.filter(differs).to_numpy(
        zero_copy_only=False
    )
    return out


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
        return address if text == address and type(address) is str else text  # shared, not copied
    local, at, domain = text.rpartition("@")
    try:
        return f"{local}{at}{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return text
