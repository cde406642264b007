"""Errors caused by what the user gave (a setting, a file, the environment) and how the tools report them.

A :class:`UserError`'s message is the whole report: what was wrong, where (file or key) and the fix.
The entry points in ``tools/`` run under :func:`exit_on_user_error`, which prints that message alone
and exits with status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Type

EXIT_USER_ERROR = 2  # the status of every user mistake (argparse uses 2 for its own usage errors too)

# errno values of a write refused by the environment: a read-only or full disk, missing permissions, a
# folder asked for where a file is
ENVIRONMENT_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    getattr(errno, "EDQUOT", errno.ENOSPC),
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}


def refused_write(exc: BaseException) -> bool:
    """Whether ``exc`` is the file system refusing a named path (read-only, full, no permission, ...)."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS and bool(exc.filename)


class UserError(Exception):
    """An error in the user's input whose message is the whole report (no traceback needed)."""


class ConfigError(UserError, ValueError):
    """A setting has the wrong type or an out-of-range value (the message names the key)."""


def user_message(exc: BaseException) -> str:
    """The message of ``exc`` as a user should read it.

    A DataLoader worker's exception reaches the main process re-created with the worker's whole
    traceback as its message; only the original message is kept (with the worker named).
    """
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        where = re.match(r"Caught \S+ (in [^.\n]+)", text)
        lines = text.rstrip().splitlines()
        name = type(exc).__name__
        # The traceback's last line(s): "<module>.<Name>: <message>" (the message may span lines).
        start = max((i for i, line in enumerate(lines) if re.match(rf"^[\w.]*{name}: ", line)), default=None)
        if start is not None:
            text = "\n".join(lines[start:]).split(": ", 1)[1]
            if where:
                text += f" ({where.group(1)})"
    if isinstance(exc, OSError) and refused_write(exc):
        reasons = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system"}
        reason = reasons.get(exc.errno or 0, (exc.strerror or "permission denied").lower())
        text = (
            f"cannot write {exc.filename}: {reason}. Free space, fix the folder's permissions, or choose another "
            "output folder (work_dir=... / output_dir=...)"
        )
    return text


def _missing_value_message(exc: BaseException) -> str:
    key = getattr(exc, "full_key", "") or "?"
    return f"the setting {key} is required but not set: add {key}=... to the command line"


@contextlib.contextmanager
def exit_on_user_error(log: logging.Logger, *also: Type[BaseException]) -> Iterator[None]:
    """Turn a :class:`UserError` (or one of the exception types ``also``, for library code whose
    standard exceptions carry complete messages), a required setting left unset (OmegaConf's
    ``MissingMandatoryValue``) or a write refused by the file system into one logged error line and
    exit status :data:`EXIT_USER_ERROR`."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        yield
    except MissingMandatoryValue as exc:
        log.error("%s", _missing_value_message(exc))
        raise SystemExit(EXIT_USER_ERROR) from None
    except (UserError, *also) as exc:  # type: ignore[misc]  # mypy cannot read a starred tuple of types
        _detach_logs_under(getattr(exc, "foreign_folder", None))
        log.error("%s", user_message(exc))
        raise SystemExit(EXIT_USER_ERROR) from None
    except OSError as exc:
        if not refused_write(exc):
            raise
        log.error("%s", user_message(exc))
        raise SystemExit(EXIT_USER_ERROR) from None


def _detach_logs_under(folder: object) -> None:
    """Stop logging into files under ``folder`` (another run's folder: its log must not get our lines)."""
    if folder is None:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        filename = getattr(handler, "baseFilename", None)
        if filename and Path(filename).resolve().parent == Path(str(folder)).resolve():
            root.removeHandler(handler)
            handler.close()


def run_hydra_main(main: Callable[[], Any], config_name: str) -> None:
    """Call a ``@hydra.main`` function (of ``configs/<config_name>.yaml``) so that the mistakes Hydra
    itself finds (an unknown key or group, a malformed override, a run folder it cannot create) end
    like the tool's own checks: one message, exit status :data:`EXIT_USER_ERROR`; a misspelt key gets
    the closest valid ones, and ``+KEY=VALUE`` for a key no config has is refused (it would be read by
    nothing). Path settings are quoted for Hydra first (:func:`ccnet.utils.overrides.quote_path_overrides`).
    ``HYDRA_FULL_ERROR=1`` still shows everything."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    from ccnet.utils.overrides import quote_path_overrides, refuse_unknown_appends, unknown_key_message

    sys.argv[1:] = quote_path_overrides(sys.argv[1:])  # a printed path works when pasted: checkpoint=PATH
    refused = refuse_unknown_appends(sys.argv[1:], config_name)
    if refused:
        sys.stderr.write(refused + "\n")
        raise SystemExit(EXIT_USER_ERROR)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing a trimmed traceback
    try:
        main()
    except CompactHydraException as exc:
        unknown = re.match(r"Could not override '([^']+)'", str(exc))
        if unknown:
            lines = [unknown_key_message(unknown.group(1), config_name, sys.argv[1:])]
        else:
            cause = exc.__cause__
            lines = [str(exc), *([str(cause)] if isinstance(cause, OmegaConfBaseException) else [])]
        sys.stderr.write("\n".join(lines) + "\n")
        raise SystemExit(EXIT_USER_ERROR) from None
    except OSError as exc:
        if not refused_write(exc):
            raise
        sys.stderr.write(user_message(exc) + "\n")
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
