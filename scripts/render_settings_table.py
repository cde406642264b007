"""Print docs/training.md's table of the training settings, from ccnet/engine/settings.py (types, ranges,
resume policies) and configs/train.yaml (defaults and their comments):

    python scripts/render_settings_table.py   # paste between the markers in docs/training.md

tests/engine/test_settings.py fails when the docs' table differs from this output.
"""

from __future__ import annotations

from pathlib import Path

from ccnet.engine.settings import settings_table, train_yaml_settings

TRAIN_YAML = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"


def main() -> None:
    print(settings_table(*train_yaml_settings(TRAIN_YAML)))


if __name__ == "__main__":
    main()
