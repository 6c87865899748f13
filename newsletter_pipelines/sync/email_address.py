"""Email syntax checks with the email-validator library (no DNS), in parallel for large inputs.

Providers refuse quoted local parts, IP-literal domains, domains without a dot and non-ASCII
local parts, so those are invalid here too. IDN domains are valid and sent in ASCII (punycode).
"""

from __future__ import annotations

import functools
import importlib
import os
import unicodedata
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any

from email_validator import EmailNotValidError, validate_email

from newsletter_pipelines.values import is_missing

# (address to send, dedupe key, None) for a valid address, (None, None, reason) otherwise.
CheckResult = tuple[str | None, str | None, str | None]

PARALLEL_THRESHOLD = 100_000
_CHUNK = 50_000


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


def _check_chunk(addresses: Sequence[str]) -> list[CheckResult]:
    with _domain_checks_memoised():
        return [check_email(a) for a in addresses]


def check_emails(
    addresses: Sequence[str], workers: int | None = None, threshold: int = PARALLEL_THRESHOLD
) -> list[CheckResult]:
    """Check many distinct addresses, on several processes when there are at least `threshold`."""
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    if workers <= 1 or len(addresses) < threshold:
        return _check_chunk(addresses)
    chunks = [addresses[i : i + _CHUNK] for i in range(0, len(addresses), _CHUNK)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return [result for chunk in pool.map(_check_chunk, chunks) for result in chunk]


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
