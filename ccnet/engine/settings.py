"""The training settings' schema: each key's type and range, what resuming does when it changed, and the
check that runs before anything else. Defaults live in ``configs/train.yaml`` only; docs/training.md's
table is rendered from both (``scripts/render_settings_table.py``; docs/design.md, "One schema").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ccnet.errors import ConfigError
from ccnet.evaluation.inference import check_eval_config
from ccnet.utils.config import flatten_config

# What a resumed run does with a setting whose value differs from its checkpoint's.
APPLIED = "applied"  # to the restored optimiser and schedule (listed in a warning)
REFUSED = "refused"  # another experiment: resume stops and names the keys
IGNORED = "ignored"  # does not change what is trained (paths, workers, logging)
FROM_NOW = "from now on"  # takes effect for the remaining steps (listed in a warning)

Rule = Tuple[Callable[[Any], bool], str]  # (check, what is expected)


def _int(minimum: Optional[int] = None) -> Rule:
    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)

    return ok, "an integer" + (f" >= {minimum}" if minimum is not None else "")


def _number(low: float = 0.0, high: Optional[float] = None, low_open: bool = False, high_open: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    upper = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
    return ok, f"a finite number {'>' if low_open else '>='} {low:g}{upper}"


def _bool() -> Rule:
    return (lambda v: isinstance(v, bool)), "true or false"


def _optional(rule: Rule) -> Rule:
    check, text = rule
    return (lambda v: v is None or check(v)), f"null or {text}"


def _size() -> Rule:
    positive = _int(1)[0]

    def ok(v: Any) -> bool:
        if positive(v):
            return True
        return isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(positive(x) for x in v)

    return ok, "a positive integer or [height, width] of positive integers"


def _choice(*values: str) -> Rule:
    return (lambda v: v in values), "one of " + ", ".join(values)


def _device() -> Rule:
    return (
        lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
        "auto, cpu, cuda or cuda:N",
    )


def _weights() -> Rule:
    number = _number(0)[0]
    return (
        (
            lambda v: (
                v is None
                or (isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0 and all(number(x) for x in v))
            )
        ),
        "null or a list of finite numbers >= 0 (one per class)",
    )


def _schedule() -> Rule:
    from ccnet.engine.optim import SCHEDULES  # the registry decides the names

    return (lambda v: v in SCHEDULES), "the name of a schedule: " + ", ".join(SCHEDULES)


@dataclass(frozen=True)
class Setting:
    """One key: ``rule`` checks its value (None: checked by the code that reads it; a function returning
    the rule when a registry decides the valid values), ``resume`` is what a resumed run does when it
    changed."""

    key: str
    rule: Union[None, Rule, Callable[[], Rule]]
    resume: str

    def current_rule(self) -> Optional[Rule]:
        """The rule as of now (a registry's rule reads the registry's current names)."""
        return self.rule() if callable(self.rule) else self.rule


SETTINGS: Tuple[Setting, ...] = (
    Setting("work_dir", None, IGNORED),
    Setting(
        "resume",
        ((lambda v: v is None or isinstance(v, (bool, str))), "false, true, auto or a checkpoint path"),
        IGNORED,
    ),
    Setting("load_from", _optional(((lambda v: isinstance(v, str)), "a checkpoint path")), IGNORED),
    Setting("load_from_partial", _bool(), IGNORED),
    Setting("train.max_iters", _int(1), APPLIED),
    Setting("train.batch_size", _int(1), FROM_NOW),
    Setting("train.crop_size", _optional(_size()), FROM_NOW),
    Setting("train.lr", _number(0, low_open=True), APPLIED),
    Setting("train.momentum", _number(0, 1, high_open=True), APPLIED),
    Setting("train.weight_decay", _number(0), APPLIED),
    Setting("train.no_decay_norm_bias", _bool(), REFUSED),
    Setting("train.head_lr_mult", _number(0, low_open=True), APPLIED),
    Setting("train.lr_schedule", _schedule, APPLIED),  # its names come from the registry
    Setting("train.warmup_iters", _int(0), APPLIED),
    Setting("train.warmup_ratio", _number(0, 1), APPLIED),
    Setting("train.poly_power", _number(0), APPLIED),
    Setting("train.min_lr", _number(0), APPLIED),
    Setting("train.amp", _choice("none", "bf16", "fp16"), FROM_NOW),
    Setting("train.channels_last", _bool(), FROM_NOW),
    Setting("train.compile", _bool(), FROM_NOW),
    Setting("train.grad_clip", _optional(_number(0, low_open=True)), FROM_NOW),
    Setting("train.cudnn_benchmark", _bool(), FROM_NOW),
    Setting("train.sync_bn", _bool(), FROM_NOW),
    Setting("train.eval_interval", _int(0), IGNORED),
    Setting("train.checkpoint_interval", _int(0), IGNORED),
    Setting("train.keep_checkpoints", _int(0), IGNORED),
    Setting("train.log_interval", _int(1), IGNORED),
    Setting("train.vis_images", _int(0), IGNORED),
    Setting("train.vis_attention", _bool(), IGNORED),
    Setting("train.seed", _int(), FROM_NOW),
    Setting("train.device", _device(), IGNORED),
    Setting("train.cpu_threads", _optional(_int(1)), IGNORED),
    Setting("train.num_workers", _int(0), IGNORED),
    Setting("train.aux_weight", _number(0), FROM_NOW),
    Setting("train.ohem.enabled", _bool(), FROM_NOW),
    Setting("train.ohem.thresh", _number(0, 1, low_open=True), FROM_NOW),
    Setting("train.ohem.min_kept", _int(0), FROM_NOW),
    Setting("train.class_weights", _weights(), FROM_NOW),
    Setting("train.skip_nonfinite", _bool(), FROM_NOW),
    Setting("train.dist_timeout_s", _number(0, low_open=True), IGNORED),
    Setting("train.ccl.delta_v", _number(0), FROM_NOW),
    Setting("train.ccl.delta_d", _number(0, low_open=True), FROM_NOW),
    Setting("train.ccl.alpha", _number(0), FROM_NOW),
    Setting("train.ccl.beta", _number(0), FROM_NOW),
    Setting("train.ccl.gamma", _number(0), FROM_NOW),
    Setting("train.ccl.weight", _number(0), FROM_NOW),
    # Outside train.*: checked where they are read (the model and dataset builders, check_eval_config).
    Setting("model.weights", None, IGNORED),
    Setting("model.weights_strict", None, IGNORED),
    Setting("model.cca_impl", None, IGNORED),
    Setting("dataset.name", None, REFUSED),
    Setting("dataset.num_classes", None, REFUSED),
    Setting("dataset.classes", None, REFUSED),
    Setting("dataset.ignore_index", None, REFUSED),
    Setting("eval.num_workers", None, IGNORED),
)
BY_KEY: Dict[str, Setting] = {s.key: s for s in SETTINGS}
# Keys of these sections without an entry of their own: any other model setting makes another experiment.
SECTION_POLICIES = {"model": REFUSED}


def resume_policy(key: str) -> str:
    """What resuming does when ``key`` (dotted) changed: :data:`APPLIED`, :data:`REFUSED`,
    :data:`IGNORED` or :data:`FROM_NOW` (any key the schema does not name)."""
    if key in BY_KEY:
        return BY_KEY[key].resume
    return SECTION_POLICIES.get(key.split(".")[0], FROM_NOW)


def describe(value: Any) -> str:
    """``'abc' (a string)``, ``2.5 (a float)``: the value and its type, as the user wrote it."""
    kinds = {str: "a string", float: "a float", int: "an integer", bool: "a boolean", type(None): "null"}
    if isinstance(value, Sequence) and not isinstance(value, str):  # lists, also OmegaConf's ListConfig
        return f"{list(value)!r} (a list)"
    return f"{value!r} ({kinds.get(type(value), type(value).__name__)})"


def check_train_config(cfg: Mapping[str, Any]) -> None:
    """Check every setting of the schema that ``cfg`` holds and the ``eval`` section, before anything runs.

    Raises:
        ConfigError: naming the key, the value received and what is expected.
    """
    flat = flatten_config(cfg)
    for setting in SETTINGS:
        rule = setting.current_rule()
        if rule is not None and setting.key in flat and not rule[0](flat[setting.key]):
            raise ConfigError(f"{setting.key} must be {rule[1]}, got {describe(flat[setting.key])}")
    check_eval_config(cfg.get("eval") or {})


def config_changes(
    cfg: Mapping[str, Any], baseline: Mapping[str, Any], skip: Sequence[str] = ("work_dir",)
) -> List[str]:
    """``key: value`` for every setting of ``cfg`` that differs from ``baseline`` (both resolved plain
    mappings), sorted; keys only in one of them are listed too."""
    now, before = flatten_config(cfg), flatten_config(baseline)
    return [
        f"{key}: {now.get(key, '(absent)')!r}"
        for key in sorted(set(now) | set(before))
        if key not in skip and now.get(key, "(absent)") != before.get(key, "(absent)")
    ]


def settings_table(defaults: Mapping[str, Any], meanings: Mapping[str, str]) -> str:
    """The Markdown table of the ``train.*`` settings: key, expected value, default, on resume, meaning.

    Args:
        defaults: dotted key -> default (``configs/train.yaml``, flattened).
        meanings: dotted key -> its comment in ``configs/train.yaml``.
    """
    rows = ["| key | expected | default | on resume | meaning |", "|---|---|---|---|---|"]
    for setting in SETTINGS:
        if not setting.key.startswith("train."):
            continue
        rule = setting.current_rule()
        expected = rule[1] if rule is not None else "see meaning"
        meaning = meanings.get(setting.key, "").replace("|", "\\|")
        rows.append(
            f"| `{setting.key}` | {expected} | `{_yaml(defaults.get(setting.key))}` | {setting.resume} | {meaning} |"
        )
    return "\n".join(rows)


def _yaml(value: Any) -> str:
    """A default as configs/train.yaml writes it (null, true, [769, 769])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def train_yaml_settings(path: Union[str, Path]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The ``train.*`` defaults of ``configs/train.yaml`` and each key's comment (continuation lines joined),
    as dotted keys: the inputs of :func:`settings_table`.
    """
    from omegaconf import OmegaConf

    loaded: Any = OmegaConf.to_container(OmegaConf.load(path))
    defaults = flatten_config({"train": loaded["train"]})
    meanings: Dict[str, str] = {}
    stack: List[Tuple[int, str]] = []  # (indent, key) of the open sections
    last: Optional[str] = None
    for line in Path(path).read_text().splitlines():
        entry = re.match(r"^( *)(\w+):\s*([^#]*?)\s*(?:#\s?(.*))?$", line)
        if entry:
            indent, key, value, comment = len(entry[1]), entry[2], entry[3], entry[4]
            stack = [(i, k) for i, k in stack if i < indent]
            dotted = ".".join([k for _, k in stack] + [key])
            if not value:
                stack.append((indent, key))
            last = dotted if value else None
            if comment and dotted.startswith("train.") and value:
                meanings[dotted] = comment.strip()
            continue
        more = re.match(r"^ +#\s?(.*)$", line)
        if more and last in meanings:
            meanings[last] += " " + more[1].strip()
        else:
            last = None
    return defaults, meanings
