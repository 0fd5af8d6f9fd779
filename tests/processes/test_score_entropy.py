"""Score-entropy discrete diffusion (SEDD): graphs, score entropy, predictors, bound (SPEC §3)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from thunderdlm.errors import ConfigError
from thunderdlm.processes import SampleOptions, ScoreEntropyConfig, ScoreEntropyProcess
from thunderdlm.processes.base import StepContext
from thunderdlm.processes.discrete.graphs import Absorb, Uniform
from thunderdlm.sampling.loop import run_sampler
from tests.processes.synthetic import iid_source

V = 6
DTYPE = torch.float64
GRAPHS = [Absorb(V), Uniform(V)]


def make(**kw):
    return ScoreEntropyProcess(ScoreEntropyConfig(**kw), V)


def source(seed=0):
    return iid_source(V, seed, DTYPE)


def scalars(*xs):
    return [torch.tensor([x], dtype=DTYPE) for x in xs]


# ---- graphs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_rate_matrix_rows_sum_to_zero_and_transition_is_its_exponential(graph):
    Q = graph.rate_matrix()
    torch.testing.assert_close(Q.sum(1), torch.zeros(graph.dim, dtype=DTYPE))
    assert (Q - torch.diag(torch.diag(Q)) >= 0).all()
    for sigma in (0.05, 1.3, 7.0):
        torch.testing.assert_close(graph.transition_matrix(math.exp(-sigma)), torch.linalg.matrix_exp(sigma * Q))


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_sample_transition_follows_the_transition_matrix(graph):
    """SPEC §3.9.5 (uniform): P(x_t = x0) = e^{−σ} + (1 − e^{−σ})/V; absorb: masked w.p. 1 − e^{−σ}."""
    x0 = torch.full((20000, 10), 2)
    alpha = torch.full((20000,), math.exp(-0.8), dtype=DTYPE)
    xt = graph.sample_transition(x0, alpha, torch.Generator().manual_seed(0))
    freq = torch.bincount(xt.flatten(), minlength=graph.dim).double() / xt.numel()
    torch.testing.assert_close(freq, graph.transition_matrix(math.exp(-0.8))[2], rtol=0, atol=0.005)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_euler_probabilities_are_one_plus_dt_times_the_reverse_rates(graph):
    """The Euler step equals onehot(x) + Δt·σ'·R with R[x→y] = Q[y, x]·s_y built from the dense Q,
    and the reverse-rate rows sum to 0 (SPEC §3.5, §3.9.6)."""
    g = torch.Generator().manual_seed(1)
    param = torch.randn(1, 12, graph.dim, generator=g, dtype=DTYPE)
    xt = torch.randint(0, graph.dim, (1, 12), generator=g)
    alpha, dt, dsigma = scalars(math.exp(-1.1), 0.01, 2.5)
    weight = dsigma / torch.expm1(-torch.log(alpha))
    if graph.absorb:   # s = r·e^ℓ on masked positions; visible rows have no reverse rate
        log_s = param + (torch.log(alpha) - torch.log1p(-alpha))
    else:
        param = param.scatter(-1, xt.unsqueeze(-1), 0.0)
        log_s = param
    R = graph.rate_matrix()[:, xt[0]].T[None] * log_s.exp()                          # Q[y, x]·s_y
    R = R.scatter(-1, xt.unsqueeze(-1), 0.0)
    R = R - F.one_hot(xt, graph.dim) * R.sum(-1, keepdim=True)
    torch.testing.assert_close(R.sum(-1), torch.zeros(1, 12, dtype=DTYPE))
    want = F.one_hot(xt, graph.dim).double() + dt * dsigma * R
    torch.testing.assert_close(graph.euler_probs(param, xt, alpha, dt, dsigma, weight), want)


# ---- score entropy -------------------------------------------------------------------------------------

def sedd_absorb_se(log_s, x0, sigma):
    """SPEC §3.4, masked position: Σ_{y≠M} s_y − r log s_{x0} + r(log r − 1), r = 1/(e^σ − 1)."""
    r = 1 / math.expm1(sigma)
    return log_s[..., :V].exp().sum(-1) - r * log_s.gather(-1, x0[..., None]).squeeze(-1) + r * (math.log(r) - 1)


def sedd_uniform_se(S, x, x0, sigma):
    """SPEC §3.4 uniform graph verbatim: pos − neg + const."""
    e1 = math.expm1(sigma)
    rho = 1 - V / (e1 + V)
    at = lambda t, i: t.gather(-1, i[..., None]).squeeze(-1)  # noqa: E731
    neg = S.mean(-1) - at(S, x) / V
    neg = torch.where(x == x0, rho * neg, at(S, x0) / e1 + neg)
    const = torch.where(x == x0, torch.full_like(neg, (V - 1) / V * rho * (math.log(rho) - 1)),
                        torch.full_like(neg, ((-math.log(rho) - 1) / rho - (V - 2)) / V))
    pos = S.exp().mean(-1) - at(S.exp(), x) / V
    return pos - neg + const


@pytest.mark.parametrize("sigma", [0.01, 0.7, 4.0])
def test_absorbing_score_entropy_matches_sedd_is_nonnegative_and_zero_at_the_optimum(sigma):
    g, graph = torch.Generator().manual_seed(2), Absorb(V)
    alpha, dsigma = scalars(math.exp(-sigma), 1.7)
    weight = dsigma / math.expm1(sigma)
    x0 = torch.randint(0, V, (50, 8), generator=g)
    xt = torch.where(torch.rand(50, 8, generator=g) < 0.5, x0, torch.full_like(x0, V))
    ell = 3 * torch.randn(50, 8, V + 1, generator=g, dtype=DTYPE)
    se = graph.score_entropy(ell, xt, x0, alpha, dsigma, weight)
    log_s = ell + math.log(1 / math.expm1(sigma))
    masked = xt == V
    torch.testing.assert_close(se[masked], 1.7 * sedd_absorb_se(log_s, x0, sigma)[masked])
    assert (se[masked] > 0).all() and (se[~masked] == 0).all()
    best = torch.full_like(ell, -1e4).scatter(-1, x0.unsqueeze(-1), 0.0)             # s = r·onehot(x0)
    assert graph.score_entropy(best, xt, x0, alpha, dsigma, weight).abs().max() == 0


@pytest.mark.parametrize("sigma", [0.01, 0.7, 4.0])
def test_uniform_score_entropy_matches_sedd_is_nonnegative_and_zero_at_the_optimum(sigma):
    g, graph = torch.Generator().manual_seed(3), Uniform(V)
    alpha, dsigma = scalars(math.exp(-sigma), 1.7)
    x0 = torch.randint(0, V, (50, 8), generator=g)
    xt = torch.where(torch.rand(50, 8, generator=g) < 0.5, x0, torch.randint(0, V, (50, 8), generator=g))
    S = (2 * torch.randn(50, 8, V, generator=g, dtype=DTYPE)).scatter(-1, xt.unsqueeze(-1), 0.0)
    se = graph.score_entropy(S, xt, x0, alpha, dsigma, None)
    torch.testing.assert_close(se, 1.7 * sedd_uniform_se(S, xt, x0, sigma))
    assert (se > 0).all()
    best = graph.log_ratio(xt, x0, alpha)                                             # s = r exactly
    assert graph.score_entropy(best, xt, x0, alpha, dsigma, None).abs().max() < 1e-12


# ---- the analytic (Tweedie) step ---------------------------------------------------------------------

def test_analytic_absorbing_step_sums_to_one_and_unmasks_at_the_exact_rate():
    """SPEC §3.6 / §3.9.4: on a masked position the probabilities sum to 1 (any score); with the
    exact score s_y = p(y)/(e^σ − 1) the position unmasks with probability (e^{Δσ} − 1)/(e^σ − 1),
    to y ∝ p(y); visible positions stay."""
    g, graph = torch.Generator().manual_seed(4), Absorb(V)
    sigma_t, sigma_s = 2.0, 1.2
    a_t, a_s = scalars(math.exp(-sigma_t), math.exp(-sigma_s))
    xt = torch.full((1, 7), V)
    xt[0, 0] = 3
    rand = graph.analytic_probs(2 * torch.randn(1, 7, V + 1, generator=g, dtype=DTYPE), xt, a_t, a_s)
    torch.testing.assert_close(rand.sum(-1), torch.ones(1, 7, dtype=DTYPE))
    pi, _ = source()
    exact = graph.analytic_probs(torch.cat([pi.log(), torch.zeros(1, dtype=DTYPE)]).expand(1, 7, V + 1),
                                 xt, a_t, a_s)
    unmask = math.expm1(sigma_t - sigma_s) / math.expm1(sigma_t)
    torch.testing.assert_close(exact[0, 1:, :V], (unmask * pi).expand(6, V))
    torch.testing.assert_close(exact[0, 1:, V], torch.full((6,), 1 - unmask, dtype=DTYPE))
    torch.testing.assert_close(exact[0, 0], F.one_hot(torch.tensor(3), V + 1).double())


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.name)
def test_analytic_step_with_the_exact_score_is_the_exact_reverse_kernel(graph):
    """For one token from an i.i.d. source π, Tweedie τ-leaping with the true score is exact:
    probs[x, y] = q(x_s = y | x_t = x) = exp(ΔσQ)[y, x]·p_s(y)/p_t(x)."""
    pi, _ = source()
    sigma_t, sigma_s = 1.5, 0.6
    a_t, a_s = scalars(math.exp(-sigma_t), math.exp(-sigma_s))
    p0 = torch.cat([pi, torch.zeros(graph.dim - V, dtype=DTYPE)])
    p_t = p0 @ graph.transition_matrix(float(a_t))
    p_s = p0 @ graph.transition_matrix(float(a_s))
    step = graph.transition_matrix(float(a_t / a_s))                                  # x_s → x_t
    xs = torch.arange(graph.dim)[None]                                                 # every x_t
    if graph.absorb:                                   # s_y = r·π_y: ℓ = log s − log r = log π
        param = torch.cat([pi.log(), torch.zeros(1, dtype=DTYPE)]).expand(1, graph.dim, V + 1)
    else:
        param = (p_t.log()[None, :] - p_t.log()[:, None])[None]                       # log p_t(y)/p_t(x)
    probs = graph.analytic_probs(param, xs, a_t, a_s)[0]                               # (x_t, y)
    want = step.T * p_s[None, :] / p_t[:, None]
    rows = p_t > 0
    torch.testing.assert_close(probs[rows], want[rows])


@pytest.mark.parametrize("predictor", ["euler", "analytic"])
def test_absorbing_steps_never_change_visible_tokens(predictor, random_model):
    p = make(predictor=predictor)
    x = torch.randint(0, V, (3, 30), generator=torch.Generator().manual_seed(5))
    x[:, ::3] = V
    ctx = StepContext(t=0.6, s=0.5, editable=torch.ones(3, 30, dtype=torch.bool), options=SampleOptions(),
                      generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        out = p.step(random_model(V + 1), x, ctx).x
        visible = x != V
        assert torch.equal(out[visible], x[visible])
        x = out


def test_scale_by_sigma_gives_the_right_total_score_at_init():
    """SPEC §3.9.2: a zero network output has Σ_{y≠M} s_y = 1/(e^σ − 1) on masked positions."""
    p = make()
    for t in (0.05, 0.5, 0.99):
        tt = torch.tensor([t], dtype=DTYPE)
        alpha = p.noise.alpha(tt)
        ell = p.score_param(torch.zeros(1, 4, V + 1), torch.full((1, 4), V), alpha)
        total = (ell[..., :V].exp().sum(-1) * alpha / (1 - alpha))                     # s = r·e^ℓ
        torch.testing.assert_close(total, (1 / torch.expm1(p.noise.sigma(tt))).expand(1, 4))


# ---- the bound ----------------------------------------------------------------------------------------

def exact_bounds(p, model, n_nodes=400):
    """E_{t, x_t}[NELBO(x0)] for L = 1 and every x0 (V,): Gauss–Legendre in t, x_t enumerated over
    the graph's states, q(x_t | x0) = α·onehot(x0) + (1 − α)·π_limit."""
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    D = p.graph.dim
    t = torch.tensor((nodes + 1) / 2, dtype=DTYPE).repeat_interleave(D)               # (n·D,)
    w = torch.tensor(weights / 2, dtype=DTYPE).repeat_interleave(D)
    xt = torch.arange(D).repeat(n_nodes)[:, None]                                      # (n·D, 1)
    alpha = p.noise.alpha(t)
    param = p.score_param(model(xt, p.conditioning(t)), xt, alpha)
    limit = p.graph.transition_matrix(0.0)[0]                                          # π_limit (D,)
    bounds = torch.zeros(V, dtype=DTYPE)
    for x0 in range(V):
        q = alpha * (xt[:, 0] == x0).double() + (1 - alpha) * limit[xt[:, 0]]
        terms = p.graph.score_entropy(param, xt, torch.full_like(xt, x0), alpha, p.noise.dsigma(t),
                                      p.noise.nelbo_weight(t))[:, 0]
        bounds[x0] = (w * q * terms).sum()
    return bounds + p.bound_constant


