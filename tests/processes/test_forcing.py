"""The forcing process (note 004, SPEC.md §6): the teacher-forcing switch, training, the likelihood
bound, the sample step and the samplers."""
import math

import pytest
import torch
from torch import nn

from thunderdlm.errors import ConfigError, SamplingError
from thunderdlm.models import ModelConfig
from thunderdlm.processes import AutoregressiveConfig, AutoregressiveProcess
from thunderdlm.processes.forcing import ForcingConfig, ForcingProcess
from thunderdlm.processes.forcing.sampler import decoder_logits, nearest_tokens
from thunderdlm.sampling.loop import run_sampler

V, L = 9, 16


def assert_close(a, b, rtol=1.3e-6, atol=1e-5):
    """torch.allclose with a message (torch.testing imports sympy: slow on a busy machine)."""
    assert a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol), (a - b).abs().max()


def gpt(**kw):
    base = dict(name="gpt", n_layer=1, n_head=2, n_embd=16, cond_dim=16, causal=True,
                pos_emb="learned", time_conditioning=False)
    base.update(kw)
    return ModelConfig(**base)


def setup(vocab=V, length=L, model=None, seed=0, **cfg):
    p = ForcingProcess(ForcingConfig(**cfg), vocab)
    torch.manual_seed(seed)
    return p, p.build_network(model or gpt(), length)


