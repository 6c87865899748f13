"""Errors raised by the provider clients; messages never carry secrets."""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every provider failure that is not a per-contact outcome."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider


class ConfigurationError(ProviderError):
    """The account or the client configuration cannot serve the sync (missing field, bad key)."""


class ApiError(ProviderError):
    """A request the provider answered with an error, with the provider's own code and text."""

    def __init__(
        self, provider: str, method: str, path: str, *, status: int, code: str, message: str
    ) -> None:
        super().__init__(provider, f"{method} {path} -> {status} {code}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.detail = message


class AuthenticationError(ApiError):
    """The provider refused the API key (HTTP 401)."""


class UnavailableError(ProviderError):
    """Retries ran out on rate limits, server errors or timeouts."""


class AudienceTooLargeError(ProviderError):
    """A snapshot asked to hold at most so many members found the audience larger (its counts,
    read when it was found, had lagged): nothing past that was read."""

    def __init__(self, provider: str, total: int, most: int) -> None:
        super().__init__(provider, f"the audience holds {total} members, more than {most}")
        self.total = total
        self.most = most
