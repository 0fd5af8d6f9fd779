"""Importance sampling of t (Improved DDPM's loss-second-moment sampler): the draws follow the
proposal, the weighted estimate stays unbiased, and its history survives a checkpoint."""
import math

import pytest
import torch

from thunderdlm.config import from_dict
from thunderdlm.errors import ConfigError
from thunderdlm.models import ModelConfig
from thunderdlm.processes import ProcessConfig, build_process
from thunderdlm.processes.discrete.masked import stratified_times
from thunderdlm.processes.embedding.time_importance import UNIFORM_SHARE, WARMUP, TimeImportance

V, L = 84, 24


def warm(sampler: TimeImportance, h) -> None:
    """Feed WARMUP draws per bin of the integrand h(t) at the bin centres."""
    K = sampler.bins
    centres = (torch.arange(K, dtype=torch.float64) + 0.5) / K
    for _ in range(WARMUP):
        sampler.update(centres, h(centres))


def test_uniform_until_every_bin_is_warm():
    s = TimeImportance(8)
    u = stratified_times(64, "cpu", torch.Generator().manual_seed(0))
    t, w = s.sample(u)
    assert torch.allclose(t, u.double()) and torch.equal(w, torch.ones_like(w))
    s.update(torch.tensor([0.05]), torch.tensor([3.0]))
    assert not s.ready
    t2, _ = s.sample(u)
    assert torch.allclose(t2, u.double())


def test_the_proposal_is_the_root_second_moment_and_the_draws_follow_it():
    s = TimeImportance(4)
    warm(s, lambda t: torch.tensor([1.0, 1.0, 3.0, 5.0], dtype=torch.float64)[(t * 4).long()])
    q = s.bin_probs()
    expected = (1 - UNIFORM_SHARE) * torch.tensor([1.0, 1.0, 3.0, 5.0]) / 10 + UNIFORM_SHARE / 4
    assert torch.allclose(q, expected.double())
    t, w = s.sample(stratified_times(100_000, "cpu", torch.Generator().manual_seed(1)))
    frac = torch.bincount((t * 4).ceil().long() - 1, minlength=4).double() / t.numel()
    assert torch.allclose(frac, q, atol=1e-3)               # stratified draws: tight
    assert t.min() > 0 and t.max() <= 1
    assert torch.allclose(w, 1.0 / (4 * q[(t * 4).ceil().long() - 1]))


def test_weighted_estimates_are_unbiased_and_have_less_variance():
    """∫₀¹ h(t) dt from 64 draws of a noisy, peaked integrand (like the bound's: one ε and one sequence
    per t): the importance estimate has the same mean and a smaller spread."""
    h = lambda t: 50.0 * torch.exp(-((t - 0.7) / 0.08) ** 2)
    grid = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    exact = torch.trapezoid(h(grid), grid).item()
    s = TimeImportance(32)
    warm(s, h)
    gen = torch.Generator().manual_seed(2)
    plain, weighted = [], []
    for _ in range(400):
        u = stratified_times(64, "cpu", gen).double()
        noise = torch.empty(64, dtype=torch.float64).exponential_(generator=gen)    # mean 1
        plain.append((h(u) * noise).mean().item())
        t, w = s.sample(u)
        weighted.append((w * h(t) * noise).mean().item())
    plain, weighted = torch.tensor(plain), torch.tensor(weighted)
    for est in (plain, weighted):    # 400 estimates: their mean is within 4 standard errors
        assert abs(est.mean().item() - exact) < 4 * est.std().item() / math.sqrt(400)
    assert weighted.std() < 0.5 * plain.std()


def make(**over):
    cfg = from_dict(ProcessConfig, {"name": "embedding", "head": "softmax", "t_sampling": "importance",
                                    "t_bins": 8, **over})
    proc = build_process(cfg, V)
    torch.manual_seed(0)
    mcfg = ModelConfig(name="ddit", n_layer=1, n_head=2, n_embd=32, cond_dim=16, time_conditioning=True)
    return proc, proc.build_network(mcfg, L)


def test_training_fills_the_history_and_it_is_part_of_the_state_dict():
    proc, net = make()
    for _ in range(3):
        out = proc.loss(net, torch.randint(0, V, (16, L)))
        assert math.isfinite(out.loss.item())
    assert net.time_sampler.count.sum().item() == 48
    sd = net.state_dict()
    assert "time_sampler.m2" in sd and "time_sampler.count" in sd
    _, fresh = make()
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.time_sampler.m2, net.time_sampler.m2)


def test_discrete_time_uses_one_bin_per_step():
    proc, net = make(time="discrete", timesteps=10)
    assert net.time_sampler.bins == 10
    out = proc.loss(net, torch.randint(0, V, (20, L)))
    assert math.isfinite(out.loss.item())
    assert net.time_sampler.count.sum().item() == 20


def test_the_bound_with_importance_sampling_matches_the_uniform_one():
    """The same network's bound, estimated with t uniform and with t from a warm proposal, agrees."""
    proc, net = make()
    w = torch.randint(0, V, (256, L))
    with torch.no_grad():
        for _ in range(WARMUP):
            proc.loss(net, w[:64])
        for k in range(net.time_sampler.bins):     # make sure every bin is warm
            while net.time_sampler.count[k] < WARMUP:
                t = torch.full((8,), (k + 0.5) / net.time_sampler.bins)
                x = net.clean_latents(w[:8])
                z, _ = proc.noisy(x, t)
                net.time_sampler.update(t, proc.diffusion_term(x, proc.predict(net, z, t)[1], t) / L)
        assert net.time_sampler.ready
        g = torch.Generator().manual_seed(3)
        imp = torch.cat([proc.nelbo(net, w, g) for _ in range(8)])
        sampler, net.time_sampler = net.time_sampler, None
        plain = torch.cat([proc.nelbo(net, w, g) for _ in range(8)])
        net.time_sampler = sampler
    se = math.hypot(imp.std().item() / math.sqrt(imp.numel()), plain.std().item() / math.sqrt(plain.numel()))
    assert abs(imp.mean().item() - plain.mean().item()) < 4 * se
    assert imp.std() < plain.std()


def test_importance_with_a_training_floor_is_refused_by_name():
    with pytest.raises(ConfigError, match="process.train_t_min"):
        make(train_t_min=0.3)
    with pytest.raises(ConfigError, match="process.t_bins"):
        make(t_bins=0)
