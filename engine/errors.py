"""The exceptions Wuma raises, in one place.

Authentication failures are opaque on purpose (like Fernet's ``InvalidToken``): a code
that is forged, mistyped or malformed is simply *invalid*, with no hint about why.
"""

__all__ = ["WumaError", "NotFound", "Conflict", "DataFolderError", "InvalidCode"]


class WumaError(Exception):
    """Base class: every message is meant to be shown to a person as it is."""


class NotFound(WumaError, LookupError):
    """A batch, line, account, ... that does not exist."""


class Conflict(WumaError):
    """The request is well formed but clashes with the current state."""


class DataFolderError(WumaError):
    """The data folder is missing, incomplete or unreadable."""


class InvalidCode(WumaError):
    """Not a genuine code. Deliberately carries no reason."""

    def __init__(self) -> None:
        super().__init__("invalid code")