class Exact:
    """The true score of an i.i.d. source π as a 'network' (reads σ as the process feeds it)."""

    def __init__(self, pi, graph):
        self.pi, self.graph = pi, graph

    def __call__(self, x, sigma=None, causal=None):
        if self.graph == "absorb":     # scale_by_sigma: out = log π + log V makes s_y = r·π_y
            out = torch.cat([self.pi.log(), torch.zeros(1, dtype=DTYPE)]) + math.log(V)
            return out.expand(*x.shape, V + 1).float()
        a = torch.exp(-sigma.double())[:, None, None]
        log_pt = torch.log(a * self.pi + (1 - a) / V)                                   # (B, 1, V)
        return (log_pt - log_pt.expand(*x.shape, V).gather(-1, x.unsqueeze(-1))).float()


def test_absorbing_bound_is_tight_for_the_exact_score():
    """Log-linear noise, ε = 0: the chain ends exactly in the all-mask prior and the exact score
    gives NELBO(x0) = −log π(x0) for every x0 (the bound has no gap)."""
    pi, _ = source()
    p = make()
    torch.testing.assert_close(exact_bounds(p, Exact(pi, "absorb"), n_nodes=50), -pi.log(), rtol=0, atol=1e-6)


def test_uniform_graph_bound_with_geometric_noise_is_valid_and_nearly_tight():
    """Geometric noise starts at σ_min > 0: E_π[bound] ≥ H(π) and exceeds it by at most the
    reconstruction channel's cost (the prior KL at σ_max = 20 is ~1e-8)."""
    pi, h = source()
    p = make(graph="uniform", noise="geometric")
    expected = float((pi * exact_bounds(p, Exact(pi, "uniform"))).sum())
    assert h <= expected <= h + p.bound_constant + 1e-4
    assert p.bound_constant < 2e-3


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_bound_through_the_model_matches_the_source_entropy(graph):
    """Monte Carlo through ``nelbo`` with the exact score of an i.i.d. source: mean ≈ H(π)."""
    pi, h = source()
    p = make(graph=graph, noise="loglinear" if graph == "absorb" else "geometric", predictor="analytic")
    x0 = torch.multinomial(pi, 4096 * 8, replacement=True,
                           generator=torch.Generator().manual_seed(7)).view(4096, 8)
    est = torch.cat([p.nelbo(Exact(pi, graph), x0, torch.Generator().manual_seed(s)) for s in range(2)])
    emp = float(-(pi.log()[x0]).mean())
    se = float(est.std()) / math.sqrt(est.numel())
    assert abs(float(est.mean()) - emp) < 4 * se + p.bound_constant + 1e-3, (float(est.mean()), emp, h)


