"""Training engine: ``train(cfg)`` (the loop), losses, optimiser/schedule, checkpoints.

``train`` and ``NonFiniteLossError`` are imported lazily: ``ccnet.models`` and ``ccnet.evaluation``
import ``ccnet.engine.checkpoint``, and an eager import of the trainer here (which imports them)
would be circular.
"""

from typing import Any

__all__ = ["NonFiniteLossError", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ccnet.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'ccnet.engine' has no attribute {name!r}")
