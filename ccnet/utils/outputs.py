"""Output folders of the tools: a run that fails before writing anything leaves no folder behind.

Hydra creates the output folder (``work_dir`` of training, ``output_dir`` of eval/infer) and its log
file before the tool's code runs, and the trainer writes ``config.yaml`` early; a run that then fails
on a wrong setting would leave a folder holding only those. :func:`discard_if_empty_on_failure`
removes such a folder again, and only such a folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Iterator, Sequence, Union

HOUSEKEEPING = ("train.log", "eval.log", "infer.log", "config.yaml")  # what a run writes before its results


def _sizes(directory: Path) -> Dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()} if directory.is_dir() else {}


@contextlib.contextmanager
def discard_if_empty_on_failure(directory: Union[str, Path],
                                housekeeping: Sequence[str] = HOUSEKEEPING) -> Iterator[None]:
    """On an exception (or exit) inside the block, delete ``directory`` when it holds nothing but
    housekeeping files that were empty or absent when the block started — nothing of an earlier run
    and no result of this one. The exception propagates. Call it on one process only (rank 0)."""
    directory = Path(directory)
    before = _sizes(directory)
    try:
        yield
    except BaseException:
        entries = list(directory.iterdir()) if directory.is_dir() else []
        if all(p.is_file() and p.name in housekeeping and before.get(p.name, 0) == 0 for p in entries):
            try:
                for p in entries:
                    p.unlink()
                directory.rmdir()
            except OSError:  # cleaning up must never hide the error that ended the run
                pass
        raise
