import math

import pytest
import torch
import torch.nn.functional as F

from thunderdlm.models import ModelConfig, build_model
from thunderdlm.processes import AutoregressiveConfig, AutoregressiveProcess
from thunderdlm.processes.base import SampleOptions, StepContext
from thunderdlm.sampling.loop import run_sampler

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


# ---- KV-cache generation ---------------------------------------------------------------------------

GEN_L = 24
OPTIONS = {"plain": SampleOptions(),
           "filtered": SampleOptions(temperature=0.7, top_k=5, top_p=0.9),
           "greedy": SampleOptions(temperature=0.0)}


def _gen_model(name: str, pos_emb: str = "rotary"):
    """A causal backbone whose next-token law depends strongly on the context.

    No time embedding: GPT's would add one large constant vector that drowns the context (with
    it, editing an earlier token moves the next-token law by ~1e-5 and a stale cache would go
    unnoticed). DDiT's zero-initialised layers are woken up.
    """
    torch.manual_seed(3)
    cfg = ModelConfig(name=name, n_layer=2, n_head=2, n_embd=16, cond_dim=8, causal=True,
                      pos_emb=pos_emb, init_std=0.5, time_conditioning=False)
    model = build_model(cfg, V + 1, GEN_L).eval()
    if name == "ddit":
        with torch.no_grad():
            for prm in model.parameters():
                prm.add_(torch.randn_like(prm) * 0.3)
    return model


def _request(kind: str, B: int = 3):
    """x_init, editable (B, GEN_L): free generation, a prompt, or an infill template."""
    x = torch.randint(0, V, (B, GEN_L), generator=torch.Generator().manual_seed(7))
    editable = torch.zeros(B, GEN_L, dtype=torch.bool)
    if kind == "free":
        editable[:] = True
    elif kind == "prompt":
        editable[:, 5:] = True
    else:                                  # infill: known | gap | known | gap | known
        editable[:, 3:8] = True
        editable[:, 12:19] = True
    return x, editable


def _generate(model, x, editable, *, kv_cache: bool, steps: int = GEN_L, options=None, seed=0,
              block_length=None):
    """(tokens, number of token positions the backbone processed)."""
    p = AutoregressiveProcess(AutoregressiveConfig(kv_cache=kv_cache), V)
    seen = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True)
    try:
        res = run_sampler(p, model, x, editable, steps=steps, block_length=block_length,
                          options=options or SampleOptions(),
                          generator=torch.Generator().manual_seed(seed))
    finally:
        hook.remove()
    return res, sum(seen)


@pytest.mark.parametrize("kind", ["free", "prompt", "infill"])
@pytest.mark.parametrize("name,pos_emb", [("gpt", "rotary"), ("gpt", "learned"), ("ddit", "rotary")])
def test_kv_cache_generation_equals_recompute_token_for_token(name, pos_emb, kind):
    model = _gen_model(name, pos_emb)
    x, editable = _request(kind)
    for opt_name, opts in OPTIONS.items():
        for steps in (GEN_L, 4):               # one token per step, and several per step
            cached, n_cached = _generate(model, x, editable, kv_cache=True, steps=steps,
                                         options=opts, seed=11)
            plain, n_plain = _generate(model, x, editable, kv_cache=False, steps=steps,
                                       options=opts, seed=11)
            assert torch.equal(cached.tokens, plain.tokens), (opt_name, steps)
            assert cached.nfe == plain.nfe
            assert n_cached < n_plain                          # the cache was actually used
    # different seeds give different samples: the equality above is not vacuous
    a = _generate(model, x, editable, kv_cache=True, seed=1)[0].tokens
    assert not torch.equal(a, _generate(model, x, editable, kv_cache=True, seed=2)[0].tokens)


