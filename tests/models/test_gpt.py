"""GPT: shapes per position encoding and time conditioning, tying, init, attention direction."""
from __future__ import annotations

import math

import pytest
import torch

from thunderdlm.models import GPT, ModelConfig

V, MAX_LEN = 11, 16
POS_EMBS = ["rotary", "learned", "sinusoidal"]


def _tokens(B: int = 2, L: int = 8) -> torch.Tensor:
    return torch.randint(0, V, (B, L))


@pytest.mark.parametrize("pos_emb", POS_EMBS)
@pytest.mark.parametrize("time_conditioning", [False, True])
def test_shapes_dtypes_and_sigma_use(tiny_cfg, pos_emb: str, time_conditioning: bool) -> None:
    cfg = tiny_cfg("gpt", pos_emb=pos_emb, time_conditioning=time_conditioning)
    model = GPT(cfg, V, MAX_LEN).eval()
    x = _tokens(3, MAX_LEN)
    logits = model(x, torch.rand(3))
    assert logits.shape == (3, MAX_LEN, V) and logits.dtype == torch.float32
    assert model(x[:, :5]).shape == (3, 5, V)
    depends = not torch.allclose(model(x, torch.zeros(3)), model(x, torch.full((3,), 5.0)))
    assert depends == time_conditioning
    assert (model.time_embed is not None) == time_conditioning


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_positions_break_permutation_equivariance(tiny_cfg, pos_emb: str) -> None:
    # without positions a bidirectional transformer is permutation-equivariant: swapping two
    # tokens would just swap their logits
    model = GPT(tiny_cfg("gpt", pos_emb=pos_emb), V, MAX_LEN).eval()
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    perm = torch.tensor([5, 1, 2, 3, 4, 0])                  # swap the first and last tokens
    y, y_perm = model(x, causal=False)[0], model(x[:, perm], causal=False)[0]   # (L, V)
    assert not torch.allclose(y_perm, y[perm], atol=1e-4)


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_bidirectional_and_causal(tiny_cfg, pos_emb: str) -> None:
    model = GPT(tiny_cfg("gpt", pos_emb=pos_emb), V, MAX_LEN).eval()
    x = _tokens()
    x2 = x.clone()
    x2[:, -1] = (x[:, -1] + 1) % V                           # change only the last token
    for causal in (False, True):
        y, y2 = model(x, causal=causal), model(x2, causal=causal)
        assert torch.allclose(y[:, :-1], y2[:, :-1], atol=1e-6) == causal
    ar = GPT(tiny_cfg("gpt", pos_emb=pos_emb, causal=True), V, MAX_LEN).eval()
    torch.testing.assert_close(ar(x), ar(x, causal=True))


def test_per_sequence_sigma_equals_expanded_per_token(tiny_cfg) -> None:
    model = GPT(tiny_cfg("gpt"), V, MAX_LEN).eval()
    x, sigma = _tokens(3, 7), torch.rand(3) * 4
    torch.testing.assert_close(model(x, sigma), model(x, sigma[:, None].expand(3, 7)),
                               atol=1e-5, rtol=1e-5)
    sigma_tok = torch.rand(3, 7)
    sigma_tok2 = sigma_tok.clone()
    sigma_tok2[:, -1] += 1.0
    y, y2 = model(x, sigma_tok, causal=True), model(x, sigma_tok2, causal=True)
    torch.testing.assert_close(y[:, :-1], y2[:, :-1])
    assert not torch.allclose(y[:, -1], y2[:, -1])


def test_tied_embeddings_share_storage(tiny_cfg) -> None:
    tied = GPT(tiny_cfg("gpt"), V, MAX_LEN)
    assert tied.lm_head.weight is tied.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    untied = GPT(tiny_cfg("gpt", tie_embeddings=False), V, MAX_LEN)
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == V * 32  # the tied matrix counted once
    tied(_tokens()).sum().backward()                         # gradients from both uses meet
    assert tied.wte.weight.grad is not None and tied.wte.weight.grad.abs().sum() > 0


def test_param_count_of_4x128_model() -> None:
    cfg = ModelConfig(name="gpt", pos_emb="learned", time_conditioning=False)
    nano = GPT(cfg, vocab_size=85, max_seq_len=256)
    default = GPT(ModelConfig(name="gpt"), vocab_size=85, max_seq_len=256)
    print(f"GPT 4x128 vocab 85: {nano.num_params():,} (learned pos, no time), "
          f"{default.num_params():,} (rotary + time embedding)")
    assert 0.75e6 < nano.num_params() < 0.9e6
    assert 0.75e6 < default.num_params() < 0.95e6
    # non-embedding leaves out wte (shared with lm_head) and wpe
    assert nano.num_params() - nano.num_params(non_embedding=True) == 85 * 128 + 256 * 128


def test_nanogpt_init() -> None:
    cfg = ModelConfig(name="gpt", bias=True)
    model = GPT(cfg, vocab_size=85, max_seq_len=256)
    proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.blocks])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.blocks])
    want = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert abs(proj.std().item() / want - 1) < 0.05
    assert abs(fc.std().item() / 0.02 - 1) < 0.05
    assert abs(model.wte.weight.std().item() / 0.02 - 1) < 0.1
    assert all(b.mlp.c_fc.bias.abs().sum() == 0 for b in model.blocks)
    assert model.blocks[0].ln_1.bias is not None


def test_dropout_only_in_training(tiny_cfg) -> None:
    model = GPT(tiny_cfg("gpt", dropout=0.3), V, MAX_LEN)
    x = _tokens()
    assert not torch.allclose(model.train()(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_runs_in_float64(tiny_cfg, pos_emb: str) -> None:
    model = GPT(tiny_cfg("gpt", pos_emb=pos_emb), V, MAX_LEN).eval()
    x, sigma = _tokens(), torch.rand(2)
    ref = model(x, sigma)
    out = model.double()(x, sigma)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_sinusoidal_table_stays_out_of_the_state_dict(tiny_cfg) -> None:
    model = GPT(tiny_cfg("gpt", pos_emb="sinusoidal"), V, MAX_LEN)
    assert "pos_table" not in model.state_dict()
    clone = GPT(tiny_cfg("gpt", pos_emb="sinusoidal"), V, MAX_LEN)
    clone.load_state_dict(model.state_dict())
    x = _tokens()
    torch.testing.assert_close(clone.eval()(x), model.eval()(x))