def perturb(net, std=0.3, seed=1):
    """Random weights of a useful size (the 0.02 init makes every output near zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in net.parameters():
            q.add_(torch.randn(q.shape, generator=g) * std)
    return net.eval()


# ---- teacher forcing: the switch --------------------------------------------------------------------------

def test_teacher_forcing_switch_is_exactly_the_autoregressive_process():
    tf, net = setup(use_diffusion_forcing=False)
    ar = AutoregressiveProcess(AutoregressiveConfig(), V)
    ar_net = ar.build_network(gpt(), L)
    assert type(net) is type(ar_net) and tf.model_vocab_size == ar.model_vocab_size == V + 1
    assert {k: v.shape for k, v in net.state_dict().items()} == \
           {k: v.shape for k, v in ar_net.state_dict().items()}
    x0 = torch.randint(0, V, (4, L))
    assert torch.equal(tf.loss(net, x0).loss, ar.loss(net, x0).loss)
    assert torch.equal(tf.nelbo(net, x0), ar.nelbo(net, x0))
    assert tf.exact_likelihood and tf.noise_token_id == ar.noise_token_id
    # and the same weights sample the same tokens
    x = torch.randint(0, V, (2, L))
    ed = torch.zeros(2, L, dtype=torch.bool)
    ed[:, 6:] = True
    a = run_sampler(tf, net, x, ed, steps=10, generator=torch.Generator().manual_seed(3)).tokens
    b = run_sampler(ar, net, x, ed, steps=10, generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(a, b)


def test_both_modes_share_the_backbone_weights():
    """wte (with the BOS row), positions, blocks and ln_f have the same names and shapes in both modes;
    only the output layer differs (the tied V+1 head vs the D x D embedding-space head)."""
    _, tf_net = setup(use_diffusion_forcing=False)
    df, df_net = setup()
    tf_sd = tf_net.state_dict()
    missing, unexpected = df_net.backbone.load_state_dict(
        {k: v for k, v in tf_sd.items() if k != "lm_head.weight"}, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []
    assert df_net.backbone.token_embedding.shape == (V + 1, 16)
    assert not df.exact_likelihood and df.uses_right_context is False


# ---- diffusion forcing: training -----------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
@pytest.mark.parametrize("level_embedding", ["sinusoidal", "mlp"])
def test_training_step_reaches_every_parameter(objective, level_embedding):
    p, net = setup(objective=objective, level_embedding=level_embedding,
                   model=gpt(tie_embeddings=False, time_conditioning=True))
    out = p.loss(net, torch.randint(0, V, (3, L)))
    assert torch.isfinite(out.loss) and set(out.metrics) == {"mse", "round_ce"}
    out.loss.backward()
    for name, q in net.named_parameters():
        assert q.grad is not None, f"{name} unused: DDP would fail"
    assert net.backbone.token_embedding.grad.abs().sum() > 0


def test_rounding_weight_by_snr_or_flat():
    """The rounding term is the clipped-SNR-weighted mean of the per-token cross-entropy, or (flag
    off) its plain mean, which keeps pure-noise tokens in the loss; the MSE term is the same."""
    w = torch.randint(0, V, (4, L))
    losses = {}
    for flag in (True, False):
        p, net = setup(objective="pred_x0", rounding_snr_weight=flag)
        perturb(net)
        torch.manual_seed(5)                       # the same levels and noise for both
        losses[flag] = p.loss(net, w).metrics
    assert losses[True]["mse"] == pytest.approx(losses[False]["mse"], rel=1e-6)
    assert losses[False]["round_ce"] > losses[True]["round_ce"]          # every weight 1 ≥ min(snr, C)/C
    # the flat mean, recomputed by hand
    p, net = setup(objective="pred_x0", rounding_snr_weight=False)
    perturb(net)
    torch.manual_seed(5)
    e = net.embed(w)
    k = torch.randint(0, p.cfg.timesteps, w.shape)
    eps = p.diffusion.noise(e.shape, e.device)
    out, table = net(p.diffusion.q_sample(e, k, eps), k, return_table=True)
    x0 = p.diffusion.predictions(out, p.diffusion.q_sample(e, k, eps), k).x0
    ce = torch.nn.functional.cross_entropy(decoder_logits(x0, table).transpose(1, 2), w)
    assert losses[False]["round_ce"] == pytest.approx(ce.item(), rel=1e-5)


@pytest.mark.parametrize("fraction, stabilization", [(0.0, 0), (0.5, 0), (1.0, 3)])
def test_loss_is_the_official_mean_over_noisy_tokens_of_random_or_sampler_states(fraction, stabilization):
    """schedule_fraction = 0 draws i.i.d. levels and gives the official loss, mean_{i,d} w·(out −
    target)²; with a fraction > 0 the first rows hold sampler states, whose clean context (−1) is
    fed as the sampler feeds it (stabilization) and carries no loss: both terms are means over the
    noisy tokens only."""
    B = 4
    p, net = setup(objective="pred_x0", schedule_fraction=fraction, stabilization_level=stabilization,
                   timesteps=8, sampling_timesteps=8, rounding_snr_weight=False)
    perturb(net)
    w = torch.randint(0, V, (B, L))
    torch.manual_seed(7)
    got = p.loss(net, w).metrics
    torch.manual_seed(7)
    dif = p.diffusion
    k = p.training_levels(B, L, w.device)
    n_sched = round(fraction * B)
    assert (k[n_sched:] >= 0).all() and (fraction == 0 or (k[:n_sched] < 0).any())
    e = net.embed(w)
    eps = dif.noise(e.shape, e.device)
    xk = dif.q_sample(e, k, eps)
    inp, fed = dif.network_input(xk, k, ddpm=True)
    out, table = net(inp, fed, return_table=True)
    pred = dif.predictions(out, inp, fed, table)
    noisy = k >= 0
    wt = dif.loss_weights(k).float()
    sq = ((pred.out - e) ** 2 * wt.unsqueeze(-1))[noisy]               # (n_noisy, D)
    ce = torch.nn.functional.cross_entropy(pred.decoder_logits(table)[noisy], w[noisy])
    assert got["mse"] == pytest.approx(sq.mean().item(), rel=1e-5)
    assert got["round_ce"] == pytest.approx(ce.item(), rel=1e-5)
    if fraction == 0:                                                  # the official plain mean
        official = ((pred.out - e) ** 2 * wt.unsqueeze(-1)).mean()
        assert got["mse"] == pytest.approx(official.item(), rel=1e-5)
    if stabilization:                                                  # context fed at level s − 1
        assert (fed[~noisy] == stabilization - 1).all()


def test_the_softmax_head_scores_tokens_and_predicts_their_posterior_mean():
    """head=softmax: logits = out·e_v + log N(x_k; √ᾱ e_v, (1 − ᾱ) I); x̂0 = softmax(logits)·e lies in
    the embeddings' hull; with out = 0 the logits are the token's own evidence, which decodes it at
    level 0 and is flat at the top level; clean columns keep x̂0 = x."""
    p, net = setup(objective="pred_x0", head="softmax", timesteps=32)
    table = net.token_table().detach()
    w = torch.randint(0, V, (2, L))
    e = net.embed(w).detach()
    dif = p.diffusion
    for k, check in ((0, "decodes"), (31, "flat")):
        lv = torch.full((2, L), k)
        x = dif.q_sample(e, lv, dif.noise(e.shape, e.device))
        pred = dif.predictions(torch.zeros_like(x), x, lv, table)
        assert torch.allclose(pred.x0, torch.softmax(pred.logits, -1) @ table, atol=1e-5)
        assert torch.equal(pred.out, pred.x0)
        if check == "decodes":
            assert torch.equal(pred.decoder_logits(table).argmax(-1), w)
        else:
            assert (torch.softmax(pred.logits, -1) - 1 / V).abs().max() < 0.05
    lv = torch.full((2, L), -1)
    pred = dif.predictions(torch.randn_like(e), e, lv, table)
    assert torch.equal(pred.x0, e) and torch.equal(pred.eps, torch.zeros_like(e))
    out = p.loss(perturb(net).train(), w)
    assert math.isfinite(out.loss.item())
    with pytest.raises(ConfigError, match="process.head"):
        ForcingConfig(head="softmax", objective="pred_noise")


def test_input_scale_scales_what_enters_the_residual_stream():
    p, net = setup(input_scale=0.02)
    perturb(net)
    x, lv = torch.randn(2, L, 16), torch.randint(-1, 32, (2, L))
    h = 0.02 * (x + net.level_embed(lv.float()))
    expected = net.backbone(None, lv.float(), causal=True, inputs_embeds=h)
    assert_close(net(x, lv), expected)
    with pytest.raises(ConfigError, match="process.input_scale"):
        ForcingConfig(input_scale=0.0)


def test_num_params_counts_backbone_head_and_level_mlp():
    _, net = setup(level_embedding="mlp")
    total = sum(q.numel() for q in net.parameters())
    assert net.num_params() == total
    assert net.num_params(non_embedding=True) == total - net.backbone.wte.weight.numel() \
        - net.backbone.wpe.weight.numel()
    assert net.df_head.weight.shape == (16, 16)


class OracleNet(nn.Module):
    """Knows the clean embeddings e(x0): outputs the exact ε, x0 or v for its objective."""

    def __init__(self, net, proc, x0):
        super().__init__()
        self.net, self.proc, self.e = net, proc, net.embed(x0).detach()
        self.max_seq_len = net.max_seq_len

    def embed(self, tokens):
        return self.net.embed(tokens)

    def token_table(self):
        return self.net.token_table()

    def forward(self, x, level, return_table=False):
        d = self.proc.diffusion
        ab = d.tables.alpha_bar(level).float().unsqueeze(-1)
        eps = (x - ab.sqrt() * self.e) / (1 - ab).clamp(min=1e-12).sqrt()
        out = {"pred_noise": eps, "pred_x0": self.e, "pred_v": ab.sqrt() * eps - (1 - ab).sqrt() * self.e}
        out = out[self.proc.cfg.objective]
        return (out, self.token_table()) if return_table else out


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
def test_a_perfect_denoiser_has_zero_diffusion_loss_and_a_bound_at_the_prior(objective):
    p, net = setup(objective=objective)
    perturb(net)
    x0 = torch.randint(0, V, (4, L))
    oracle = OracleNet(net, p, x0)
    out = p.loss(oracle, x0)
    assert out.metrics["mse"] < 1e-6
    bound = p.nelbo(oracle, x0, torch.Generator().manual_seed(0))
    # KL terms vanish, the decoder is near-certain: what is left is the prior KL, ~1e-4 nats/token
    assert (bound >= 0).all() and (bound < 0.05).all()
    # a network that is wrong pays for it
    assert (p.nelbo(net, x0, torch.Generator().manual_seed(0)) > 1.0).all()


# ---- the likelihood bound ------------------------------------------------------------------------------

@pytest.mark.parametrize("T, S, decode_level, matrix, head", [
    (3, 3, 0, "pyramid", "regression"),        # DDPM to level 0
    (6, 2, 2, "pyramid", "regression"),        # η = 1 jumps, decode at 2
    (4, 4, 0, "full_sequence", "regression"),
    (3, 3, 0, "pyramid", "softmax"),           # the categorical head: tokens from its own logits
    (6, 2, 2, "pyramid", "softmax"),
    (6, 1, 0, "autoregressive", "softmax"),    # one jump per token: next-token sampling
    (6, 1, 2, "autoregressive", "regression")])
def test_nelbo_is_a_valid_bound_on_the_sampler_it_describes(T, S, decode_level, matrix, head):
    """Tiny case (V = 3, L = 2, D = 4): the bound averaged over many draws must lie above −log p(w)
    of the sampler it describes (ancestral steps, rounding, temperature 1, unclamped noise),
    estimated by sampling, for every one of the 9 sequences; exp(−bound) summed is at most 1."""
    p, net = setup(vocab=3, length=2, model=gpt(n_embd=4, tie_embeddings=False), timesteps=T,
                   sampling_timesteps=S, decode_level=decode_level, ddim_eta=1.0, clip_noise=1e6,
                   scheduling_matrix=matrix, seed=0, head=head,
                   objective="pred_x0" if head == "softmax" else "pred_noise")
    perturb(net, std=0.5)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    toks, _ = p.generate_df(net, torch.zeros(n, 0, dtype=torch.long), 2, generator=g)
    freq = torch.bincount(toks[:, 0] * 3 + toks[:, 1], minlength=9).double() / n
    seqs = torch.cartesian_prod(torch.arange(3), torch.arange(3))           # (9, 2)
    draws = 4000
    x0 = seqs.repeat_interleave(draws, 0)
    nll = p.nelbo(net, x0, g).double().view(9, draws) * 2                   # nats per sequence
    bound, se = nll.mean(1), nll.std(1) / math.sqrt(draws)
    assert torch.exp(-bound).sum() <= 1.0 + 1e-3
    checked = 0
    for i in range(9):
        if freq[i] > 0.01:
            # −log p̂ ± its sampling error; the bound must not fall below it
            lo = -math.log(freq[i] + 4 * math.sqrt(freq[i] / n))
            assert bound[i] + 4 * se[i] >= lo, (i, bound[i].item(), -math.log(freq[i]))
            checked += 1
    assert checked >= 3


# ---- the sample step -----------------------------------------------------------------------------------

class Recorder(nn.Module):
    """Wraps a network and keeps what it was fed."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []
        self.max_seq_len = net.max_seq_len

    def embed(self, t):
        return self.net.embed(t)

    def token_table(self):
        return self.net.token_table()

    def forward(self, x, level, **kw):
        self.inputs.append((x.clone(), level.clone()))
        return self.net(x, level, **kw)


