"""Errors meant for people: one line that names the file, field or value and says how to fix it."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, unknown model).

    The CLI prints ``str(error)`` as one line and exits with code 2, without a traceback.
    """
