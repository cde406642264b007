"""Where the repository's folders are, for code that reads its configs (converters, benchmarks, the
rehearsal): the package lives in ``<repo>/ccnet`` and the Hydra configs in ``<repo>/configs``."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "configs"
