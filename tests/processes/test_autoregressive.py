import math

import torch
import torch.nn.functional as F

from thunderdlm.models import ModelConfig, build_model
from thunderdlm.processes import AutoregressiveConfig, AutoregressiveProcess

V, L = 9, 12


def setup():
    p = AutoregressiveProcess(AutoregressiveConfig(), V)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="gpt", n_layer=1, n_head=2, n_embd=16, causal=True), p.model_vocab_size, L)
    return p, model


def test_nll_equals_hand_computed_cross_entropy():
    p, model = setup()
    x0 = torch.randint(0, V, (3, L))
    inp = torch.cat([torch.full((3, 1), V), x0[:, :-1]], 1)
    logits = model(inp, None, causal=True)[..., :V]
    by_hand = torch.stack([
        sum(-F.log_softmax(logits[b, i], -1)[x0[b, i]] for i in range(L)) / L for b in range(3)])
    torch.testing.assert_close(p.nelbo(model, x0), by_hand)
    torch.testing.assert_close(p.loss(model, x0).loss, by_hand.mean())


def test_likelihood_is_exact_and_normalised():
    """Σ over all sequences of p(x) is 1: check on a tiny vocabulary and length by enumeration."""
    p = AutoregressiveProcess(AutoregressiveConfig(), 3)
    torch.manual_seed(1)
    model = build_model(ModelConfig(name="gpt", n_layer=1, n_head=2, n_embd=8, causal=True), 4, 4)
    seqs = torch.cartesian_prod(*[torch.arange(3)] * 4)                  # (81, 4)
    logp = -p.nelbo(model, seqs) * 4
    assert math.isclose(torch.logsumexp(logp, 0).exp().item(), 1.0, rel_tol=1e-5)
    assert p.exact_likelihood


def test_future_tokens_do_not_change_the_prediction():
    p, model = setup()
    x = torch.randint(0, V, (1, L))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % V
    torch.testing.assert_close(p.logits(model, x)[:, :-1], p.logits(model, y)[:, :-1])
