"""Continuous embedding diffusion: the properties issue 4 asks for (SPEC §5, DESIGN §4)."""
import math

import pytest
import torch

from thunderdlm.config import from_dict
from thunderdlm.errors import ConfigError
from thunderdlm.models import ModelConfig
from thunderdlm.processes import ProcessConfig, SampleOptions, build_process
from thunderdlm.processes.embedding.schedules import (ALPHA_BAR_MAX, ALPHA_BAR_MIN, GAUSSIAN_SCHEDULES,
                                                       build_gaussian_schedule)
from thunderdlm.processes.base import StepContext
from thunderdlm.sampling.loop import run_sampler

V, L = 84, 24            # the Shakespeare character vocabulary's size


def make(**over):
    cfg = from_dict(ProcessConfig, {"name": "embedding", **over})
    proc = build_process(cfg, V)
    torch.manual_seed(0)
    mcfg = ModelConfig(name="ddit", n_layer=1, n_head=2, n_embd=32, cond_dim=16, time_conditioning=True)
    return proc, proc.build_network(mcfg, L)


def perturb(net, scale=0.2):
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return net


# ---- schedules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(GAUSSIAN_SCHEDULES))
def test_alpha_bar_is_monotone_with_the_stated_end_points(name):
    s = build_gaussian_schedule(name)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    a = s.alpha_bar(t)
    assert a[0].item() == pytest.approx(ALPHA_BAR_MAX, abs=1e-12)
    assert a[-1].item() == pytest.approx(ALPHA_BAR_MIN, abs=1e-12)
    assert (a[1:] < a[:-1]).all()
    # the analytic derivatives (used by the bound) match finite differences
    tm = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    fd = (s.alpha_bar(tm + h) - s.alpha_bar(tm - h)) / (2 * h)
    assert torch.allclose(s.dalpha_bar(tm), fd, rtol=1e-5, atol=1e-8)
    fd_snr = (s.snr(tm + h) - s.snr(tm - h)) / (2 * h)
    assert torch.allclose(s.dsnr(tm), fd_snr, rtol=1e-4)
    assert (s.dsnr(tm) < 0).all()


def test_sqrt_schedule_noises_fast_at_small_t():
    sqrt, cosine = build_gaussian_schedule("sqrt"), build_gaussian_schedule("cosine")
    t = torch.tensor(0.1, dtype=torch.float64)
    assert sqrt.alpha_bar(t) < 0.75 < cosine.alpha_bar(t)


# ---- the bridge and rounding -------------------------------------------------------------------

def test_bridge_latents_are_standardised():
    _, net = make()
    e = net.latents()                                                   # (V, d)
    assert e.shape == (V, 16)
    assert torch.allclose(e.mean(-1), torch.zeros(V), atol=1e-5)
    assert torch.allclose(e.var(-1, unbiased=False), torch.ones(V), atol=1e-2)   # LayerNorm eps


@pytest.mark.parametrize("over", [{}, {"rounding_metric": "cosine", "rounding_temperature": 0.1},
                                  {"rounding_metric": "dot"}, {"head": "softmax"}])
def test_rounding_clean_latents_recovers_the_tokens_after_a_short_fit(over):
    proc, net = make(**over)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        x0 = torch.randint(0, V, (8, L), generator=g)
        loss = proc.loss(net, x0).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = torch.arange(V)[None, :L].repeat(1, 1)
    every = torch.arange(V)[None, :]                                    # the whole vocabulary
    with torch.no_grad():
        lat = net.embed(net.source)[None]                               # (1, V, d)
        for rule in ("l2", "cosine", "logits"):
            proc.cfg.final_rounding = rule
            got = proc.round(net, lat)
            acc = (got == every).float().mean().item()
            assert acc >= 0.999, (rule, acc)
    assert w.shape[1] == L


# ---- losses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_anchor_loss_is_zero_at_the_anchor_and_positive_elsewhere(metric):
    proc, net = make(anchor_weight=1.0, anchor_metric=metric)
    w = torch.randint(0, V, (2, L))
    x = net.clean_latents(w)
    assert proc.anchor_loss(net, x, x, w).item() == pytest.approx(0.0, abs=1e-6)
    assert proc.anchor_loss(net, x + torch.randn_like(x), x, w).item() > 1e-3


