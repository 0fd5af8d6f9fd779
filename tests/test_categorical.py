"""Token draws: temperature → top-k → top-p in transformers' order, on exact distributions."""
import math

import pytest
import torch

from thunderdlm.categorical import draw_tokens, filter_logits, warp_logits


def probs_of(logits, **kw):
    return torch.softmax(warp_logits(torch.tensor(logits, dtype=torch.float64), **kw), -1)


def test_top_p_reads_the_tempered_distribution():
    # p = (0.5, 0.3, 0.2). At T = 10 the tempered distribution is nearly flat, (0.35, 0.33, 0.32):
    # the nucleus of 0.5 holds two tokens; on the raw p (the old order) it held only the first.
    logits = [math.log(0.5), math.log(0.3), math.log(0.2)]
    tempered = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64) ** 0.1
    expected = torch.cat([tempered[:2] / tempered[:2].sum(), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(probs_of(logits, temperature=10.0, top_p=0.5), expected)
    raw_first = torch.softmax(filter_logits(torch.tensor(logits), top_p=0.5), -1)
    assert raw_first.tolist() == [1.0, 0.0, 0.0]                 # what filter-then-temper kept


def test_top_p_applies_to_what_top_k_kept():
    # p = (0.4, 0.3, 0.2, 0.1): top-k 2 renormalises to (4/7, 3/7); a nucleus of 0.5 then keeps one
    # token (on the unrenormalised p it would keep two)
    logits = [math.log(v) for v in (0.4, 0.3, 0.2, 0.1)]
    assert probs_of(logits, top_k=2, top_p=0.5).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(probs_of(logits, top_k=2), torch.tensor([4 / 7, 3 / 7, 0, 0], dtype=torch.float64))
    assert torch.allclose(probs_of(logits, top_k=3, top_p=0.75),
                          torch.tensor([4 / 7, 3 / 7, 0, 0], dtype=torch.float64))


def test_draw_frequencies_match_the_warped_distribution():
    logits = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.2)]).expand(40_000, 3)
    g = torch.Generator().manual_seed(0)
    drawn = draw_tokens(logits, temperature=10.0, top_p=0.5, generator=g)
    freq = torch.bincount(drawn, minlength=3).double() / drawn.numel()
    expected = probs_of(logits[0].tolist(), temperature=10.0, top_p=0.5)
    assert freq[2] == 0 and torch.allclose(freq, expected, atol=0.01)     # se ≈ 0.0025


@pytest.mark.parametrize("kw", [dict(), dict(top_k=1), dict(top_p=0.1), dict(top_k=3, top_p=0.9)])
def test_temperature_zero_is_the_argmax_and_consumes_no_randomness(kw):
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(draw_tokens(logits, temperature=0.0, generator=g, **kw), logits.argmax(-1))
    assert torch.equal(g.get_state(), state)
