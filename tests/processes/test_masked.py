import math

import pytest
import torch

from thunderdlm.processes import MaskedConfig, MaskedProcess
from thunderdlm.processes.discrete.masked import stratified_times

V = 7


def make(**kw):
    return MaskedProcess(MaskedConfig(**kw), V)


def test_mask_token_extends_vocabulary():
    p = make()
    assert p.mask_id == V and p.model_vocab_size == V + 1


def test_subs_never_predicts_mask_and_copies_visible_tokens():
    p = make()
    torch.manual_seed(0)
    logits = torch.randn(3, 10, V + 1) * 5
    logits[..., p.mask_id] = 100.0                      # the network "wants" to predict M
    xt = torch.randint(0, V, (3, 10))
    xt[:, ::2] = p.mask_id
    logp = p.subs_log_probs(logits, xt)
    probs = logp.exp()
    assert torch.all(probs[..., p.mask_id] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 10))
    visible = xt != p.mask_id
    assert torch.all(probs[visible].argmax(-1) == xt[visible])
    assert torch.all(probs[visible].max(-1).values == 1.0)


def test_corrupt_masks_at_rate_m_t():
    p = make()
    x0 = torch.randint(0, V, (4000, 50))
    t = torch.full((4000,), 0.3)
    xt = p.corrupt(x0, t, torch.Generator().manual_seed(0))
    frac = (xt == p.mask_id).float().mean().item()
    assert abs(frac - 0.3) < 0.005
    keep = xt != p.mask_id
    assert torch.equal(xt[keep], x0[keep])


def test_all_masked_at_t1_with_eps0():
    p = make()
    xt = p.corrupt(torch.randint(0, V, (8, 32)), torch.ones(8))
    assert torch.all(xt == p.mask_id)


def test_stratified_times_one_per_stratum():
    n = 64
    t = stratified_times(n, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert ((t > 0) & (t <= 1)).all()
    strata = torch.ceil(t * n).long() - 1
    assert sorted(strata.tolist()) == list(range(n))


def test_perfect_model_has_zero_loss(oracle_model):
    x0 = torch.randint(0, V, (16, 24))
    model = oracle_model(x0, V + 1, confidence=60.0)
    p = make()
    out = p.loss(model, x0)
    assert out.loss.item() < 1e-6
    assert p.nelbo(model, x0).abs().max().item() < 1e-6


def test_uniform_model_nelbo_equals_log_v():
    """A model predicting uniformly over V tokens: E_t[1/t · #masked/L · log V] = log V."""
    class Uniform(torch.nn.Module):
        def forward(self, x, sigma=None, causal=None):
            return torch.zeros(*x.shape, V + 1)
    p = make()
    x0 = torch.randint(0, V, (512, 64))
    est = torch.cat([p.nelbo(Uniform(), x0, torch.Generator().manual_seed(s)) for s in range(4)])
    se = est.std().item() / math.sqrt(est.numel())
    assert abs(est.mean().item() - math.log(V)) < 4 * se + 1e-3


def test_time_conditioning_switch():
    t = torch.tensor([0.2, 0.9])
    assert torch.all(make().conditioning(t) == 0)
    assert torch.all(make(time_conditioning=True).conditioning(t) > 0)


def test_config_errors_name_the_field():
    from thunderdlm.errors import ConfigError
    with pytest.raises(ConfigError, match="process.eps"):
        MaskedConfig(eps=1.5)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_ratio_estimator_has_the_nelbo_expectation(schedule, random_model):
    """At fixed t both training estimators agree in expectation; the ratio one has lower variance."""
    p = make(schedule=schedule)
    model = random_model(p.model_vocab_size)
    x0 = torch.randint(0, V, (4000, 12), generator=torch.Generator().manual_seed(0))
    t = torch.full((4000,), 0.15)
    a, _ = p.nelbo_at(model, x0, t, torch.Generator().manual_seed(1))
    b, _ = p.nelbo_at(model, x0, t, torch.Generator().manual_seed(2), estimator="ratio")
    se = math.sqrt(a.var() / a.numel() + b.var() / b.numel())
    assert abs(a.mean() - b.mean()) < 4 * se
    assert b.var() < a.var()
