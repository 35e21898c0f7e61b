"""The exceptions Wuma raises, in one place.

Authentication failures are opaque on purpose (like Fernet's ``InvalidToken``): a code
that is forged, mistyped or malformed is simply *invalid*, with no hint about why.
"""

__all__ = ["WumaError", "NotFound", "Conflict", "TakenByRevoked", "DataFolderError", "InvalidCode", "Unauthorized",
           "Banned", "RateLimited", "BindError"]


class WumaError(Exception):
    """Base class: every message is meant to be shown to a person as it is."""


class NotFound(WumaError, LookupError):
    """A batch, line, account, ... that does not exist."""


class Conflict(WumaError):
    """The request is well formed but clashes with the current state."""


class TakenByRevoked(Conflict):
    """An add under an id (an account's, an admin token's name) that one revoked holds: ids
    are never reused, and a revoked one gets no new token, so only another id will do.
    (Apart from the plain Conflict of an id held by an active one, which a new token for it
    may be the way out of.)"""


class BindError(WumaError, ValueError):
    """An address a server cannot listen on; the message says what to give instead."""


class DataFolderError(WumaError):
    """The data folder is missing, incomplete or unreadable."""


class InvalidCode(WumaError):
    """Not a genuine code. Deliberately carries no reason."""

    def __init__(self) -> None:
        super().__init__("invalid code")


class Unauthorized(WumaError):
    """Missing or bad credentials. Deliberately says nothing more."""


class Banned(WumaError):
    """The client is banned (enumeration); carries when the ban ends."""

    def __init__(self, subject: str, until: float) -> None:
        super().__init__("this client is blocked for too many invalid codes")
        self.subject = subject
        self.until = until


class RateLimited(WumaError):
    """Too many requests from one client in the current window."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many requests; slow down")
        self.retry_after = retry_after
