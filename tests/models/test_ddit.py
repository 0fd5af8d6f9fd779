"""DDiT: identity at init, sigma dependence, attention direction, per-token sigma, dtypes."""
from __future__ import annotations

import pytest
import torch

from thunderdlm.errors import ConfigError
from thunderdlm.models import DDiT, ModelConfig

V, MAX_LEN = 11, 16


def _tokens(B: int = 2, L: int = 8) -> torch.Tensor:
    return torch.randint(0, V, (B, L))


def test_every_block_is_identity_and_logits_are_zero_at_init(tiny_cfg) -> None:
    model = DDiT(tiny_cfg("ddit"), V, MAX_LEN).eval()
    seen = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
             for b in model.blocks]
    logits = model(_tokens(), torch.rand(2) * 5)
    for h in hooks:
        h.remove()
    assert len(seen) == model.cfg.n_layer
    for h_in, h_out in seen:
        assert torch.equal(h_in, h_out)                       # gates are exactly zero
    assert logits.shape == (2, 8, V) and torch.count_nonzero(logits) == 0


def test_output_depends_on_sigma_once_perturbed(tiny_cfg, perturb) -> None:
    model = perturb(DDiT(tiny_cfg("ddit"), V, MAX_LEN).eval())
    x = _tokens()
    a, b = model(x, torch.full((2,), 0.1)), model(x, torch.full((2,), 2.0))
    assert not torch.allclose(a, b, atol=1e-4)
    torch.testing.assert_close(model(x, None), model(x, torch.zeros(2)))


def test_perturbing_only_the_zero_layers_wakes_the_model(tiny_cfg) -> None:
    model = DDiT(tiny_cfg("ddit"), V, MAX_LEN).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or name.startswith("output_layer.linear"):
                p.normal_(0.0, 0.1)
    x = _tokens()
    a, b = model(x, torch.full((2,), 0.1)), model(x, torch.full((2,), 2.0))
    assert torch.count_nonzero(a) > 0 and not torch.allclose(a, b, atol=1e-4)


def test_time_agnostic_ddit_ignores_sigma(tiny_cfg, perturb) -> None:
    model = perturb(DDiT(tiny_cfg("ddit", time_conditioning=False), V, MAX_LEN).eval())
    x = _tokens()
    torch.testing.assert_close(model(x, torch.rand(2) * 3), model(x))


@pytest.mark.parametrize("cfg_causal", [False, True])
def test_bidirectional_and_causal(tiny_cfg, perturb, cfg_causal: bool) -> None:
    model = perturb(DDiT(tiny_cfg("ddit", causal=cfg_causal), V, MAX_LEN).eval())
    x = _tokens()
    x2 = x.clone()
    x2[:, -1] = (x[:, -1] + 1) % V                           # change only the last token
    sigma = torch.rand(2)
    for causal in (None, False, True):
        y, y2 = model(x, sigma, causal=causal), model(x2, sigma, causal=causal)
        effective = cfg_causal if causal is None else causal
        prefix_same = torch.allclose(y[:, :-1], y2[:, :-1], atol=1e-6)
        assert prefix_same == effective
        assert not torch.allclose(y[:, -1], y2[:, -1])


def test_per_sequence_sigma_equals_expanded_per_token(tiny_cfg, perturb) -> None:
    model = perturb(DDiT(tiny_cfg("ddit"), V, MAX_LEN).eval())
    x, sigma = _tokens(3, 7), torch.rand(3) * 4
    torch.testing.assert_close(model(x, sigma), model(x, sigma[:, None].expand(3, 7)),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x, torch.tensor(0.7)), model(x, torch.full((3,), 0.7)))


def test_per_token_sigma_acts_per_token(tiny_cfg, perturb) -> None:
    model = perturb(DDiT(tiny_cfg("ddit"), V, MAX_LEN).eval())
    x, sigma = _tokens(2, 6), torch.rand(2, 6)
    sigma2 = sigma.clone()
    sigma2[:, -1] += 1.0                                     # only the last token's noise level
    y, y2 = model(x, sigma, causal=True), model(x, sigma2, causal=True)
    torch.testing.assert_close(y[:, :-1], y2[:, :-1])
    assert not torch.allclose(y[:, -1], y2[:, -1])


