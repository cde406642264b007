"""Command-line paths for the Hydra tools, accepted as they are.

Hydra's override grammar reads ``checkpoint=a=b,c/last.pth`` as a malformed override (``=``) or a
sweep (``,``), and spaces, brackets and quotes need quoting. A path a tool prints (a run folder named
after its overrides, ``work_dirs/ccnet_tiny_synthetic+train.max_iters=60,...``) must work when pasted
into another tool, so the values of the path settings are quoted for Hydra before it parses them.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, List, Optional, Sequence

from ccnet.utils.config import flatten_config
from ccnet.utils.paths import CONFIGS_DIR

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


# Sections whose keys a tool may append to with +KEY=VALUE: a key that some config of the group defines
# (eval/infer merge model and dataset keys over a checkpoint's). Anywhere else + adds a key nothing reads.
APPENDABLE_GROUPS = ("model", "dataset")


def known_keys(config_name: str, argv: Sequence[str] = ()) -> List[str]:
    """Every dotted key of ``configs/<config_name>.yaml`` composed with the config groups chosen in
    ``argv`` (``model=``, ``dataset=``, ``experiment=``), plus the keys any config of the groups in
    :data:`APPENDABLE_GROUPS` defines."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    groups = [a for a in argv if re.fullmatch(r"(model|dataset|experiment)=[\w.-]+", a)]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
    except Exception:  # a wrong group: Hydra's own message says so
        cfg = OmegaConf.create({})
    leaves = set(flatten_config(OmegaConf.to_container(cfg, resolve=False)))
    for group in APPENDABLE_GROUPS:
        for path in (CONFIGS_DIR / group).glob("*.yaml"):
            leaves |= set(flatten_config(OmegaConf.to_container(OmegaConf.load(path), resolve=False), group))
    # every leaf and the sections above it (train.ccl, train)
    keys = {".".join(k.split(".")[:n]) for k in leaves for n in range(1, k.count(".") + 2)}
    return sorted(k for k in keys if not k.startswith(("hydra", "defaults")))


def unknown_key_message(
    key: str, config_name: str, argv: Sequence[str], appended: bool = False, valid: Optional[Sequence[str]] = None
) -> str:
    """One line for a setting that ``configs/<config_name>.yaml`` does not have, with the closest keys
    (among ``valid``, default :func:`known_keys`)."""
    valid = known_keys(config_name, argv) if valid is None else valid
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.7)
    hint = f"did you mean {' or '.join(close)}?" if close else f"the settings are listed in configs/{config_name}.yaml"
    added = " (+ adds a key that nothing reads)" if appended else ""
    return f"{key} is not a setting of {config_name}{added}: {hint}"


def refuse_unknown_appends(argv: Sequence[str], config_name: str) -> Optional[str]:
    """The message for the first ``+KEY=VALUE`` of ``argv`` that adds a key no config knows (None: all
    fine); ``++`` (add or override) is Hydra's explicit escape hatch and passes."""
    appends = [a[1:].partition("=")[0] for a in argv if a.startswith("+") and not a.startswith("++") and "=" in a]
    if not appends:
        return None
    valid = known_keys(config_name, argv)
    for key in appends:
        if key not in valid:
            return unknown_key_message(key, config_name, argv, appended=True, valid=valid)
    return None
