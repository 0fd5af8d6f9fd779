"""Block diffusion (BD3-LM, SPEC.md §7): the attention pattern, the one-forward training pass against
block-by-block computation, the two limits (block 1 = AR, block L = MDLM) and the exact KV cache."""
import pytest
import torch
import torch.nn.functional as F

from thunderdlm.config import from_dict
from thunderdlm.errors import ConfigError
from thunderdlm.models import ModelConfig, build_model
from thunderdlm.processes import ProcessConfig, SampleOptions, build_process
from thunderdlm.processes.block.attention import (block_causal, chunk_mask, training_mask,
                                                  training_plan)
from thunderdlm.sampling.loop import run_sampler

V, L = 13, 16


def block_process(bs, **kw):
    return build_process(from_dict(ProcessConfig, {"name": "block", "block_size": bs, **kw}), V)


def network(proc, name="ddit", seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(name=name, n_layer=2, n_head=2, n_embd=32, cond_dim=16, mlp_ratio=2,
               time_conditioning=proc.cfg.time_conditioning)
    if name == "gpt":
        cfg.update(causal=True, pos_emb="learned")
    cfg.update(overrides)
    net = build_model(ModelConfig(**cfg), proc.model_vocab_size, L).eval()
    with torch.no_grad():                    # wake DDiT's zero-initialised gates and output layer
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


BACKBONES = [("ddit", {}), ("gpt", {"pos_emb": "learned"}), ("gpt", {"pos_emb": "rotary"})]
IDS = ["ddit", "gpt_learned", "gpt_rotary"]


def test_training_mask_matches_the_three_terms_and_never_leaks():
    bs = 4
    m = training_mask(L, bs)
    for q in range(2 * L):
        for k in range(2 * L):
            oq, ok = q >= L, k >= L
            bq, bk = (q - L * oq) // bs, (k - L * ok) // bs
            want = (bq == bk and oq == ok) or (bq > bk and ok and not oq) or (bq >= bk and ok and oq)
            assert bool(m[q, k]) == want, (q, k)
            if not oq and ok:
                assert not (m[q, k] and bk >= bq), "a noisy block saw a clean token of its own block"


def test_block_size_L_never_lets_the_noisy_half_see_the_clean_half():
    m = training_mask(L, L)
    assert not m[:L, L:].any() and m[:L, :L].all()


@pytest.mark.parametrize("L_,bs,chunk", [(16, 4, 8), (16, 16, 32), (15, 4, 8), (16, 1, 4), (24, 4, 32)])
def test_piecewise_training_mask_is_the_dense_one_and_attends_alike(L_, bs, chunk):
    plan = training_plan(L_, bs, chunk)
    assert torch.equal(plan.dense(), training_mask(L_, bs))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 2 * L_, 8, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=training_mask(L_, bs))
    torch.testing.assert_close(plan.attend(q, k, v), ref, atol=1e-5, rtol=1e-5)
    scores = sum(m.numel() for _, _, m in plan.pieces)
    assert scores < (2 * L_) ** 2 or bs == L_


def test_chunk_mask_is_block_causal_over_the_cache():
    m = chunk_mask(8, 8, 16, 4)
    assert m.shape == (8, 16)
    assert m[:, :8].all()                              # every cached clean block is visible
    assert m[:4, 8:12].all() and not m[:4, 12:].any()  # the clean block does not see the next one
    assert m[4:, 8:].all()                             # the noisy block sees everything before it
    with pytest.raises(ValueError, match="block boundary"):
        chunk_mask(6, 6, 12, 4)