def test_shapes_dtypes_and_backward(tiny_cfg, perturb) -> None:
    model = perturb(DDiT(tiny_cfg("ddit", dropout=0.1), V, MAX_LEN))
    x = _tokens(2, MAX_LEN)
    logits = model(x, torch.rand(2, MAX_LEN))
    assert logits.shape == (2, MAX_LEN, V) and logits.dtype == torch.float32
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.eval()(x[:, :4], torch.rand(2)).dtype == torch.float32


def test_runs_in_float64(tiny_cfg, perturb) -> None:
    model = perturb(DDiT(tiny_cfg("ddit"), V, MAX_LEN).eval())
    x, sigma = _tokens(), torch.rand(2, 8)
    ref = model(x, sigma)
    out = model.double()(x, sigma)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_rejects_bad_inputs(tiny_cfg) -> None:
    model = DDiT(tiny_cfg("ddit"), V, MAX_LEN)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, MAX_LEN + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="sigma"):
        model(_tokens(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.zeros(2, 4))


def test_ddit_requires_rotary(tiny_cfg) -> None:
    cfg = tiny_cfg("ddit")
    cfg.pos_emb = "learned"                                  # bypasses __post_init__
    with pytest.raises(ConfigError, match="model.pos_emb"):
        DDiT(cfg, V, MAX_LEN)


def test_default_size() -> None:
    model = DDiT(ModelConfig(), vocab_size=85, max_seq_len=256)
    n = model.num_params()
    print(f"DDiT(ModelConfig(), 85, 256): {n:,} parameters "
          f"({model.num_params(non_embedding=True):,} non-embedding)")
    assert 1.2e6 < n < 1.4e6
    assert model.num_params() - model.num_params(non_embedding=True) == 85 * 128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_on_gpu_keeps_layernorm_and_logits_fp32(tiny_cfg, perturb) -> None:
    from thunderdlm.models.layers import LayerNorm
    model = perturb(DDiT(tiny_cfg("ddit"), V, MAX_LEN)).cuda().eval()
    x, sigma = _tokens().cuda(), torch.rand(2, device="cuda")
    dtypes: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
             for m in model.modules() if isinstance(m, LayerNorm)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x, sigma)
    for h in hooks:
        h.remove()
    assert set(dtypes) == {torch.float32} and logits.dtype == torch.float32
    torch.testing.assert_close(logits, model(x, sigma), atol=0.05, rtol=0.05)


def test_time_agnostic_conditioning_cache_follows_weight_updates(tiny_cfg, perturb) -> None:
    """Without autograd a time-agnostic DDiT folds its constant adaLN into the norms once, and
    folds again after any weight changes (an optimiser step, a loaded state dict); the folded
    forward equals the plain one up to float rounding."""
    model = perturb(DDiT(tiny_cfg("ddit", time_conditioning=False), 13, 16)).eval()
    x = torch.randint(0, 13, (2, 16))
    with torch.enable_grad():
        plain = model(x).detach()                             # the unfolded path
    with torch.no_grad():
        a = model(x)
        torch.testing.assert_close(a, plain, rtol=1e-5, atol=1e-5)
        assert torch.equal(model(x), a)                       # the cached fold
        for p in model.sigma_map.parameters():
            p.add_(0.5)                                       # in place, as an optimiser does
        b = model(x)
        model.load_state_dict({k: v * 1.01 for k, v in model.state_dict().items()})
        c = model(x)
    with torch.enable_grad():
        fresh = model(x).detach()
    assert not torch.allclose(a, b) and not torch.allclose(b, c)
    # the +0.5 embedder makes the adaLN scales large, so rounding grows with them
    torch.testing.assert_close(c, fresh, rtol=1e-4, atol=1e-4)