@pytest.mark.parametrize("kind", ["free", "prompt", "infill"])
def test_cached_generation_feeds_each_position_once(kind):
    """O(L) token positions with the cache (each input position once), O(L²) without."""
    model = _gen_model("gpt")
    x, editable = _request(kind, B=2)
    last = int(editable[0].nonzero().max())             # the last position to generate
    cached, n_cached = _generate(model, x, editable, kv_cache=True)
    plain, n_plain = _generate(model, x, editable, kv_cache=False)
    assert n_cached == last + 1                         # inputs 0..last, each fed once
    assert n_plain == plain.nfe * GEN_L                 # a full forward per token
    assert cached.nfe == int(editable[0].sum())


def test_kv_cache_with_blocks_equals_recompute():
    model = _gen_model("gpt")
    x, editable = _request("infill")
    cached, n_cached = _generate(model, x, editable, kv_cache=True, steps=6, block_length=4)
    plain, _ = _generate(model, x, editable, kv_cache=False, steps=6, block_length=4)
    assert torch.equal(cached.tokens, plain.tokens)
    assert n_cached <= 4 * GEN_L                        # the loop clears the cache per block


def test_rows_at_different_cursors_stay_exact():
    model = _gen_model("gpt")
    x = torch.randint(0, V, (3, GEN_L), generator=torch.Generator().manual_seed(2))
    editable = torch.zeros(3, GEN_L, dtype=torch.bool)
    editable[0, 2:] = True                              # prompts of different lengths per row
    editable[1, 6:] = True
    editable[2, 4:10] = True
    editable[2, 15:20] = True
    for opts in OPTIONS.values():
        cached, _ = _generate(model, x, editable, kv_cache=True, options=opts, seed=5)
        plain, _ = _generate(model, x, editable, kv_cache=False, options=opts, seed=5)
        assert torch.equal(cached.tokens, plain.tokens)


def _edited_run(model, kv_cache: bool, edit: bool) -> torch.Tensor:
    """Three steps; between them (if ``edit``) change cached tokens, then un-decide some."""
    x0, editable = _request("prompt", B=2)
    p = AutoregressiveProcess(AutoregressiveConfig(kv_cache=kv_cache), V)
    ctx = StepContext(t=1.0, s=0.5, editable=editable, options=SampleOptions(),
                      generator=torch.Generator().manual_seed(4))
    x = torch.where(editable, p.prior(tuple(x0.shape), x0.device), x0)
    with torch.no_grad():
        x = p.step(model, x, ctx).x                     # decides positions 5..14
        if edit:
            x[:, 1] = (x[:, 1] + 1) % V                 # change the (cached) prompt
            x[:, 13:15] = (x[:, 13:15] + 3) % V         # and tokens just left of the cursor
        ctx.t, ctx.s = 0.5, 0.25
        x = p.step(model, x, ctx).x                     # 15..19
        if edit:
            x[:, 10:20] = p.bos_id                      # un-decide: the cursor moves back to 10
        ctx.t, ctx.s = 0.25, 0.0
        x = p.step(model, x, ctx).x
    assert ("ar_kv" in ctx.cache) == kv_cache
    assert not p.is_noisy(x).any()
    return x


def test_edit_at_a_cached_position_rolls_the_cache_back():
    """Changing x left of the cursor between steps gives the same draws as recomputing."""
    model = _gen_model("gpt")
    edited = _edited_run(model, kv_cache=True, edit=True)
    torch.testing.assert_close(edited, _edited_run(model, kv_cache=False, edit=True), rtol=0, atol=0)
    # the edits change what is drawn after them, so a stale cache would be caught
    assert not torch.equal(edited[:, 15:], _edited_run(model, kv_cache=True, edit=False)[:, 15:])


def test_backbone_without_cache_support_uses_the_recompute_path():
    model = _gen_model("gpt")

    class Wrapped(torch.nn.Module):                     # no supports_kv_cache attribute
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, sigma=None, *, causal=None):
            return self.inner(x, sigma, causal=causal)

    x, editable = _request("prompt")
    wrapped, n_wrapped = _generate(Wrapped(), x, editable, kv_cache=True, seed=9)
    cached, _ = _generate(model, x, editable, kv_cache=True, seed=9)
    assert torch.equal(wrapped.tokens, cached.tokens)
    assert n_wrapped == wrapped.nfe * GEN_L                 # full forwards: no cache was used
