"""CRM addresses compared in SQL where SQL can, and in Python where it cannot.

SQL keys printable-ASCII addresses exactly (`sql_address_key`); an address with any other
character (`irregular`: few in practice) is read and keyed in Python.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import sqlalchemy as sa

OUTSIDE_PRINTABLE_ASCII = "[^ -~]"  # a character other than space to tilde


def address_key(email: str) -> str:
    """Addresses that differ only in case, surrounding spaces or Unicode form are the same."""
    return unicodedata.normalize("NFC", email.strip()).lower()


def printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def sql_address_key(email: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[str]:
    """`address_key` in SQL, exact for printable-ASCII addresses only: trim() strips the only
    whitespace among them (the space), NFC leaves them alone and lower() folds A-Z (under
    PostgreSQL's "C" collation whatever the database's locale; SQLite's folds ASCII only)."""
    trimmed: sa.ColumnElement[Any] = sa.func.trim(email)
    if dialect == "postgresql":
        trimmed = sa.collate(trimmed, "C")
    return sa.func.lower(trimmed)


def irregular(email: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[bool]:
    """Addresses with a character outside printable ASCII, which SQL cannot key."""
    if dialect == "sqlite":  # native GLOB; SQLite's REGEXP would call back into Python per row
        return email.op("GLOB", is_comparison=True)(f"*{OUTSIDE_PRINTABLE_ASCII}*")
    return email.regexp_match(OUTSIDE_PRINTABLE_ASCII)