@pytest.mark.parametrize("sampling_timesteps", [32, 8])        # DDPM and DDIM
@pytest.mark.parametrize("stabilization_level", [0, 4])
@pytest.mark.parametrize("ddim_eta", [0.0, 1.0])
def test_sample_step_leaves_unchanged_levels_bit_identical(sampling_timesteps, stabilization_level, ddim_eta):
    p, net = setup(sampling_timesteps=sampling_timesteps, stabilization_level=stabilization_level,
                   ddim_eta=ddim_eta)
    perturb(net)
    d = p.diffusion
    x = torch.randn(3, L, 16)
    g = torch.Generator().manual_seed(0)
    real_from = torch.randint(-1, 32, (3, L), generator=g)
    real_from[:, :3] = -1                                    # clean context
    real_from[:, -2:] = 31                                   # not started
    step = torch.randint(0, 2, (3, L), generator=g)
    if sampling_timesteps < 32:                              # DDIM may jump several levels
        step = step * torch.randint(1, 5, (3, L), generator=g)
    real_to = torch.maximum(real_from - step, torch.full_like(real_from, -1))
    real_to[:, :3], real_to[:, -2:] = -1, 31
    new, _ = d.sample_step(net, x, real_from, real_to, g)
    same = real_from == real_to
    assert same.any() and (~same).any()
    assert torch.equal(new[same], x[same])                  # bit for bit
    assert (new[~same] != x[~same]).all(dim=-1).all()


