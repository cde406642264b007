"""One schema for the training settings (ccnet/engine/settings.py): it names exactly the keys of
configs/train.yaml, every default passes its own check, every check refuses a wrong value naming the key,
resume classifies changes by it, and docs/training.md's table is its rendering."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ccnet.engine.resume import compare_configs
from ccnet.engine.settings import (
    APPLIED,
    FROM_NOW,
    IGNORED,
    REFUSED,
    SETTINGS,
    check_train_config,
    resume_policy,
    settings_table,
    train_yaml_settings,
)
from ccnet.errors import ConfigError

RULED = [s for s in SETTINGS if s.rule is not None]


@pytest.fixture(scope="module")
def train_yaml(configs_dir):
    return train_yaml_settings(configs_dir / "train.yaml")


def test_the_schema_names_exactly_the_train_keys_of_train_yaml(train_yaml):
    defaults, meanings = train_yaml
    schema = {s.key for s in SETTINGS if s.key.startswith("train.")}
    assert set(defaults) == schema
    assert set(meanings) == schema  # every key has its comment in train.yaml


def test_every_default_passes_its_check(train_yaml):
    defaults, _ = train_yaml
    for setting in RULED:
        if setting.key in defaults:
            assert setting.current_rule()[0](defaults[setting.key]), setting.key


@pytest.mark.parametrize("setting", RULED, ids=[s.key for s in RULED])
def test_a_wrong_value_is_refused_naming_the_key(setting):
    wrong = [] if setting.key in ("resume", "load_from") else "not-a-valid-value"  # those take strings
    section, *rest = setting.key.split(".")
    cfg = {section: wrong} if not rest else {section: _nest(rest, wrong)}
    with pytest.raises(ConfigError, match=rf"^{re.escape(setting.key)} must be "):
        check_train_config(cfg)


def _nest(keys, value):
    return {keys[0]: value} if len(keys) == 1 else {keys[0]: _nest(keys[1:], value)}


def test_lr_schedule_names_come_from_the_registry(monkeypatch):
    from ccnet.engine import optim

    with pytest.raises(ConfigError, match=r"train.lr_schedule must be the name of a schedule: poly, got 'cos'"):
        check_train_config({"train": {"lr_schedule": "cos"}})
    monkeypatch.setitem(optim.SCHEDULES, "cos", optim.poly_schedule)
    check_train_config({"train": {"lr_schedule": "cos"}})


def test_resume_sorts_changes_by_the_schemas_policy():
    assert [
        resume_policy(k)
        for k in (
            "train.lr",
            "model.backbone",
            "model.weights",
            "train.num_workers",
            "train.batch_size",
            "dataset.root",
            "dataset.num_classes",
        )
    ] == [APPLIED, REFUSED, IGNORED, IGNORED, FROM_NOW, FROM_NOW, REFUSED]
    saved = {"train": {"lr": 0.1, "num_workers": 0, "batch_size": 8}, "model": {"recurrence": 2, "weights": "a"}}
    new = {"train": {"lr": 0.2, "num_workers": 4, "batch_size": 4}, "model": {"recurrence": 1, "weights": "b"}}
    assert compare_configs(saved, new) == {
        "blocking": ["model.recurrence: 2 -> 1"],
        "applied": ["train.lr: 0.1 -> 0.2"],
        "other": ["train.batch_size: 8 -> 4"],
    }


def test_the_docs_table_is_the_schemas_rendering(repo_root, train_yaml):
    docs = (repo_root / "docs" / "training.md").read_text()
    table = docs.split("<!-- settings table: generated, do not edit by hand -->\n")[1].split("\n<!-- end")[0]
    assert table == settings_table(*train_yaml), "run: python scripts/render_settings_table.py"
    printed = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "render_settings_table.py")],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert printed == table
