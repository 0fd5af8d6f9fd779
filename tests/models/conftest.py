"""Fixtures for the backbone tests: tiny configs and a way to wake up zero-initialised layers."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from thunderdlm.models import ModelConfig



def _tiny(name: str, **overrides) -> ModelConfig:
    base = dict(name=name, n_layer=2, n_head=2, n_embd=32, cond_dim=16, mlp_ratio=2)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_cfg() -> Callable[..., ModelConfig]:
    """``tiny_cfg("ddit", causal=True)``: a 2-layer, 32-wide config."""
    return _tiny


@pytest.fixture
def perturb() -> Callable[[nn.Module, float], nn.Module]:
    """Add N(0, std²) noise to every parameter, so zero-initialised gates and heads act."""
    def _perturb(model: nn.Module, std: float = 0.1) -> nn.Module:
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * std)
        return model
    return _perturb


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
