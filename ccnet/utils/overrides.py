"""Command-line paths for the Hydra tools, accepted as they are.

Hydra's override grammar reads ``checkpoint=a=b,c/last.pth`` as a malformed override (``=``) or a
sweep (``,``), and spaces, brackets and quotes need quoting. A path a tool prints (a run folder named
after its overrides, ``work_dirs/ccnet_tiny_synthetic+train.max_iters=60,...``) must work when pasted
into another tool, so the values of the path settings are quoted for Hydra before it parses them.
"""

from __future__ import annotations

import re
from typing import Iterable, List

# Settings whose value is a path (or a glob): quoted for Hydra when it would not read them as the same string.
PATH_KEYS = ("checkpoint", "input", "output_dir", "work_dir", "resume", "load_from", "dataset.root", "model.weights")


def hydra_quote(value: str) -> str:
    """``value`` as a single-quoted Hydra string: quotes and the backslashes before them (or at the
    end) escaped, ``${`` escaped so that OmegaConf does not read it as an interpolation."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return "'" + escaped.replace("${", "\\${") + "'"


def _reads_as_itself(key: str, value: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_overrides([f"{key}={value}"])[0]
    except Exception:  # the grammar refuses it
        return False
    return (
        not override.is_sweep_override()
        and not isinstance(override.value(), (list, dict))
        and (not isinstance(override.value(), str) or override.value() == value)
    )


def quote_path_overrides(argv: Iterable[str], keys: Iterable[str] = PATH_KEYS) -> List[str]:
    """``argv`` with each ``KEY=VALUE`` of a path setting quoted for Hydra when Hydra would not read
    ``VALUE`` as exactly that string; values already quoted, numbers and booleans stay as they are."""
    keys = tuple(keys)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+~")
        if sep and bare in keys and value and value[0] not in "'\"" and not _reads_as_itself(bare, value):
            arg = f"{key}={hydra_quote(value)}"
        out.append(arg)
    return out