def test_zero_network_loss_is_finite_with_gradients_at_t_one():
    """ε = 0: σ(1) = ∞, yet the scaled absorbing loss and its gradient stay finite."""
    p = make()
    out = torch.zeros(2, 5, V + 1, requires_grad=True)
    x0 = torch.randint(0, V, (2, 5))
    t = torch.tensor([1.0, 0.3], dtype=DTYPE)
    alpha = p.noise.alpha(t)
    xt = torch.full_like(x0, V)
    se = p.graph.score_entropy(p.score_param(out, xt, alpha), xt, x0, alpha, p.noise.dsigma(t),
                               p.noise.nelbo_weight(t))
    assert torch.isfinite(se).all()
    se.sum().backward()
    assert torch.isfinite(out.grad).all()


# ---- sampling and config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("graph", ["absorb", "uniform"])
@pytest.mark.parametrize("predictor", ["euler", "analytic"])
def test_sampling_ends_with_real_tokens(graph, predictor, random_model):
    p = make(graph=graph, predictor=predictor, noise="geometric" if graph == "uniform" else "loglinear")
    x = torch.zeros(2, 24, dtype=torch.long)
    editable = torch.ones(2, 24, dtype=torch.bool)
    for opts in (SampleOptions(), SampleOptions(temperature=0.5, top_p=0.9), SampleOptions(temperature=0.0)):
        res = run_sampler(p, random_model(p.model_vocab_size), x, editable, steps=10, options=opts,
                          generator=torch.Generator().manual_seed(0))
        assert res.tokens.max() < V and res.nfe <= 11                 # 10 steps + the denoiser
        assert graph == "absorb" or res.nfe == 11                     # absorb skips steps with no mask left