@pytest.mark.parametrize("ddpm", [True, False])
def test_stabilization_renoises_context_to_the_stated_level(ddpm):
    s = 5
    p, net = setup(stabilization_level=s, sampling_timesteps=32 if ddpm else 16)
    rec = Recorder(perturb(net))
    x = torch.randn(2000, 4, 16)
    real_from = torch.tensor([-1, -1, 10, 31]).expand(2000, 4)
    real_to = torch.tensor([-1, -1, 9, 30]) if ddpm else torch.tensor([-1, -1, 7, 29])
    real_to = real_to.expand(2000, 4)
    new, _ = p.diffusion.sample_step(rec, x, real_from, real_to, torch.Generator().manual_seed(0))
    fed, lv = rec.inputs[0]
    assert (lv[:, :2] == s - 1).all() and torch.equal(lv[:, 2:], real_from[:, 2:])
    ab = p.tables.alphas_cumprod[s - 1].item()
    resid = fed[:, :2] - math.sqrt(ab) * x[:, :2]
    if ddpm:   # q_sample(x, s − 1): fresh noise of variance 1 − ᾱ_{s−1}
        assert resid.std().item() == pytest.approx(math.sqrt(1 - ab), rel=0.02)
        assert resid.mean().abs().item() < 0.01
    else:      # DDIM: scaled with zero noise (the official quirk)
        assert resid.abs().max().item() < 1e-5
    assert torch.equal(new[:, :2], x[:, :2])                 # the context itself never changes
    assert torch.equal(fed[:, 2:], x[:, 2:])                 # noisy columns are fed as they are