@pytest.mark.parametrize("name,over", BACKBONES, ids=IDS)
@pytest.mark.parametrize("time_conditioning", [False, True])
def test_one_forward_over_xt_and_x0_equals_block_by_block(name, over, time_conditioning):
    bs = 4
    proc = block_process(bs, time_conditioning=time_conditioning)
    net = network(proc, name, **over)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, V, (3, L), generator=g)
    xt = torch.where(torch.rand(3, L, generator=g) < 0.5, torch.full_like(x0, proc.mask_id), x0)
    sig = torch.rand(3, L, generator=g)
    pos = torch.arange(L)
    full = net(torch.cat([xt, x0], 1), torch.cat([sig, torch.zeros_like(sig)], 1),
               attn_mask=training_mask(L, bs), positions=torch.cat([pos, pos]))[:, :L]
    pieces = net(torch.cat([xt, x0], 1), torch.cat([sig, torch.zeros_like(sig)], 1),
                 attn_mask=training_plan(L, bs, 8), positions=torch.cat([pos, pos]))[:, :L]
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)
    for b in range(L // bs):
        lo, hi = b * bs, (b + 1) * bs
        inp = torch.cat([x0[:, :lo], xt[:, lo:hi]], 1)
        s = torch.cat([torch.zeros(3, lo), sig[:, lo:hi]], 1)
        p = torch.arange(hi)
        ref = net(inp, s, attn_mask=block_causal(p, p, bs))[:, lo:hi]
        torch.testing.assert_close(full[:, lo:hi], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,over", BACKBONES, ids=IDS)
def test_block_size_one_at_t_one_is_the_exact_autoregressive_nll(name, over):
    proc = block_process(1)
    net = network(proc, name, **over)
    x0 = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(1))
    nelbo, frac = proc.block_nelbo_at(net, x0, torch.ones(2, L))
    assert torch.all(frac == 1)
    nll = torch.zeros(2)
    for i in range(L):          # each token given the clean tokens before it, read at a mask
        inp = torch.cat([x0[:, :i], torch.full((2, 1), proc.mask_id)], 1)
        logits = net(inp, causal=True)[:, i, :V]
        nll += F.cross_entropy(logits, x0[:, i], reduction="none")
    torch.testing.assert_close(nelbo, nll / L, atol=1e-5, rtol=1e-5)


def test_block_size_L_is_the_masked_nelbo():
    proc = block_process(L)
    masked = build_process(from_dict(ProcessConfig, {"name": "masked"}), V)
    net = network(proc)
    x0 = torch.randint(0, V, (4, L), generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.2, 0.5, 0.8, 1.0])
    ours = proc.block_nelbo_at(net, x0, t[:, None], torch.Generator().manual_seed(3))[0]
    ref = masked.nelbo_at(net, x0, t, torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_nelbo_estimate_is_unbiased_for_a_block_whatever_the_batch_order():
    """Strata are assigned by a fresh permutation: each row sees the same distribution of t."""
    proc = block_process(4)
    B, nb = 8, 4
    ts = torch.stack([proc.block_times(B, nb, torch.device("cpu"), 0.0, 1.0,
                                       torch.Generator().manual_seed(s))
                      for s in range(400)])                                   # (400, B, nb)
    assert ((ts > 0) & (ts <= 1)).all()
    means = ts.mean(dim=(0, 2))                                               # per row
    assert torch.allclose(means, torch.full_like(means, 0.5), atol=0.03)
    flat = ts[0].flatten().sort().values                                      # one stratum each
    assert torch.all((flat > torch.arange(B * nb) / (B * nb)) & (flat <= torch.arange(1, B * nb + 1) / (B * nb)))


def test_training_interval_is_clipped_and_evaluation_is_not():
    proc = block_process(4, sampling_eps=0.3, sampling_eps_max=0.8)
    t = proc.block_times(16, 4, torch.device("cpu"), proc.cfg.sampling_eps, proc.cfg.sampling_eps_max)
    assert t.min() >= 0.3 and t.max() <= 0.8
    with pytest.raises(ConfigError, match="process.sampling_eps_max"):
        block_process(4, sampling_eps=0.5, sampling_eps_max=0.4)


def test_a_window_that_ends_inside_a_block_is_scored_with_a_shorter_last_block():
    proc = block_process(5)                         # blocks [0, 5) [5, 10) [10, 15) [15, 16)
    net = network(proc)
    x0 = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(8))
    t = torch.tensor([[1.0, 1.0, 1.0, 1.0]] * 2)
    nelbo, frac = proc.block_nelbo_at(net, x0, t)
    assert torch.all(frac == 1) and torch.isfinite(nelbo).all()
    assert proc.loss(net, x0).loss.isfinite()


