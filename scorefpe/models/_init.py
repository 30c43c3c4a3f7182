"""Deterministic parameter initialisation from a seed, without touching torch's global RNG.

Modules are built on the meta device (no memory, no random draws), materialised with
``to_empty`` and then filled here from a private ``torch.Generator``: the same seed gives the same
parameters on every machine and call order, and the caller's global random state is left alone.
The distributions are PyTorch's own defaults (kaiming-uniform with a = sqrt(5) for weights,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases, ones/zeros for normalisation layers).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def build_on_meta(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Call ``factory()`` on the meta device, materialise on the CPU, initialise from ``seed``.

    Every parameter and buffer is (re)initialised by ``init_from_seed``; a module type it does not
    know raises, so that no tensor is left holding uninitialised memory.
    """
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu")
    init_from_seed(module, seed)
    return module


def init_from_seed(module: nn.Module, seed: int) -> None:
    """Initialise all parameters and buffers of ``module`` in place from ``seed`` (module order).

    Raises:
        TypeError: a module with parameters or buffers of a type this function does not know.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, sub in module.named_modules():
            has_own = any(True for _ in sub.parameters(recurse=False)) or any(
                True for _ in sub.buffers(recurse=False)
            )
            if not has_own:
                continue
            reset = getattr(sub, "reset_parameters_from", None)
            if reset is not None:
                reset(gen)
            elif isinstance(sub, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                _init_affine(sub.weight, sub.bias, gen)
            elif isinstance(sub, nn.GroupNorm):
                if sub.weight is not None:
                    sub.weight.fill_(1.0)
                    sub.bias.zero_()
            else:
                raise TypeError(f"no seeded initialisation for module {name!r} ({type(sub).__name__})")


def _init_affine(weight: torch.Tensor, bias: torch.Tensor | None, gen: torch.Generator) -> None:
    # Same as nn.Linear / nn.ConvNd.reset_parameters, but drawn from `gen`.
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    if bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound, generator=gen)
