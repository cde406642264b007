"""Training engine: ``train(cfg)`` (the loop), losses, optimiser/schedule, checkpoint files of a run."""

from ccnet.engine.trainer import NonFiniteLossError, train

__all__ = ["NonFiniteLossError", "train"]