def test_without_stabilization_context_is_fed_clean_at_level_minus_one():
    p, net = setup()
    rec = Recorder(perturb(net))
    x = torch.randn(2, 3, 16)
    p.diffusion.sample_step(rec, x, torch.tensor([[-1, 3, 31]] * 2), torch.tensor([[-1, 2, 30]] * 2))
    fed, lv = rec.inputs[0]
    assert torch.equal(fed, x) and lv[:, 0].tolist() == [-1, -1]


@pytest.mark.parametrize("S, eta", [(32, 0.0), (8, 0.0), (8, 1.0)])
def test_steps_follow_the_ddpm_and_ddim_formulas(S, eta):
    p, net = setup(sampling_timesteps=S, ddim_eta=eta)
    perturb(net)
    t, d = p.tables, p.diffusion
    x = torch.randn(2, 5, 16)
    real_from = torch.tensor([[31, 20, 5, 1, 0]] * 2)
    real_to = real_from - 1 if S == 32 else torch.tensor([[27, 16, 1, -1, -1]] * 2)
    new, x0 = d.sample_step(net, x, real_from, real_to, torch.Generator().manual_seed(7))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).clamp(-5, 5)
    pred = d.predictions(net(x, real_from), x, real_from)
    assert torch.equal(x0, pred.x0)
    f = lambda name, k: t.gather(name, k, 1.0).float().unsqueeze(-1)
    if S == 32:       # DDPM: posterior mean + exp(½ log β̃)·z, no noise from level 0
        want = f("posterior_mean_coef1", real_from) * pred.x0 + f("posterior_mean_coef2", real_from) * x
        want = want + torch.exp(0.5 * f("posterior_log_variance_clipped", real_from)) * z
        want[:, -1] = pred.x0[:, -1]
    else:             # DDIM (SPEC §5.1), σ = 0 when the target is clean
        a, a1 = f("alphas_cumprod", real_from), t.alpha_bar(real_to).float().unsqueeze(-1)
        sig = eta * ((1 - a / a1) * (1 - a1) / (1 - a)).sqrt()
        sig = torch.where(real_to.unsqueeze(-1) < 0, torch.zeros_like(sig), sig)
        want = a1.sqrt() * pred.x0 + (1 - a1 - sig ** 2).sqrt() * pred.eps + sig * z
    assert_close(new, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(new[real_to < 0], pred.x0[real_to < 0])     # clean: exactly x̂0


def test_clip_x0_keeps_predictions_inside_the_embedding_ball():
    p, net = setup(objective="pred_noise")
    perturb(net, std=1.0)
    lv = torch.full((3, L), 31)
    x = torch.randn(3, L, 16)
    pred = p.diffusion.predictions(net(x, lv), x, lv)
    assert (pred.x0.norm(dim=-1) <= 4.0 + 1e-4).all()               # √D = 4
    raw = ForcingProcess(ForcingConfig(clip_x0=False), V).diffusion.predictions(net(x, lv), x, lv)
    assert raw.x0.norm(dim=-1).max() > 100                          # x/√ᾱ_31: ~650x blow-up


def test_nearest_embedding_is_the_decoder_argmax():
    _, net = setup()
    perturb(net)
    table = net.token_table()
    x = torch.randn(5, 7, 16) * 2
    assert torch.equal(nearest_tokens(x, table), decoder_logits(x, table).argmax(-1))
    assert torch.equal(nearest_tokens(table, table), torch.arange(V))


# ---- samplers ------------------------------------------------------------------------------------------

def request(n=2):
    x = torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(5))
    ed = torch.zeros(n, L, dtype=torch.bool)
    ed[:, 4:9] = True
    ed[:, 12:] = True
    return x, ed