def test_embedding_anchor_is_zero_when_the_inverse_projection_returns_the_embeddings():
    proc, net = make(bridge=False, anchor_weight=1.0, anchor_target="embedding")
    with torch.no_grad():                                               # U = I, b = 0
        net.anchor_proj.weight.copy_(torch.eye(32))
        net.anchor_proj.bias.zero_()
    w = torch.randint(0, V, (2, L))
    x0_hat = net.source[w]                                              # the raw embeddings E_w
    assert proc.anchor_loss(net, x0_hat, x0_hat, w).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("over", [
    {}, {"parameterization": "eps"}, {"parameterization": "v"}, {"parameterization": "v", "diffusion_loss": "eps"},
    {"head": "softmax"}, {"diffusion_loss": "vlb"}, {"self_conditioning": True},
    {"head": "softmax", "input_posterior": True}, {"input_posterior": True, "self_conditioning": True},
    {"time": "discrete", "timesteps": 50}, {"bridge": False},
    {"anchor_weight": 0.5, "anchor_target": "embedding", "anchor_metric": "cosine"}])
def test_every_loss_is_finite_and_trains_every_parameter(over):
    proc, net = make(**over)
    perturb(net, 0.05)
    out = proc.loss(net, torch.randint(0, V, (4, L)))
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing          # DDP needs a gradient for every parameter
    for term in ("mse", "round_ce"):
        assert term in out.metrics


def test_frozen_embeddings_stay_fixed():
    proc, net = make(freeze_embeddings=True)
    before = net.source.detach().clone()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    proc.loss(net, torch.randint(0, V, (4, L))).loss.backward()
    opt.step()
    assert torch.equal(net.source, before)


def test_bad_configs_are_named():
    with pytest.raises(ConfigError, match="process.diffusion_loss"):
        make(parameterization="x0", diffusion_loss="eps")
    with pytest.raises(ConfigError, match="process.head"):
        make(head="softmax", parameterization="eps")
    with pytest.raises(ConfigError, match="parameterization.*did you mean 'eps'"):
        make(parameterization="epss")
    proc = build_process(from_dict(ProcessConfig, {"name": "embedding"}), V)
    with pytest.raises(ConfigError, match="model.time_conditioning"):
        proc.build_network(ModelConfig(name="ddit", n_layer=1, n_head=2, n_embd=32, cond_dim=16,
                                       time_conditioning=False), L)


# ---- the bound ---------------------------------------------------------------------------------

def test_bound_terms_have_their_closed_forms():
    proc, net = make(head="softmax")
    w = torch.randint(0, V, (3, L))
    x = net.clean_latents(w)
    a1 = ALPHA_BAR_MIN
    expected = 0.5 * (a1 * x.square() - a1 - math.log(1 - a1)).sum(dim=(1, 2))
    assert torch.allclose(proc.prior_term(x), expected, rtol=1e-5)
    # a perfect x̂0 costs nothing; the diffusion weight is −½ SNR'(t)
    t = torch.full((3,), 0.4)
    assert torch.equal(proc.diffusion_term(x, x, t), torch.zeros(3))
    err = proc.diffusion_term(x, x + 1.0, t)
    w_t = -0.5 * proc.schedule.dsnr(torch.tensor(0.4, dtype=torch.float64)).item()
    assert torch.allclose(err, torch.full((3,), w_t * L * x.shape[-1]), rtol=1e-4)
    # separated latents at σ_0 = 0.01 decode exactly
    assert proc.decoder_term(x, w, net.latents()).max().item() < 1e-6


def test_discrete_time_weights_sum_to_the_continuous_integral():
    """Σ_k ½(SNR(t_{k−1}) − SNR(t_k)) = ½(SNR(0) − SNR(1)) = ∫ −½ SNR'(t) dt: the same total weight."""
    proc, _ = make(time="discrete", timesteps=200)
    s = proc.schedule
    k = torch.arange(1, 201, dtype=torch.float64) / 200
    total = (0.5 * (s.snr(k - 1 / 200) - s.snr(k))).sum()
    t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    integral = torch.trapezoid(-0.5 * s.dsnr(t), t)
    assert total.item() == pytest.approx(integral.item(), rel=1e-3)


