"""User-facing errors.

Raise :class:`LumosError` for anything the user can fix (bad path, bad option, unreadable
file, corrupt checkpoint). The CLI prints its message as one line without a traceback.
Messages should say what is wrong and how to fix it.
"""


class LumosError(Exception):
    """An error caused by user input; its message is shown to the user as one line."""
