"""A small randomly initialised backbone with every weight perturbed, for exactness tests of padding
and batching: DDiT's zero-initialised layers (adaLN, the output head) would otherwise hide bugs."""
import torch

from thunderdlm.models import ModelConfig, build_model


def perturbed_backbone(name: str, vocab: int, seq_len: int, **kw):
    """``build_model`` of a 2-layer, 32-wide ``name`` backbone (seed 0), every parameter + 0.05·N(0, 1),
    in eval mode; ``kw`` are further ModelConfig fields."""
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, n_layer=2, n_head=2, n_embd=32, cond_dim=16, **kw)
    model = build_model(cfg, vocab, seq_len)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()
