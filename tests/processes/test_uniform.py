"""Uniform-noise diffusion: UDLM (continuous time) and D3PM-uniform (discrete time)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from thunderdlm.errors import ConfigError
from thunderdlm.processes import SampleOptions, UniformConfig, UniformProcess
from thunderdlm.processes.base import StepContext
from thunderdlm.processes.discrete.uniform import categorical_kl, posterior, udlm_rate_kl
from thunderdlm.sampling.loop import run_sampler, transfer_schedule
from tests.processes.synthetic import iid_source

V = 5
DTYPE = torch.float64


def make(**kw):
    return UniformProcess(UniformConfig(**kw), V)


def source(seed=0):
    return iid_source(V, seed, DTYPE)


def one_hot_logits(x0, confidence=60.0):
    return torch.zeros(*x0.shape, V).scatter(-1, x0.unsqueeze(-1), confidence)


# ---- forward process and posterior -------------------------------------------------------------------

def test_no_token_is_added_and_prior_is_uniform():
    p = make()
    assert p.model_vocab_size == V and p.noise_token_id is None
    x = p.prior((4000, 50), torch.device("cpu"), torch.Generator().manual_seed(0))
    freq = torch.bincount(x.flatten(), minlength=V).double() / x.numel()
    assert torch.allclose(freq, torch.full((V,), 1 / V, dtype=DTYPE), atol=0.005)


def test_corruption_keeps_x0_with_probability_alpha_plus_uniform_share():
    """SPEC §4.7.3: P(x_t = x0) = α_t + (1 − α_t)/V, and a changed token is uniform over the others."""
    p = make()
    x0 = torch.randint(0, V, (4000, 50), generator=torch.Generator().manual_seed(1))
    a = torch.full((4000,), 0.3, dtype=DTYPE)
    xt = p.corrupt(x0, a, torch.Generator().manual_seed(2))
    assert abs((xt == x0).double().mean().item() - (0.3 + 0.7 / V)) < 0.005
    at_one = p.corrupt(x0, torch.zeros(4000, dtype=DTYPE), torch.Generator().manual_seed(3))
    assert abs((at_one == x0).double().mean().item() - 1 / V) < 0.005


def bayes_posterior(x0, xt, a_t, a_s):
    """q(x_s | x_t, x0) by brute force: q(x_t | x_s) q(x_s | x0), normalised. Scalars → (V,)."""
    a_ts = a_t / a_s
    vs = torch.arange(V)
    lik = a_ts * (vs == xt).double() + (1 - a_ts) / V
    prior = a_s * (vs == x0).double() + (1 - a_s) / V
    post = lik * prior
    return post / post.sum()


def test_posterior_is_bayes_rule_and_has_the_right_limits():
    """SPEC §4.7.2: sums to 1; at α_s = 1 it is x0; at α_t = α_s it is onehot(x_t)."""
    for x0 in range(V):
        for xt in range(V):
            for a_t, a_s in [(0.2, 0.5), (0.01, 0.9), (0.0, 0.3), (0.7, 0.71)]:
                got = posterior(F.one_hot(torch.tensor([[x0]]), V).double(), torch.tensor([[xt]]),
                                torch.tensor([a_t], dtype=DTYPE), torch.tensor([a_s], dtype=DTYPE))[0, 0]
                torch.testing.assert_close(got, bayes_posterior(x0, xt, a_t, a_s))
            clean = posterior(F.one_hot(torch.tensor([[x0]]), V).double(), torch.tensor([[xt]]),
                              torch.tensor([0.4], dtype=DTYPE), torch.tensor([1.0], dtype=DTYPE))[0, 0]
            torch.testing.assert_close(clean, F.one_hot(torch.tensor(x0), V).double())
            same = posterior(F.one_hot(torch.tensor([[x0]]), V).double(), torch.tensor([[xt]]),
                             torch.tensor([0.4], dtype=DTYPE), torch.tensor([0.4], dtype=DTYPE))[0, 0]
            torch.testing.assert_close(same, F.one_hot(torch.tensor(xt), V).double())


# ---- the continuous-time (UDLM) bound --------------------------------------------------------------------

def duo_nll_per_token(logp, xt, x0, a, da):
    """SPEC §4.5 verbatim (DUO's nll_per_token): term1 − term2 with x̄_θ = N a x_θ + 1 − a."""
    N = V
    a, da = a[:, None], da[:, None]
    xbar_theta = N * a[..., None] * logp.exp() + (1 - a[..., None])
    e = (x0 == xt).double()
    xbar_xt = (1 - a) + N * a * e
    term1 = N * (1 / xbar_xt - 1 / xbar_theta.gather(-1, xt[..., None]).squeeze(-1))
    c = (1 - a) / (N * a + 1 - a)
    lx = xbar_theta.log()
    at = lambda idx: lx.gather(-1, idx[..., None]).squeeze(-1)  # noqa: E731
    term2 = (-(e * c + 1 - e) * (lx.sum(-1) - N * at(xt)) - (1 - e) * (N * a / (1 - a)) * (at(x0) - at(xt))
             + ((N - 1) * c * e - (1 - e) / c) * c.log())
    return (da / (N * a)) * (term1 - term2)


def test_udlm_integrand_equals_duos_nll_per_token():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(2 * torch.randn(6, 8, V, generator=g, dtype=DTYPE), -1)
    x0 = torch.randint(0, V, (6, 8), generator=g)
    xt = torch.randint(0, V, (6, 8), generator=g)
    xt[:, :3] = x0[:, :3]                                   # both cases: x_t = x0 and x_t ≠ x0
    a = torch.rand(6, generator=g, dtype=DTYPE) * 0.98 + 0.01
    da = -torch.rand(6, generator=g, dtype=DTYPE)
    ours = udlm_rate_kl(logp, xt, x0, a, da)
    torch.testing.assert_close(ours, duo_nll_per_token(logp, xt, x0, a, da), rtol=1e-9, atol=1e-12)
    assert (ours > 0).all()


def test_udlm_integrand_is_the_rate_of_the_posterior_kl():
    """ℓ_t = lim_{h→0} KL(q(x_{t−h}|x_t,x0) ‖ q(x_{t−h}|x_t,x_θ)) / h: the continuous-time limit of
    the discrete NELBO with UDLM's parameterisation."""
    p = make()
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(2 * torch.randn(4, 6, V, generator=g, dtype=DTYPE), -1)
    x0, xt = torch.randint(0, V, (4, 6), generator=g), torch.randint(0, V, (4, 6), generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=DTYPE)
    a_t, da = p.alpha(t), p.schedule.dalpha(t)
    exact = udlm_rate_kl(logp, xt, x0, a_t, da)
    h = 1e-6
    a_s = p.alpha(t - h)
    kl = categorical_kl(posterior(F.one_hot(x0, V).double(), xt, a_t, a_s), posterior(logp.exp(), xt, a_t, a_s))
    torch.testing.assert_close(kl / h, exact, rtol=1e-3, atol=1e-6)


def continuous_bound_exact(p, logits_fn, x0, n_nodes=2000):
    """E_{t, x_t}[NELBO(x0)] for L = 1 exactly: Gauss–Legendre in t, x_t enumerated."""
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    t = torch.tensor((nodes + 1) / 2, dtype=DTYPE).repeat_interleave(V)              # (n·V,)
    w = torch.tensor(weights / 2, dtype=DTYPE).repeat_interleave(V)
    xt = torch.arange(V).repeat(n_nodes)[:, None]                                     # (n·V, 1)
    x0s = torch.full_like(xt, x0)
    a = p.alpha(t)
    q = a * (xt[:, 0] == x0).double() + (1 - a) / V                                  # q(x_t | x0)
    terms = p.bound_terms(logits_fn(xt, t), xt, x0s, t)[:, 0]
    return float((w * q * terms).sum()) + p.prior_kl


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_continuous_bound_is_tight_for_the_exact_model(schedule):
    """For an i.i.d. source π the exact UDLM model is x_θ = π (time-independent, SPEC §4.5 optimum
    p(x0^i | x_t^{−i})): the bound then equals −log π(x0) for every x0 (no gap)."""
    pi, _ = source()
    p = make(schedule=schedule)
    for x0 in range(V):
        bound = continuous_bound_exact(p, lambda xt, t: pi.log().expand(len(t), 1, V), x0)
        assert bound == pytest.approx(-math.log(pi[x0]), abs=1e-6)


def test_continuous_bound_is_above_the_entropy_for_other_models():
    pi, h = source()
    p = make()
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    fn = lambda xt, t: (table[xt] + t[:, None, None] * 2).float()  # noqa: E731  depends on x_t and t
    expected = sum(float(pi[x0]) * continuous_bound_exact(p, fn, x0) for x0 in range(V))
    assert expected > h + 1e-3


# ---- the discrete-time (D3PM) bound ------------------------------------------------------------------

def discrete_parts(p, table_fn):
    """L = 1, T small: the exact NELBO(x0) (k and x_k enumerated) and the exact model NLL from the
    reverse chain p(x_T) = U, p_θ(x_{k−1}|x_k). ``table_fn(k)`` → (V, V) logits over x0 for x_k = row."""
    T = p.cfg.steps
    bounds, chain = torch.zeros(V, dtype=DTYPE), torch.full((V,), 1 / V, dtype=DTYPE)
    for k in range(T, 0, -1):
        t = torch.full((V,), k / T, dtype=DTYPE)
        xt = torch.arange(V)[:, None]                                                  # every x_k
        logits = table_fn(k)[:, None, :]                                               # (V, 1, V)
        a_t, a_s = p.alpha(t), p.alpha(t - 1 / T)
        step = reverse_table(p, logits[:, 0], k)                       # (V, V) p_θ(x_{k−1}|x_k)
        chain = chain @ step
        for x0 in range(V):
            q = a_t * (xt[:, 0] == x0).double() + (1 - a_t) / V
            terms = p.bound_terms(logits, xt, torch.full_like(xt, x0), t)[:, 0] / T   # KL per x_k
            bounds[x0] += (q * terms).sum()
    return bounds + p.prior_kl, -chain.log()


def transition_matrices(p, k):
    """D3PM's matrices at step k (SPEC.md §9): Q_k[i, j] = q(x_k = j | x_{k−1} = i) and
    Q̄_{k−1}[z, i] = q(x_{k−1} = i | x0 = z), from α by the uniform rule α·I + (1 − α)/V."""
    T = p.cfg.steps
    a_t, a_s = (float(p.alpha(torch.tensor(j / T, dtype=DTYPE))) for j in (k, k - 1))
    eye, flat = torch.eye(V, dtype=DTYPE), torch.full((V, V), 1 / V, dtype=DTYPE)
    a_ts = a_t / a_s
    return a_ts * eye + (1 - a_ts) * flat, a_s * eye + (1 - a_s) * flat


def reverse_table(p, logits, k):
    """p_θ(x_{k−1} | x_k) for every x_k (rows) written straight from SPEC.md §9 with matrices:
    d3pm:      ∝ Σ_z p̃(z|x_k) Q̄_{k−1}[z, x_{k−1}] Q_k[x_{k−1}, x_k]   (weights p̃(z)·q(x_k|z))
    posterior: Σ_z p̃(z|x_k) q(x_{k−1} | x_k, z)                        (weights p̃(z))
    logits (V, V): row = x_k, column = z."""
    Q, Qbar = transition_matrices(p, k)
    probs = torch.softmax(logits.double(), -1)                          # (x_k, z)
    joint = Qbar[None, :, :] * Q.T[:, None, :]                          # [x_k, z, x_{k−1}] = q(x_{k−1}, x_k | z)
    if p.cfg.parameterization == "d3pm":
        mix = (probs[:, :, None] * joint).sum(1)
    else:
        mix = (probs[:, :, None] * joint / joint.sum(-1, keepdim=True)).sum(1)
    return mix / mix.sum(-1, keepdim=True)


@pytest.mark.parametrize("param", ["d3pm", "posterior"])
def test_discrete_step_term_is_the_kl_to_the_spec_reverse_model(param):
    """bound_terms at t = k/T is T·KL(q(x_{k−1}|x_k,x0) ‖ p_θ(x_{k−1}|x_k)) with p_θ built from
    SPEC.md §9's matrices (every x_k, x0, k of a small case enumerated); the two
    parameterisations differ on the same logits (except at k = T, where x_T carries no evidence)."""
    T = 5
    p = make(time="discrete", steps=T, schedule="d3pm_cosine", parameterization=param)
    other = make(time="discrete", steps=T, schedule="d3pm_cosine",
                 parameterization="posterior" if param == "d3pm" else "d3pm")
    g = torch.Generator().manual_seed(11)
    for k in range(1, T + 1):
        Q, Qbar = transition_matrices(p, k)
        logits = 2 * torch.randn(V, V, generator=g)                     # (x_k, z)
        model = reverse_table(p, logits, k)
        xt = torch.arange(V)[:, None]
        t = torch.full((V,), k / T, dtype=DTYPE)
        for x0 in range(V):
            true = Qbar[x0][None, :] * Q.T                               # [x_k, x_{k−1}]
            true = true / true.sum(-1, keepdim=True)
            want = T * (true * (true.clamp_min(1e-300).log() - model.log())).sum(-1)
            got = p.bound_terms(logits[:, None, :], xt, torch.full_like(xt, x0), t)[:, 0]
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
            alt = other.bound_terms(logits[:, None, :], xt, torch.full_like(xt, x0), t)[:, 0]
            if k < T:                                # at k = T, α = 0: q(x_k|z) is flat, weights agree
                assert (alt - got).abs().max() > 1e-3


def test_d3pm_cosine_is_d3pms_betas_and_the_squared_one_has_its_own_name():
    """SPEC.md §9: ᾱ(k) = cos((k/T + s)/(1 + s)·π/2), β_k = min(1 − ᾱ(k)/ᾱ(k−1), 0.999); the keep
    probability is Π(1 − β_j). At k = T/2 of T = 1000: 0.703 (cos), 0.494 (cos², ``cosine_squared``)."""
    T = 1000
    k = np.arange(T + 1) / T
    abar = np.cos((k + 0.008) / 1.008 * np.pi / 2)
    betas = np.minimum(1 - abar[1:] / abar[:-1], 0.999)
    keep = np.cumprod(1 - betas)                                        # keep[k−1] = α at step k
    p = make(time="discrete", steps=T, schedule="d3pm_cosine")
    ours = p.alpha(torch.arange(1, T + 1, dtype=DTYPE) / T).numpy()
    np.testing.assert_allclose(ours[:-1], keep[:-1], rtol=1e-9, atol=1e-12)
    assert abs(ours[-1]) < 1e-12 and keep[-1] < 1e-5                   # D3PM clips the last β at 0.999
    assert float(p.alpha(torch.tensor(0.5, dtype=DTYPE))) == pytest.approx(0.703, abs=5e-4)
    sq = make(time="discrete", steps=T, schedule="cosine_squared")
    assert float(sq.alpha(torch.tensor(0.5, dtype=DTYPE))) == pytest.approx(0.494, abs=5e-4)


@pytest.mark.parametrize("param", ["d3pm", "posterior"])
def test_discrete_bound_is_above_the_model_nll_for_every_x0(param):
    """The discrete NELBO's exact expectation upper-bounds −log p_θ(x0) of the model's own chain."""
    p = make(time="discrete", steps=6, schedule="d3pm_cosine", parameterization=param)
    g = torch.Generator().manual_seed(4)
    tables = {k: 2 * torch.randn(V, V, generator=g) for k in range(1, 7)}
    bound, nll = discrete_parts(p, lambda k: tables[k])
    assert (bound >= nll - 1e-10).all()
    assert (bound - nll).min() > 1e-4           # a random model is not the true reverse process


@pytest.mark.parametrize("param", ["d3pm", "posterior"])
def test_discrete_bound_is_tight_for_the_exact_model(param):
    """Under an i.i.d. source π the exact model of each parameterisation makes the model's chain the
    true reverse chain, so its NLL is −log π(x0) and the bound equals it (no gap): posterior:
    p̃(z | x_k) = q(x0 = z | x_k) ∝ π(z) q(x_k | z); d3pm: p̃ = π (the evidence q(x_k | z) is in the
    weights already)."""
    pi, _ = source()
    p = make(time="discrete", steps=6, schedule="d3pm_cosine", parameterization=param)

    def exact(k):
        a = p.alpha(torch.tensor(k / 6, dtype=DTYPE))
        lik = a * torch.eye(V, dtype=DTYPE) + (1 - a) / V              # lik[u, z] = q(x_k = u | z)
        if param == "d3pm":
            lik = torch.ones_like(lik)
        return torch.log(lik * pi[None, :]).float()                     # logits over z for x_k = u
    bound, nll = discrete_parts(p, exact)
    torch.testing.assert_close(nll, -pi.log(), rtol=0, atol=1e-5)
    torch.testing.assert_close(bound, nll, rtol=0, atol=1e-5)


# ---- perfect model, MC estimates through the model, training losses ---------------------------------

class Source:
    """A 'network' for an i.i.d. source π: logits that ignore the input, or the D3PM posterior."""

    def __init__(self, pi, posterior_of=None):
        self.pi, self.proc = pi, posterior_of

    def __call__(self, x, sigma=None, causal=None):
        logp = self.pi.log().expand(*x.shape, V)
        if self.proc is not None:                                      # p̃(z|x_k) ∝ π(z) q(x_k|z)
            a = torch.exp(-sigma.double())[:, None, None]
            logp = logp + torch.log(a * V * F.one_hot(x, V) + 1 - a)
        return logp.float()


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_perfect_model_has_zero_bound_and_loss(time, oracle_model):
    """Precise claim: with ε = 0 (α_1 = 0, q(x_1|x0) is exactly the uniform prior) a model whose
    x_θ is onehot(x0) makes every term 0, so each NELBO draw and the loss are 0 (up to e^{−60})."""
    x0 = torch.randint(0, V, (32, 12), generator=torch.Generator().manual_seed(5))
    model = oracle_model(x0, V, confidence=60.0)
    p = make(time=time, steps=50, schedule="d3pm_cosine" if time == "discrete" else "loglinear")
    assert p.prior_kl == 0.0
    assert p.nelbo(model, x0, torch.Generator().manual_seed(0)).abs().max() < 1e-8
    assert p.loss(model, x0).loss.abs().item() < 1e-8


def test_with_eps_the_perfect_model_pays_only_the_prior_kl(oracle_model):
    """With α_1 = ε > 0 the prior term KL(q(x_1|x0) ‖ U) > 0 is model-free; everything else is 0."""
    x0 = torch.randint(0, V, (16, 8), generator=torch.Generator().manual_seed(6))
    p = make(eps=0.05)
    a1 = 0.05
    hit, miss = a1 + (1 - a1) / V, (1 - a1) / V
    kl = hit * math.log(hit * V) + (V - 1) * miss * math.log(miss * V)
    assert p.prior_kl == pytest.approx(kl) and kl > 0
    torch.testing.assert_close(p.nelbo(oracle_model(x0, V, 60.0), x0).double(),
                               torch.full((16,), kl, dtype=DTYPE), rtol=0, atol=1e-8)


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_bound_through_the_model_matches_the_source_entropy(time):
    """Monte Carlo through ``nelbo`` (corruption, conditioning, batching) with the exact model of an
    i.i.d. source: the mean is the entropy H(π) (continuous: exactly; discrete: up to the σ clamp
    of the conditioning, which can only add)."""
    pi, h = source()
    p = make(time=time, steps=200, schedule="loglinear" if time == "continuous" else "d3pm_cosine")
    x0 = torch.multinomial(pi, 4096 * 8, replacement=True,
                           generator=torch.Generator().manual_seed(7)).view(4096, 8)
    model = Source(pi, posterior_of=p if p.reads_posterior else None)
    est = torch.cat([p.nelbo(model, x0, torch.Generator().manual_seed(s)) for s in range(2)])
    emp = float(-(pi.log()[x0]).mean())                                # the sample's own −log π
    se = float(est.std()) / math.sqrt(est.numel())
    assert abs(float(est.mean()) - emp) < 4 * se + 2e-3, (float(est.mean()), emp, h)


def test_training_losses():
    x0 = torch.randint(0, V, (8, 6), generator=torch.Generator().manual_seed(8))
    model = Source(torch.full((V,), 1 / V, dtype=DTYPE))
    for loss in ("nelbo", "ce", "hybrid"):
        out = make(time="discrete", steps=10, loss=loss).loss(model, x0)
        assert torch.isfinite(out.loss) and out.loss.item() > 0
        if loss == "ce":
            assert out.loss.item() == pytest.approx(math.log(V), rel=1e-5)   # a uniform model's CE
    with pytest.raises(ConfigError, match="process.loss"):
        UniformConfig(loss="ce")                                     # continuous time: not consistent
    with pytest.raises(ConfigError, match="process.steps"):
        UniformConfig(steps=0)


def test_loss_is_differentiable_and_finite_at_t_one():
    """t = 1 (α = 0) is the integrand's limit 0, with finite gradients."""
    p = make()
    logits = torch.randn(3, 4, V, requires_grad=True)
    x0, xt = torch.randint(0, V, (3, 4)), torch.randint(0, V, (3, 4))
    terms = p.bound_terms(logits, xt, x0, torch.tensor([1.0, 0.5, 1e-4], dtype=DTYPE))
    assert terms[0].abs().max() == 0 and torch.isfinite(terms).all()
    terms.sum().backward()
    assert torch.isfinite(logits.grad).all()


# ---- sampling ------------------------------------------------------------------------------------------

def test_last_step_draws_clean_tokens_from_the_prediction(oracle_model):
    """At s = 0 (α_s = 1) the step samples x0 from the model's posterior: a perfect model returns x0."""
    x0 = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(9))
    for time in ("continuous", "discrete"):
        p = make(time=time)
        editable = torch.ones(4, 16, dtype=torch.bool)
        res = run_sampler(p, oracle_model(x0, V, 60.0), x0, editable, steps=8,
                          generator=torch.Generator().manual_seed(0))
        assert torch.equal(res.tokens, x0) and res.nfe == 8


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_confidence_remasking_commits_the_scheduled_count_and_freezes_it(remasking, random_model):
    """The step commits exactly n_commit undecided positions per row and never changes them again."""
    p = make()
    model = random_model(V)
    x = p.prior((2, 20), torch.device("cpu"), torch.Generator().manual_seed(0))
    ctx = StepContext(t=1.0, s=1.0, editable=torch.ones(2, 20, dtype=torch.bool),
                      options=SampleOptions(remasking=remasking), generator=torch.Generator().manual_seed(1))
    schedule = transfer_schedule(torch.tensor([20, 20]), 5)
    frozen = {}
    for j in range(5):
        ctx.t, ctx.s, ctx.n_commit = 1 - j / 5, 1 - (j + 1) / 5, schedule[:, j]
        x = p.step(model, x, ctx).x
        decided = ctx.cache["decided"]
        assert decided.sum(dim=1).tolist() == schedule[:, : j + 1].sum(dim=1).tolist()
        for pos, tok in frozen.items():
            assert x[pos] == tok
        frozen.update({tuple(i.tolist()): x[tuple(i.tolist())].item() for i in decided.nonzero()})
    assert len(frozen) == 40


def test_step_context_without_commit_is_ancestral(random_model):
    p = make()
    x = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(10))
    ctx = StepContext(t=0.5, s=0.25, editable=torch.ones(2, 10, dtype=torch.bool), options=SampleOptions(),
                      generator=torch.Generator().manual_seed(1))
    out = p.step(random_model(V), x, ctx)
    assert out.x.shape == x.shape and ctx.nfe == 1 and out.x.max() < V
