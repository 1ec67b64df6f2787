"""Exponential moving average of a model's weights (``train.ema``).

With small batches the last iterates of SGD-like training scatter around the optimum by the gradient
noise; an average over the last ~1 / (1 - decay) steps sits closer to it (Polyak-Ruppert averaging).
The average is a separate copy of the model, updated after every optimiser step, and is what
evaluation, results and saved models use; training continues on the raw weights.

``torch.optim.swa_utils.AveragedModel`` does the same for parameters, but averages integer buffers
with the floating ones in one call or leaves every buffer at its initial value; here buffers (input
normalisation, batch-norm statistics, which are running averages already) are copied from the model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class WeightEMA:
    """``ema <- decay * ema + (1 - decay) * weights`` after every :meth:`update`; buffers copied.

    Args:
        model: the model being trained (copied; the copy is never trained).
        decay: in (0, 1); 0.999 averages over about the last 1000 updates.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"train.ema: the decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights; copy its buffers."""
        weight = 1.0 - self.decay
        for avg, p in zip(self.module.parameters(), model.parameters(), strict=True):
            avg.lerp_(p.detach(), weight)
        for avg, b in zip(self.module.buffers(), model.buffers(), strict=True):
            avg.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state (parameters and buffers) and the number of updates (the decay
        is the run's ``train.ema``, in its config)."""
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
