"""The layout under batched sampling: left padding with per-row positions (B, L) in every backbone
and KV cache (the real columns read as the unpadded row), and per-row random streams."""
import pytest
import torch

from thunderdlm.categorical import draw_tokens, sample_categorical
from tests.perturbed_backbone import perturbed_backbone
from thunderdlm import rng
from thunderdlm.rng import RowGenerators

V, L = 13, 12


def backbone(name, **kw):
    return perturbed_backbone(name, V, L, **kw)


def left_padded(n_real=(12, 7, 4), seed=0):
    """Rows right-aligned in L columns, random tokens in the pads; valid and positions (B, L)."""
    x = torch.randint(0, V, (len(n_real), L), generator=torch.Generator().manual_seed(seed))
    pad = L - torch.tensor(n_real)[:, None]
    cols = torch.arange(L)[None, :]
    return x, cols >= pad, (cols - pad).clamp(min=0), n_real


BACKBONES = [("ddit", {}), ("gpt", dict(pos_emb="learned")), ("gpt", dict(pos_emb="sinusoidal")),
             ("gpt", dict(pos_emb="rotary"))]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,kw", BACKBONES)
def test_padded_logits_match_the_unpadded_ones(name, kw, causal):
    model = backbone(name, causal=causal, **kw)
    x, valid, positions, n_real = left_padded()
    out = model(x, None, valid=valid, positions=positions)
    for row, n in enumerate(n_real):
        alone = model(x[row:row + 1, L - n:])
        torch.testing.assert_close(out[row, L - n:], alone[0], atol=1e-5, rtol=1e-5)
    if kw.get("pos_emb") == "learned":       # without the row's own positions the table is misread
        shifted = model(x, None, valid=valid)
        assert (shifted[2, L - 4:] - out[2, L - 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("name,kw", BACKBONES)
def test_kv_cache_chunks_with_row_positions_match_the_unpadded_causal_forward(name, kw):
    """Prefill a left-padded prompt, then feed one column at a time: the real outputs are the
    unpadded row's causal logits (the AR baseline's and block diffusion's cached decoding)."""
    model = backbone(name, causal=True, **kw)
    x, valid, positions, n_real = left_padded()
    cache = model.new_kv_cache()
    outs = [model(x[:, :9], None, causal=True, kv_cache=cache, valid=valid[:, :9], positions=positions[:, :9])]
    for c in range(9, L):
        outs.append(model(x[:, c:c + 1], None, causal=True, kv_cache=cache, valid=valid[:, :c + 1],
                          positions=positions[:, c:c + 1]))
    out = torch.cat(outs, dim=1)
    for row, n in enumerate(n_real):
        alone = model(x[row:row + 1, L - n:], None, causal=True)
        torch.testing.assert_close(out[row, L - n:], alone[0], atol=1e-5, rtol=1e-5)


def test_positions_must_have_the_inputs_length():
    model = backbone("gpt")
    x = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"positions must be \(5,\) or \(B, 5\)"):
        model(x, None, positions=torch.zeros(2, 4, dtype=torch.long))


def test_a_row_generator_draws_what_a_plain_generator_draws_for_one_row():
    """B = 1 from a plain generator and the row's own stream are the same numbers, so a seeded
    single-row run is unchanged; a row's draws do not depend on the rows beside it."""
    shape = (1, 6, V)
    plain = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rows = RowGenerators.seeded([3])
    assert torch.equal(rng.rand(shape, rows, dtype=torch.float64), plain)
    three = RowGenerators.seeded([9, 3, 4])
    assert torch.equal(rng.rand((3, 6, V), three, dtype=torch.float64)[1], plain[0])
    assert torch.equal(rng.randn((2, 4), RowGenerators.seeded([5, 1]))[0],
                       torch.randn(4, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(rng.randint(0, 7, (2, 9), RowGenerators.seeded([1, 5]))[1],
                       torch.randint(0, 7, (9,), generator=torch.Generator().manual_seed(5)))
    probs = torch.rand(1, 6, V, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_categorical(probs, RowGenerators.seeded([4])),
                       sample_categorical(probs, torch.Generator().manual_seed(4)))
    logits = torch.randn(2, 6, V, generator=torch.Generator().manual_seed(0))
    pair = draw_tokens(logits, 0.9, 5, 0.9, RowGenerators.seeded([8, 4]))
    assert torch.equal(pair[1], draw_tokens(logits[1:], 0.9, 5, 0.9, torch.Generator().manual_seed(4))[0])


def test_only_active_rows_draw_and_a_plain_generator_draws_for_every_row():
    gens = RowGenerators.seeded([1, 2, 3])
    active = torch.tensor([True, False, True])
    rest = torch.full((3, 4), -1.0)
    out = rng.draw_rows(gens, active, lambda g, r: rng.rand(rest[r].shape, g), rest)
    assert torch.equal(out[1], rest[1])
    # row 1 consumed nothing: its next draw is its first
    assert torch.equal(rng.rand((1, 4), gens.select([1])), torch.rand(4, generator=torch.Generator().manual_seed(2))[None])
    plain = torch.Generator().manual_seed(0)
    out = rng.draw_rows(plain, active, lambda g, r: rng.rand(rest[r].shape, g), rest)
    assert torch.equal(out, torch.rand(3, 4, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="first dimension"):
        gens.rand((2, 4))