def test_loop_runs_every_row_when_the_budget_allows_and_jumps_rows_otherwise():
    p, net = setup(sampling_timesteps=8)
    perturb(net)
    x, ed = request()
    rows = 8 + (9 - 1) + 1 - 1                         # pyramid over the 9 generated columns
    full = run_sampler(p, net, x, ed, steps=100, generator=torch.Generator().manual_seed(0))
    assert full.nfe == rows
    short = run_sampler(p, net, x, ed, steps=5, generator=torch.Generator().manual_seed(0))
    assert short.nfe == 5
    for res in (full, short):
        assert torch.equal(res.tokens[~ed], x[~ed]) and res.tokens.max() < V
    again = run_sampler(p, net, x, ed, steps=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, full.tokens)


def test_blocks_condition_on_the_decoded_text_before_them():
    p, net = setup(sampling_timesteps=4)
    rec = Recorder(perturb(net))
    x, ed = request(1)
    res = run_sampler(p, rec, x, ed, steps=40, block_length=4, generator=torch.Generator().manual_seed(0))
    # the last block's windows start with the clean embeddings of everything decoded before it
    fed, lv = rec.inputs[-1]
    assert fed.shape[1] == L and (lv[:, :12] == -1).all()
    assert_close(fed[:, :12], net.embed(res.tokens[:, :12]))


def test_generate_df_chunks_and_slides_its_window_past_the_context():
    p, net = setup(sampling_timesteps=4, window=8, length=8, scheduling_matrix="autoregressive")
    rec = Recorder(perturb(net))
    prompt = torch.randint(0, V, (2, 5))
    toks, nfe = p.generate_df(rec, prompt, 20, chunk_size=3, generator=torch.Generator().manual_seed(0))
    assert toks.shape == (2, 25) and torch.equal(toks[:, :5], prompt) and toks.max() < V
    chunks = [3] * 6 + [2]
    assert nfe == sum(4 * h for h in chunks)                  # autoregressive: S rows per token
    assert max(f.shape[1] for f, _ in rec.inputs) == 8       # never more than the window
    with pytest.raises(SamplingError, match="chunk"):
        p.sampler.open(net, torch.zeros(1, 12, dtype=torch.long), torch.ones(1, 9, dtype=torch.bool),
                       None, 3, 12)