def test_exact_score_sampler_reproduces_the_source():
    """With the exact score of an i.i.d. source, samples (analytic predictor) follow π."""
    pi, _ = source()
    p = make(predictor="analytic")
    res = run_sampler(p, Exact(pi, "absorb"), torch.zeros(400, 16, dtype=torch.long),
                      torch.ones(400, 16, dtype=torch.bool), steps=8, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(res.tokens.flatten(), minlength=V).double() / res.tokens.numel()
    torch.testing.assert_close(freq, pi, rtol=0, atol=0.01)


def test_config_checks_name_the_field():
    with pytest.raises(ConfigError, match="process.eps"):
        ScoreEntropyConfig(graph="uniform")                           # loglinear with σ(1) = ∞
    with pytest.raises(ConfigError, match="process.scale_by_sigma"):
        ScoreEntropyConfig(scale_by_sigma=False)
    with pytest.raises(ConfigError, match="process.sigma_min"):
        ScoreEntropyConfig(sigma_min=5.0, sigma_max=1.0)
    assert make().model_vocab_size == V + 1 and make().noise_token_id == V
    uni = make(graph="uniform", noise="geometric")
    assert uni.model_vocab_size == V and uni.noise_token_id is None


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_confidence_remasking_commits_the_scheduled_count(graph, random_model):
    """Absorb: exactly n_commit masked positions are unmasked per step (LLaDA); uniform graph:
    n_commit undecided positions are frozen per step and never change again; no denoiser after."""
    from thunderdlm.sampling.loop import transfer_schedule
    p = make(graph=graph, noise="geometric" if graph == "uniform" else "loglinear")
    model = random_model(p.model_vocab_size)
    x = p.prior((2, 20), torch.device("cpu"), torch.Generator().manual_seed(0))
    ctx = StepContext(t=1.0, s=1.0, editable=torch.ones(2, 20, dtype=torch.bool),
                      options=SampleOptions(remasking="low_confidence"), generator=torch.Generator().manual_seed(1))
    schedule = transfer_schedule(torch.tensor([20, 20]), 5)
    frozen = {}
    for j in range(5):
        ctx.t, ctx.s, ctx.n_commit = 1 - j / 5, 1 - (j + 1) / 5, schedule[:, j]
        x = p.step(model, x, ctx).x
        done = (x != V) if graph == "absorb" else ctx.cache["decided"]
        assert done.sum(dim=1).tolist() == schedule[:, : j + 1].sum(dim=1).tolist()
        for pos, tok in frozen.items():
            assert x[pos] == tok
        frozen.update({tuple(i.tolist()): x[tuple(i.tolist())].item() for i in done.nonzero()})
    assert torch.equal(p.finalize(model, x, ctx), x) and ctx.nfe == 5
