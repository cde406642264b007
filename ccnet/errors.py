"""The base class of errors caused by what the user gave (a config value, a file, the environment).

Their message says everything the user needs: what was wrong, where, what was expected and how to
fix it. The entry points in ``tools/`` run under :func:`exit_on_user_error`, which prints such a
message alone, without a stack trace, and exits with status 1; any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Type


class UserError(Exception):
    """An error in the user's input whose message is the whole report (no traceback needed)."""


@contextlib.contextmanager
def exit_on_user_error(log: logging.Logger, *also: Type[Exception]) -> Iterator[None]:
    """Turn a :class:`UserError` (or one of the exception types ``also``, for library code whose
    standard exceptions carry complete messages) into one logged error line (on the console and in
    the run's log file, through Hydra's handlers; Python's last-resort handler prints it to stderr
    when logging is not configured) and exit status 1."""
    try:
        yield
    except (UserError, *also) as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
