"""Fast-dLLM's prefix and dual caches on the plain masked process: exact at a block's first step,
approximate after (a bidirectional prefix depends on the block), and refused where they do not
apply; KVCache.drop, which the dual cache compacts its cache with."""
import pytest
import torch

from thunderdlm.config import from_dict
from thunderdlm.errors import ConfigError
from thunderdlm.models import ModelConfig, build_model
from thunderdlm.processes import ProcessConfig, SampleOptions, build_process
from thunderdlm.processes.base import StepContext
from thunderdlm.sampling.loop import run_sampler

V, L = 13, 24


def setup(prefix_cache=False, dual_cache=False, backbone="ddit"):
    proc = build_process(from_dict(ProcessConfig, {"name": "masked", "prefix_cache": prefix_cache,
                                                   "dual_cache": dual_cache}), V)
    torch.manual_seed(0)
    net = build_model(ModelConfig(name=backbone, n_layer=2, n_head=2, n_embd=32, cond_dim=16,
                                  causal=False, time_conditioning=False),
                      proc.model_vocab_size, L).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return proc, net


def test_first_step_of_a_block_is_exact_and_later_steps_reuse_the_prefix():
    cached, net = setup(True)
    x = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(1))
    x[:, 8:] = cached.mask_id
    ctx = StepContext(t=1.0, s=0.5, editable=torch.ones(2, L, dtype=torch.bool), options=SampleOptions())
    exact = net(x)[:, 8:16]
    torch.testing.assert_close(cached._network_logits(net, x, 8, 16, 1.0, ctx), exact)
    assert ctx.cache["prefix_kv"].length == 8
    y = x.clone()
    y[:, 8:12] = 3                                    # the block changes; the prefix keys do not
    approx = cached._network_logits(net, y, 8, 16, 0.5, ctx)
    stale_free = net(y)[:, 8:16]
    assert not torch.allclose(approx, stale_free, atol=1e-4)            # approximate, as documented
    ctx.cache.clear()                                                    # a new block: exact again
    torch.testing.assert_close(cached._network_logits(net, y, 8, 16, 0.5, ctx), stale_free)


@pytest.mark.parametrize("cache", ["prefix_cache", "dual_cache"])
def test_approximate_cache_sampling_keeps_the_contract_and_the_call_count(cache):
    for opts in (SampleOptions(remasking="low_confidence"), SampleOptions(threshold=0.5)):
        results = []
        for flag in (False, True):
            proc, net = setup(**{cache: flag})
            x = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(2))
            editable = torch.zeros(3, L, dtype=torch.bool)
            editable[:, 6:] = True
            res = run_sampler(proc, net, x, editable, steps=18, block_length=6, options=opts,
                              generator=torch.Generator().manual_seed(0))
            assert (res.tokens[:, :6] == x[:, :6]).all() and (res.tokens < V).all()
            results.append(res)
        if opts.threshold is None:
            assert results[0].nfe == results[1].nfe


@pytest.mark.parametrize("backbone", ["ddit", "gpt"])
def test_dual_cache_is_exact_until_the_block_changes_then_feeds_only_the_block(backbone):
    proc, net = setup(False, dual_cache=True, backbone=backbone)
    x = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(1))
    x[:, 8:] = proc.mask_id                           # prefix 0..7, block 8..15, masked suffix
    ctx = StepContext(t=1.0, s=0.5, editable=torch.ones(2, L, dtype=torch.bool), options=SampleOptions())
    with torch.no_grad():
        exact = net(x)[:, 8:16]
        torch.testing.assert_close(proc._network_logits(net, x, 8, 16, 1.0, ctx), exact)
        cache = ctx.cache["dual_kv"]
        assert cache.length == L - 8                  # prefix and suffix, the block dropped
        # the block unchanged: the compacted prefix + suffix keys and the block fed at its own
        # positions give the exact logits again (tests KVCache.drop and the positions)
        torch.testing.assert_close(proc._network_logits(net, x, 8, 16, 1.0, ctx), exact,
                                   rtol=1e-5, atol=1e-5)
        assert cache.length == L - 8
        y = x.clone()
        y[:, 8:12] = 3                                # the block changes; the cached keys do not
        approx = proc._network_logits(net, y, 8, 16, 0.5, ctx)
        assert not torch.allclose(approx, net(y)[:, 8:16], atol=1e-4)    # approximate, as documented
        ctx.cache.clear()                                                 # a new block: exact again
        torch.testing.assert_close(proc._network_logits(net, y, 8, 16, 0.5, ctx), net(y)[:, 8:16])


def test_kv_cache_drop_moves_later_positions_down():
    from thunderdlm.models.kv_cache import KVCache

    cache = KVCache(1, 8)
    k = torch.arange(6.0).view(1, 1, 6, 1)
    cache.layer(0).append(k, -k)
    cache.advance(6)
    cache.drop(1, 3)
    assert cache.length == 4
    assert cache.keys[0][0, 0, :4, 0].tolist() == [0.0, 3.0, 4.0, 5.0]
    assert cache.values[0][0, 0, :4, 0].tolist() == [0.0, -3.0, -4.0, -5.0]
    with pytest.raises(ValueError, match="cannot drop"):
        cache.drop(2, 9)


@pytest.mark.parametrize("field", ["prefix_cache", "dual_cache"])
def test_block_diffusion_refuses_the_approximate_caches(field):
    with pytest.raises(ConfigError, match=f"process.{field}"):
        from_dict(ProcessConfig, {"name": "block", field: True})
