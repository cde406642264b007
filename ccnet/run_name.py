"""The default run directory's suffix: ``configs/train.yaml`` writes
``work_dirs/${model.name}_${dataset.name}${ccnet_run_suffix:}``, the resolver adding Hydra's
``job.override_dirname`` (sorted ``key=value`` pairs, minus ``exclude_keys``). So
``python tools/train.py model.ccl=true`` gets its own folder, and the same command with ``resume=auto``
finds it again.
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

MAX_SUFFIX = 100  # characters; longer override lists are cut and end in a hash of the whole


def run_suffix() -> str:
    """``"+key=value,key=value"`` of this Hydra job's overrides, made safe as one path component;
    ``""`` without overrides or outside a Hydra run (compose API, multirun sweep directory)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = str(HydraConfig.get().job.override_dirname)
    except Exception:  # no Hydra run, or the value is not set yet (the sweep directory of -m)
        return ""
    if not overrides:
        return ""
    safe = re.sub(r"[^A-Za-z0-9._,=+-]", "-", overrides)
    if len(safe) > MAX_SUFFIX:
        digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
        safe = f"{safe[: MAX_SUFFIX - 11]}-{digest}"
    return "+" + safe


def register_resolvers() -> None:
    """Make ``${ccnet_run_suffix:}`` available to OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("ccnet_run_suffix"):
        OmegaConf.register_new_resolver("ccnet_run_suffix", run_suffix)