def _decode(proc, net, x, editable, options, seed=0, steps=16):
    return run_sampler(proc, net, x, editable, steps=steps, options=options,
                       generator=torch.Generator().manual_seed(seed))


OPTIONS = [SampleOptions(), SampleOptions(remasking="low_confidence"),
           SampleOptions(remasking="low_confidence", threshold=0.3),
           SampleOptions(remasking="low_confidence", temperature=0.0, threshold=0.9)]


@pytest.mark.parametrize("name,over", BACKBONES, ids=IDS)
@pytest.mark.parametrize("opt", range(len(OPTIONS)))
@pytest.mark.parametrize("time_conditioning", [False, True])
def test_kv_cache_decoding_draws_the_tokens_of_the_recomputed_path(name, over, opt, time_conditioning):
    cached = block_process(4, time_conditioning=time_conditioning)
    plain = block_process(4, time_conditioning=time_conditioning, kv_cache=False)
    net = network(cached, name, **over)
    x = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(4))
    editable = torch.zeros(3, L, dtype=torch.bool)
    editable[:, 5:] = True                      # a prompt that ends inside block 1
    a = _decode(cached, net, x, editable, OPTIONS[opt])
    b = _decode(plain, net, x, editable, OPTIONS[opt])
    assert torch.equal(a.tokens, b.tokens)
    assert a.nfe == b.nfe
    assert (a.tokens[:, :5] == x[:, :5]).all() and (a.tokens < V).all()


@pytest.mark.parametrize("name,over", BACKBONES, ids=IDS)
def test_kv_cache_logits_equal_the_uncached_block_causal_forward(name, over):
    from thunderdlm.processes.base import StepContext
    proc = block_process(4)
    net = network(proc, name, **over)
    x = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(6))
    x[:, 12:] = proc.mask_id
    ctx = StepContext(t=1.0, s=0.5, editable=torch.ones(2, L, dtype=torch.bool), options=SampleOptions())
    pos = torch.arange(L)
    ref = net(x, attn_mask=block_causal(pos, pos, 4))
    for lo in (0, 4, 8, 12, 8, 12):            # forward, then a roll back to an earlier block
        got = proc._cached_logits(net, x, lo, lo + 4, 1.0, ctx)
        torch.testing.assert_close(got, ref[:, lo:lo + 4], atol=1e-5, rtol=1e-5)
        assert ctx.run_cache["block_kv"].length == lo


def test_threshold_decoding_commits_every_confident_position_and_at_least_one(oracle_model):
    proc = block_process(4)
    x0 = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(7))
    editable = torch.ones(2, L, dtype=torch.bool)
    sure = oracle_model(x0, proc.model_vocab_size, confidence=30.0)
    out = _decode(proc, sure, torch.zeros_like(x0), editable, SampleOptions(threshold=0.9))
    assert torch.equal(out.tokens, x0) and out.nfe == L // 4          # a whole block per call
    unsure = oracle_model(x0, proc.model_vocab_size, confidence=0.5)   # p(x0) ≈ 0.12 < τ
    out = _decode(proc, unsure, torch.zeros_like(x0), editable,
                  SampleOptions(threshold=0.9, temperature=0.0))
    assert torch.equal(out.tokens, x0) and out.nfe == L               # one commit per call


def test_noise_interval_search_ranks_candidates_by_loss_variance():
    proc = block_process(4)
    net = network(proc)
    g = torch.Generator().manual_seed(9)
    batches = [torch.randint(0, V, (4, L), generator=g) for _ in range(3)]
    (lo, hi), table = proc.select_noise_interval(net, batches, widths=(0.5,), stride=0.25,
                                                 generator=torch.Generator().manual_seed(0))
    assert (table[0]["lo"], table[0]["hi"]) == (1e-3, 1.0)                # the full interval first
    assert [(r["lo"], r["hi"]) for r in table[1:]] == [(1e-3, 0.5), (0.25, 0.75), (0.5, 1.0)]
    best = min(table, key=lambda r: r["var"])
    assert (lo, hi) == (best["lo"], best["hi"]) and all(r["var"] >= 0 for r in table)
