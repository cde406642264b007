"""Reading plain config mappings: dotted keys and values with defaults."""

from __future__ import annotations

from typing import Any, Dict, Mapping


def flatten_config(value: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"train.lr": 0.01, ...}``: a nested mapping as dotted keys (the ones the command line uses)."""
    if isinstance(value, Mapping):
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def value_or(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    """``cfg[key]``, or ``default`` when the key is absent or null."""
    value = cfg.get(key)
    return default if value is None else value
