"""Exponential moving average of the trained weights (the weights evaluated and loaded by default)."""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Exponential moving average of the trainable weights (kept in fp32)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        torch._foreach_lerp_([self.shadow[n] for n in self.names],
                             [params[n].detach().float() for n in self.names], 1.0 - self.decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full model state dict with the EMA weights in place of the trained ones."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for n in self.names:
            sd[n] = self.shadow[n].to(sd[n].dtype)
        return sd

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for n in self.names:
            self.shadow[n].copy_(tensors[n].float())