@pytest.mark.slow
def test_bound_is_above_the_entropy_of_a_known_source(tmp_path):
    """Train briefly on a Markov chain of known entropy: the bound never falls below it."""
    from tests.processes.test_bound_validity import markov_chain
    import thunderdlm
    from thunderdlm.data import prepare_data
    from thunderdlm.run_config import RunConfig
    from thunderdlm.train import Trainer

    text, h_true = markov_chain(60_000)
    (tmp_path / "chain.txt").write_text(text)
    data = prepare_data(tmp_path / "d", source=None, paths=[str(tmp_path / "chain.txt")], tokenizer="char")
    cfg = RunConfig.from_data({
        "data": {"dir": str(data), "seq_len": 16},
        "model": {"name": "ddit", "n_layer": 2, "n_head": 2, "n_embd": 32, "cond_dim": 16,
                  "time_conditioning": True},
        "process": {"name": "embedding", "latent_dim": 8, "head": "softmax"},
        "train": {"batch_size": 64, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 20, "max_steps": 300,
                  "eval_interval": 0, "ckpt_interval": 300},
        "seed": 0})
    Trainer(cfg, tmp_path / "run", show=False).fit()
    res = thunderdlm.load(tmp_path / "run").evaluate(windows=0, t_samples=8)
    bound, se = res["nats_per_token"], res["stderr"]
    print(f"true entropy {h_true:.4f}, embedding bound {bound:.4f} ± {se:.4f}")
    assert bound >= h_true - 3 * se
    assert bound < math.log(5) + 0.5          # and it learned something: near the uniform's log 5


# ---- sampling ----------------------------------------------------------------------------------

def sample(proc, net, steps, seed, x=None, editable=None):
    if x is None:
        x = torch.zeros(2, L, dtype=torch.long)
        editable = torch.ones(2, L, dtype=torch.bool)
    return run_sampler(proc, net, x, editable, steps=steps, generator=torch.Generator().manual_seed(seed))


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_the_ddpm_posterior():
    proc, net = make()
    z, x0_hat = torch.randn(2, L, 16), torch.randn(2, L, 16)
    t, s = torch.full((2,), 0.6), torch.full((2,), 0.45)
    a = proc.reverse_update(z, x0_hat, t, s, torch.Generator().manual_seed(0))
    b = proc.reverse_update(z, x0_hat, t, s, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)                                            # η = 0: no noise drawn in
    proc.cfg.ddim_eta = 1.0
    ddim = proc.reverse_update(z, x0_hat, t, s, torch.Generator().manual_seed(7))
    assert not torch.allclose(ddim, a)
    proc.cfg.sampler = "ddpm"
    ddpm = proc.reverse_update(z, x0_hat, t, s, torch.Generator().manual_seed(7))
    assert torch.allclose(ddim, ddpm, atol=1e-5)                        # SPEC §5.1


def test_one_ddim_step_equals_rounding_x0_hat_of_the_prior_draw():
    proc, net = perturb(make()[1], 0.2) and make()
    perturb(net, 0.2)
    res = sample(proc, net, steps=1, seed=3)
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(2, L, 16, generator=g)                             # the step's first draw
    with torch.no_grad():
        _, x0_hat, logits = proc.predict(net, z1, torch.ones(2))
        expected = proc.round(net, x0_hat, logits)
    assert torch.equal(res.tokens, expected)


