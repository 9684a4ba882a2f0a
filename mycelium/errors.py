"""Errors a user can cause, with messages a user can act on.

    >>> raise BadInput("question is empty")
    Traceback (most recent call last):
    mycelium.errors.BadInput: question is empty

The CLI turns every `MyceliumError` into a one-line message and exit code 2;
anything else escaping is a bug in Mycelium, not in the input.
"""


class MyceliumError(Exception):
    """Base class: the message is shown to the user as it is."""


class BadInput(MyceliumError):
    """Input that cannot be used: empty question, malformed row, bad id."""


class UnknownName(MyceliumError):
    """A dataset, split, operation or preset name that is not registered."""


class MissingFile(MyceliumError):
    """A file or folder the user pointed at (or a default) does not exist."""
