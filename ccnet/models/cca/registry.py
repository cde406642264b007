"""The criss-cross attention implementations by name, and which one runs where.

Each entry computes ``residual + γ · CCA(q, k, v)``; an entry may also fuse the whole module
application (the three 1×1 projections, the attention and the residual). Who decides which runs
(an argument, a :func:`use_implementation` block, the module's setting, ``CCNET_CCA_IMPL``, then
``auto``) is :func:`select_implementation`'s rule.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import Tensor

from ccnet.errors import ConfigError
from ccnet.models.cca.lean import criss_cross_attention_lean
from ccnet.models.cca.lean_block import criss_cross_block_lean
from ccnet.models.cca.reference import reference_attention

IMPL_ENV = "CCNET_CCA_IMPL"  # the outermost default, for runs that cannot pass a setting in
# Looked up once without importing Triton (its import is slow and only CUDA tensors use it).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


@dataclass(frozen=True)
class Implementation:
    """One way to compute the criss-cross attention.

    Args:
        attention: ``(q, k, v, gamma, residual) -> residual + γ · out`` (``gamma``/``residual`` optional).
        block: ``(x, (Wq, bq, Wk, bk, Wv, bv), gamma) -> x + γ · CCA(Wq x + bq, ...)``, the whole module
            application fused; None when the module runs its convolutions and then ``attention``.
    """

    attention: Callable[..., Tensor]
    block: Optional[Callable[..., Tensor]] = None


def _triton_attention(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor] = None, residual: Optional[Tensor] = None
) -> Tensor:
    from ccnet.models.cca.triton_kernels import criss_cross_attention_triton  # Triton: optional, slow to import

    return criss_cross_attention_triton(q, k, v, gamma, residual)


IMPLEMENTATIONS: Dict[str, Implementation] = {
    "reference": Implementation(reference_attention),  # the readable einsum definition, plain autograd
    "lean": Implementation(criss_cross_attention_lean, block=criss_cross_block_lean),  # CPU: hand-written autograd
    "triton": Implementation(_triton_attention),  # fused kernels for CUDA tensors (or Triton's interpreter)
}


def choices() -> tuple:
    """The names a setting may give: ``auto`` and every registered implementation."""
    return ("auto", *IMPLEMENTATIONS)


class _ScopedChoices(threading.local):
    """The names of the :func:`use_implementation` blocks active in this thread, innermost last."""

    def __init__(self) -> None:
        self.stack: List[str] = []


_scoped = _ScopedChoices()


def check_choice(name: str, source: str) -> str:
    """``name`` if it is one of :func:`choices`.

    Raises:
        ConfigError: naming ``source`` (where the name came from) and the valid names.
    """
    if name not in choices():
        raise ConfigError(
            f"unknown criss-cross attention implementation {name!r} from {source}: "
            f"expected one of {', '.join(choices())}"
        )
    return name


@contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """Run the criss-cross attention as ``name`` inside the block (this thread only; blocks nest).

    Only the operator's explicit ``implementation=`` overrides it, not a module's setting, so
    ``with use_implementation("reference"):`` exports any model.

    Raises:
        ConfigError: ``name`` is not one of :func:`choices` (on entering the block).
    """
    _scoped.stack.append(check_choice(name, "use_implementation()"))
    try:
        yield
    finally:
        _scoped.stack.pop()


def select_implementation(
    implementation: Optional[str], device: torch.device, module_setting: Optional[str] = None
) -> str:
    """The implementation that runs: the first of these that is set decides.

    1. ``implementation``, the operator's argument;
    2. the innermost active :func:`use_implementation` block;
    3. ``module_setting``, the ``implementation`` a module was built with (``model.cca_impl``);
    4. the environment variable ``CCNET_CCA_IMPL``;
    5. ``auto``: ``reference`` while ``torch.jit.trace`` or an ONNX export records the graph,
       ``triton`` for CUDA tensors when Triton is installed, ``lean`` otherwise.

    Returns:
        A key of :data:`IMPLEMENTATIONS`.

    Raises:
        ConfigError: the deciding name is not one of :func:`choices` (names where it came from).
    """
    if implementation is not None:
        choice = check_choice(implementation, "the implementation argument")
    elif _scoped.stack:
        choice = _scoped.stack[-1]  # checked on entering the block
    elif module_setting is not None:
        choice = check_choice(module_setting, "the module's implementation setting")
    else:
        choice = check_choice(os.environ.get(IMPL_ENV, "auto"), f"the environment variable {IMPL_ENV}")
    if choice == "auto":
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return "reference"
        return "triton" if device.type == "cuda" and TRITON_INSTALLED else "lean"
    return choice