def test_prompt_positions_never_change_and_the_model_reads_them():
    proc, net = make()
    perturb(net, 0.3)
    x = torch.randint(0, V, (2, L))
    editable = torch.zeros(2, L, dtype=torch.bool)
    editable[:, 12:] = True
    seen = []
    res = run_sampler(proc, net, x, editable, steps=8, generator=torch.Generator().manual_seed(0),
                      callback=lambda info: seen.append(info.x.clone()))
    for state in seen:
        assert torch.equal(state[~editable], x[~editable])
    x2 = x.clone()
    x2[:, :12] = (x[:, :12] + 1) % V
    other = run_sampler(proc, net, x2, editable, steps=8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(res.tokens[editable], other.tokens[editable])   # the prompt conditions


def test_clamping_snaps_x0_hat_to_vocabulary_latents():
    proc, net = make(clamp_below=1.0)
    perturb(net, 0.3)
    ctx = StepContext(t=0.5, s=0.25, editable=torch.ones(2, L, dtype=torch.bool), options=SampleOptions(),
                      generator=torch.Generator().manual_seed(0))
    out = proc.step(net, torch.zeros(2, L, dtype=torch.long), ctx)
    e = net.latents()
    assert torch.equal(ctx.cache["x_sc"], e[out.x0_hat])                # x̂0 is an exact latent row


def test_zero_temperature_with_the_softmax_head_is_clamping():
    proc, net = make(head="softmax")
    perturb(net, 0.3)
    ctx = StepContext(t=0.7, s=0.5, editable=torch.ones(2, L, dtype=torch.bool),
                      options=SampleOptions(temperature=0.0), generator=torch.Generator().manual_seed(0))
    out = proc.step(net, torch.zeros(2, L, dtype=torch.long), ctx)
    assert torch.equal(ctx.cache["x_sc"], net.latents()[out.x0_hat])
    ctx1 = StepContext(t=0.7, s=0.5, editable=torch.ones(2, L, dtype=torch.bool),
                       options=SampleOptions(), generator=torch.Generator().manual_seed(0))
    proc.step(net, torch.zeros(2, L, dtype=torch.long), ctx1)
    assert not torch.allclose(ctx1.cache["x_sc"], ctx.cache["x_sc"])     # T = 1 averages


def test_the_posterior_input_is_each_positions_own_token_posterior():
    """prior_logits is log N(z; √ᾱ e_v, (1 − ᾱ) I) up to a constant in v: one-hot on the token at low
    noise, flat at pure noise, and Bayes' rule by brute force in between; the network reads it."""
    proc, net = make(head="softmax", input_posterior=True)
    w = torch.randint(0, V, (2, L))
    e = net.latents().detach()
    x = net.clean_latents(w).detach()
    for tv, check in ((0.05, "onehot"), (1.0, "flat"), (0.6, "bayes")):
        t = torch.full((2,), tv)
        z, _ = proc.noisy(x, t)
        a = proc._alpha_bar(t)
        p = torch.softmax(proc.prior_logits(z, a, e), dim=-1)
        if check == "onehot":
            assert torch.equal(p.argmax(-1), w) and p.max(-1).values.min() > 0.999
        elif check == "flat":
            assert (p - 1.0 / V).abs().max() < 0.05
        else:
            logpdf = torch.distributions.Normal(a.sqrt()[..., None] * e, (1 - a).sqrt()[..., None]) \
                .log_prob(z[:, :, None, :]).sum(-1)                                  # (2, L, V)
            assert torch.allclose(p, torch.softmax(logpdf, -1), atol=1e-5)
    perturb(net, 0.05)
    t = torch.full((2,), 0.6)
    z, _ = proc.noisy(x, t)
    flat = torch.full((2, L, V), 1.0 / V)
    assert not torch.allclose(net(z, t, None, flat), net(z, t, None, torch.softmax(torch.randn(2, L, V), -1)))


def test_input_scale_scales_the_projected_latents_only():
    """h0 = c·(W_in·z + W_sc·x_sc) + p·E: the continuous inputs are scaled, the soft tokens are not."""
    proc, net = make(head="softmax", input_scale=0.1, input_posterior=True)
    perturb(net, 0.05)
    z, t = torch.randn(2, L, 16), torch.full((2,), 0.5)
    probs = torch.softmax(torch.randn(2, L, V), -1)
    seen = {}
    hook = net.backbone.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(h=kwargs["inputs_embeds"]), with_kwargs=True)
    net(z, t, None, probs)
    hook.remove()
    expected = 0.1 * net.in_proj(z) + 0.1 * net.sc_proj(torch.zeros_like(z)) + probs @ net.source
    assert torch.allclose(seen["h"], expected, atol=1e-6)
    with pytest.raises(ConfigError, match="process.input_scale"):
        make(input_scale=0.0)
