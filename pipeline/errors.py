"""The one base class of every error a user can fix.

A :class:`UserError` is a mistake in what the user gave (``params.yaml``, a command-line
override, a data file, a checkpoint, a store URL, a port): its message says what is wrong and
what to do, and the entry points (:func:`pipeline.stages.common.main_guard`, ``pipeline.serve``)
print it as one line and exit 2, without a traceback. Anything else is a bug and keeps its
traceback. Each area defines its subclasses (``ParamError``, ``CheckpointError``, ...) beside
the code that raises them.

What a message shows of a store URL goes through :func:`masked`: a PostgreSQL URL carries its
password (``postgresql://user:secret@host/db`` or ``?password=secret``).
"""

from __future__ import annotations

import re

# The password of "scheme://user:password@": everything between the user's ":" and the last "@"
# (a password with an unescaped "@" or "/" is hidden whole; at worst a host is hidden too).
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*):.*@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&#]*", re.IGNORECASE)


class UserError(Exception):
    """An error the user can fix; the message names the input and the fix."""


def masked(url: str) -> str:
    """``url`` as messages, logs, MLflow params and printed commands may show it: its password,
    if any, replaced by ``***`` (``postgresql://user:secret@host/db`` ->
    ``postgresql://user:***@host/db``); a URL without one (SQLite, a journal file) as it is."""
    return _QUERY_PASSWORD.sub(r"\g<head>***", _USERINFO.sub(r"\g<head>:***@", url, count=1))
