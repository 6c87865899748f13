"""Errors raised by CRM access."""


class CrmError(RuntimeError):
    """The CRM cannot be read or written as configured; the message says why."""
