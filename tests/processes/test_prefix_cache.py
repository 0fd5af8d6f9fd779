"""Fast-dLLM's prefix cache on the plain masked process: exact at a block's first step, approximate
after (a bidirectional prefix depends on the block), and refused where it does not apply."""
import pytest
import torch

from thunderdlm.config import from_dict
from thunderdlm.errors import ConfigError
from thunderdlm.models import ModelConfig, build_model
from thunderdlm.processes import ProcessConfig, SampleOptions, build_process
from thunderdlm.processes.base import StepContext
from thunderdlm.sampling.loop import run_sampler

V, L = 13, 24


def setup(prefix_cache):
    proc = build_process(from_dict(ProcessConfig, {"name": "masked", "prefix_cache": prefix_cache}), V)
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="ddit", n_layer=2, n_head=2, n_embd=32, cond_dim=16,
                                  time_conditioning=False), proc.model_vocab_size, L).eval()
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


def test_prefix_cache_sampling_keeps_the_contract_and_the_call_count():
    for opts in (SampleOptions(remasking="low_confidence"), SampleOptions(threshold=0.5)):
        results = []
        for flag in (False, True):
            proc, net = setup(flag)
            x = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(2))
            editable = torch.zeros(3, L, dtype=torch.bool)
            editable[:, 6:] = True
            res = run_sampler(proc, net, x, editable, steps=18, block_length=6, options=opts,
                              generator=torch.Generator().manual_seed(0))
            assert (res.tokens[:, :6] == x[:, :6]).all() and (res.tokens < V).all()
            results.append(res)
        if opts.threshold is None:
            assert results[0].nfe == results[1].nfe


def test_block_diffusion_refuses_the_approximate_cache():
    with pytest.raises(ConfigError, match="process.prefix_cache"):
        from_dict(ProcessConfig, {"name": "block", "prefix_cache": True})
