"""Strict renaming of a foreign state dict onto one of our modules (a whole model, or a backbone).

A mapping is a list of :class:`Rule` s (source-key regex -> target-key template, optional value
transform) plus patterns of source keys deliberately dropped. :func:`remap_state_dict` never returns a
partial result: every source key consumed, every target key filled, every shape matching, else
:class:`ConversionError` with a report. The one tolerated gap is ``num_batches_tracked`` (InPlace-ABN, the
official release, has none; it matters only with ``momentum=None``): set to 0 and reported "defaulted".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ccnet.errors import UserError

Transform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Rule:
    """Rename source keys that fully match ``pattern`` to ``re.Match.expand(template)``.

    Args:
        pattern: regular expression matched against the whole source key.
        template: target key, may use the pattern's groups (``\\1``, ``\\g<name>``).
        transform: applied to the value after the shape check of ``reshape``.
        reshape: accept another shape with the same number of elements (mmcv's ``Scale`` stores γ 0-d, ours (1,)).
        note: what ``transform`` does, for the report (keys sharing a note are counted together).
    """

    pattern: str
    template: str
    transform: Optional[Transform] = None
    reshape: bool = False
    note: Optional[str] = None

    def match(self, key: str) -> Optional[str]:
        m = re.fullmatch(self.pattern, key)
        return m.expand(self.template) if m else None


@dataclass
class ConversionReport:
    """What a conversion did with every key; :attr:`ok` when nothing is left over or missing."""

    mapped: Dict[str, str] = field(default_factory=dict)  # source key -> target key
    dropped: List[str] = field(default_factory=list)  # source keys ignored on purpose
    unconsumed: List[str] = field(default_factory=list)  # source keys no rule maps onto the model
    missing: List[str] = field(default_factory=list)  # target keys nothing filled
    mismatched: List[Tuple[str, str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    defaulted: List[str] = field(default_factory=list)  # target num_batches_tracked set to 0
    transformed: Dict[str, List[str]] = field(default_factory=dict)  # rule note -> source keys it changed

    @property
    def ok(self) -> bool:
        return not (self.unconsumed or self.missing or self.mismatched)

    def format(self, limit: int = 20) -> str:
        """Human-readable summary; lists at most ``limit`` keys per category."""

        def listing(title: str, items: Sequence[str]) -> List[str]:
            if not items:
                return []
            more = f" (first {limit})" if len(items) > limit else ""
            return [f"{title}: {len(items)}{more}"] + [f"  {item}" for item in items[:limit]]

        lines = [
            f"mapped {len(self.mapped)} keys, dropped {len(self.dropped)}, "
            f"defaulted {len(self.defaulted)} num_batches_tracked buffers"
        ]
        lines += [f"transformed {len(keys)} values: {note}" for note, keys in self.transformed.items()]
        lines += listing("source keys not consumed", self.unconsumed)
        lines += listing("target keys not filled", self.missing)
        lines += listing(
            "shape mismatches (source -> target)",
            [f"{s} {tuple(a)} -> {t} {tuple(b)}" for s, t, a, b in self.mismatched],
        )
        lines += listing("dropped source keys", self.dropped)
        return "\n".join(lines)


class ConversionError(UserError, ValueError):
    """The source checkpoint does not map exactly onto the target model (the user's file is not in
    the layout asked for); carries the report when the key mapping was attempted."""

    def __init__(self, message: str, report: Optional[ConversionReport] = None) -> None:
        super().__init__(message if report is None else f"{message}\n{report.format()}")
        self.report = report


def strip_prefix(state: Mapping[str, Tensor], prefix: str = "module.") -> Dict[str, Tensor]:
    """Remove ``prefix`` (repeatedly, e.g. ``module.module.``) when every key carries it, as
    ``DataParallel``/``DistributedDataParallel`` checkpoints do."""
    out = dict(state)
    while out and all(k.startswith(prefix) for k in out):
        out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def remap_state_dict(
    source: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    rules: Sequence[Rule],
    drop: Sequence[str] = (),
    strict: bool = True,
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Rename ``source`` onto the keys of ``target`` (a model's ``state_dict()``), strictly.

    Each source key is matched against ``drop`` (full-match regexes) and then against ``rules`` in
    order; the first matching rule names its target. Values are cast to the target's dtype.

    Args:
        source: the foreign state dict (prefixes already stripped).
        target: the target model's state dict; only its keys, shapes and dtypes are used.
        rules: renaming rules.
        drop: patterns of source keys that are intentionally discarded.
        strict: False returns the part that maps (check ``report.ok``) instead of raising on
            unconsumed, missing or mis-shaped keys.

    Returns:
        ``(state dict with exactly target's keys, report)``; with ``strict=False`` a subset of them.

    Raises:
        ConversionError: a source key is not consumed, a target key is not filled, two source keys
            map to the same target, or a shape differs.
    """
    report = ConversionReport()
    out: Dict[str, Tensor] = {}
    for key, value in source.items():
        if any(re.fullmatch(p, key) for p in drop):
            report.dropped.append(key)
            continue
        rule, name = next(((r, n) for r in rules if (n := r.match(key)) is not None), (None, None))
        if rule is None or name is None:
            report.unconsumed.append(key)
            continue
        if name not in target:
            report.unconsumed.append(f"{key} (-> {name}, which the model lacks)")
            continue
        if not isinstance(value, Tensor):
            report.unconsumed.append(f"{key} (not a tensor: {type(value).__name__})")
            continue
        if name in out:
            inverse = {t: s for s, t in report.mapped.items()}
            raise ConversionError(f"source keys {inverse[name]!r} and {key!r} both map to {name!r}", report)
        expected = target[name]
        if value.shape != expected.shape:
            if rule.reshape and value.numel() == expected.numel():
                value = value.reshape(expected.shape)
            else:
                report.mismatched.append((key, name, tuple(value.shape), tuple(expected.shape)))
                continue
        if rule.transform is not None:
            value = rule.transform(value)
            if rule.note:
                report.transformed.setdefault(rule.note, []).append(key)
        out[name] = value.detach().to(dtype=expected.dtype)
        report.mapped[key] = name
    mismatched_targets = {t for _, t, _, _ in report.mismatched}
    for name, expected in target.items():
        if name in out or name in mismatched_targets:
            continue
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros_like(expected)
            report.defaulted.append(name)
        else:
            report.missing.append(name)
    if strict and not report.ok:
        raise ConversionError("the checkpoint does not match the target model", report)
    return out, report


def num_blocks(state: Mapping[str, Tensor], stage: str) -> int:
    """Number of residual blocks under ``stage`` (e.g. ``"backbone.layer3"``): 6 for ResNet-50,
    23 for ResNet-101."""
    pattern = re.compile(re.escape(stage) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0
