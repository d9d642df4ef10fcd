"""The one base class of every error a user can fix.

A :class:`UserError` is a mistake in what the user gave (``params.yaml``, a command-line
override, a data file, a checkpoint, a store URL, a port): its message says what is wrong and
what to do, and the entry points (:func:`pipeline.stages.common.main_guard`, ``pipeline.serve``)
print it as one line and exit 2, without a traceback. Anything else is a bug and keeps its
traceback. Each area defines its subclasses (``ParamError``, ``CheckpointError``, ...) beside
the code that raises them.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; the message names the input and the fix."""