@pytest.mark.parametrize("matrix", ["pyramid", "full_sequence", "autoregressive", "trapezoid"])
def test_every_matrix_samples_valid_tokens_and_rounding_snaps_to_embeddings(matrix):
    p, net = setup(scheduling_matrix=matrix, sampling_timesteps=6)
    perturb(net)
    prompt = torch.randint(0, V, (3, 4))
    gen = torch.ones(3, 6, dtype=torch.bool)
    w = p.sampler.open(net, torch.cat([prompt, torch.zeros(3, 6, dtype=torch.long)], 1), gen,
                       None, 4, 10, torch.Generator().manual_seed(0))
    for m in range(1, w.height):
        p.sampler.advance(net, w, m, torch.Generator().manual_seed(m))
    assert torch.equal(w.x[:, 4:], net.embed(w.tokens))      # clean columns are token embeddings
    assert_close(w.x[:, :4], net.embed(prompt))


# ---- config -----------------------------------------------------------------------------------------------

def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="process.sampling_timesteps"):
        ForcingConfig(timesteps=16, sampling_timesteps=32)
    with pytest.raises(ConfigError, match="process.beta_schedule"):
        ForcingConfig(timesteps=10, sampling_timesteps=10, beta_schedule="linear")
    with pytest.raises(ConfigError, match="process.stabilization_level"):
        ForcingConfig(stabilization_level=40)
    with pytest.raises(ConfigError, match="process.schedule_fraction"):
        ForcingConfig(schedule_fraction=1.5)
    p = ForcingProcess(ForcingConfig(), V)
    with pytest.raises(ConfigError, match="model.name"):
        p.build_network(ModelConfig(name="ddit"), L)
    with pytest.raises(ConfigError, match="model.tie_embeddings"):
        p.build_network(gpt(n_embd=10, n_head=2), L)                  # n_embd = V + 1


# ---- end to end: trainer, checkpoint, API -------------------------------------------------------------

@pytest.mark.parametrize("df", [True, False])
def test_trains_saves_loads_samples_and_evaluates(tmp_path, df):
    import thunderdlm
    from thunderdlm.data import prepare_data
    from thunderdlm.run_config import RunConfig
    from thunderdlm.train import Trainer

    (tmp_path / "c.txt").write_text("to be or not to be, that is the question. " * 100)
    data = prepare_data(tmp_path / "d", source=None, paths=[str(tmp_path / "c.txt")], tokenizer="char")
    cfg = RunConfig.from_data({
        "data": {"dir": str(data), "seq_len": 24},
        "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 24, "causal": True,
                  "pos_emb": "learned", "time_conditioning": False},
        "process": {"name": "forcing", "use_diffusion_forcing": df, "timesteps": 8,
                    "sampling_timesteps": 8},
        "train": {"batch_size": 8, "max_steps": 6, "lr": 3e-3, "eval_interval": 3, "eval_windows": 4,
                  "ckpt_interval": 6, "ema_decay": 0.9}})
    summary = Trainer(cfg, tmp_path / "run", show=False).fit()
    assert summary.step == 6 and math.isfinite(summary.last_loss)
    lm = thunderdlm.load(tmp_path / "run")
    assert type(lm.model).__name__ == ("DiffusionForcingNet" if df else "GPT")
    texts = lm.generate("to be", length=8, n=2, steps=40, seed=0)
    assert all(t.startswith("to be") and len(t) == 13 for t in texts)
    res = lm.evaluate(windows=4, t_samples=2)
    assert math.isfinite(res["nats_per_token"]) and res["nats_per_token"] > 0
    assert res["exact"] is (not df)
