"""Exponential moving average of model parameters (Polyak averaging), as in score_sde."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta after every optimizer step.

    Buffers (fixed Fourier frequencies) are copied, not averaged. ``copy_to(model)`` writes the
    averaged weights into a model of the same architecture (for sampling / evaluation).

    Raises:
        ValueError: decay outside [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not (0.0 <= decay < 1.0):
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._param_names = {k for k, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self._param_names and v.is_floating_point():
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model: keys {sorted(missing)}")
        for k, v in state.items():
            self.shadow[k].copy_(v)
