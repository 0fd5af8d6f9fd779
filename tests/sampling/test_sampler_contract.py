"""The step contract, checked for every registered process (DESIGN.md §6)."""
import pytest
import torch

from thunderdlm.models import ModelConfig
from thunderdlm.processes import PROCESSES, Process, ProcessConfig, SampleOptions, build_process
from thunderdlm.config import from_dict
from thunderdlm.sampling.loop import block_ranges, run_sampler, split_steps, transfer_schedule
from thunderdlm.errors import SamplingError

V, L = 11, 40
REMASKING = ["ancestral", "low_confidence", "random"]


def process(name):
    return build_process(from_dict(ProcessConfig, {"name": name}), V)


def network(proc, random_model):
    """A RandomModel for processes that read token ids; a tiny real (randomly initialised) network
    from ``build_network`` for processes whose network is their own (continuous latents)."""
    if type(proc).build_network is Process.build_network:
        return random_model(proc.model_vocab_size)
    torch.manual_seed(0)
    backbone = getattr(proc, "required_backbone", None) or "ddit"     # forcing: the causal GPT
    cfg = ModelConfig(name=backbone, n_layer=1, n_head=2, n_embd=16, cond_dim=8, time_conditioning=True,
                      causal=backbone == "gpt")
    net = proc.build_network(cfg, L).eval()
    with torch.no_grad():                  # DDiT's zero-initialised output would make every draw alike
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def request(n=3):
    x = torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(5))
    editable = torch.zeros(n, L, dtype=torch.bool)
    editable[:, 10:25] = True          # an infill span
    editable[:, 32:] = True            # and a continuation
    return x, editable


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("remasking", REMASKING)
@pytest.mark.parametrize("block_length", [None, 8])
def test_known_tokens_kept_and_every_editable_position_filled(name, remasking, block_length, random_model):
    proc = process(name)
    x, editable = request()
    model = network(proc, random_model)
    seen = []
    res = run_sampler(proc, model, x, editable, steps=16, block_length=block_length,
                      options=SampleOptions(remasking=remasking),
                      generator=torch.Generator().manual_seed(0), callback=lambda info: seen.append(info.x.clone()))
    assert torch.equal(res.tokens[~editable], x[~editable])
    for state in seen:                                   # at every step, not only at the end
        assert torch.equal(state[~editable], x[~editable])
    assert not proc.is_noisy(res.tokens)[editable].any() if proc.noise_token_id is not None else True
    assert res.tokens.max() < V                          # only real tokens come out
    assert res.nfe <= max(16, int(editable[0].sum())) + 1   # AR: one evaluation per token
    assert len(seen) == 16


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("remasking", REMASKING)
def test_same_seed_same_sample(name, remasking, random_model):
    proc = process(name)
    x, editable = request()
    model = network(proc, random_model)
    runs = [run_sampler(proc, model, x, editable, steps=12, options=SampleOptions(remasking=remasking),
                        generator=torch.Generator().manual_seed(s)).tokens for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_confidence_remasking_commits_the_scheduled_count(random_model):
    proc = process("masked")
    x, editable = request(2)
    model = random_model(proc.model_vocab_size)
    counts = []
    def cb(info):
        counts.append(int(proc.is_noisy(info.x)[editable].sum()))
    run_sampler(proc, model, x, editable, steps=5, options=SampleOptions(remasking="low_confidence"),
                generator=torch.Generator().manual_seed(0), callback=cb)
    k = int(editable.sum())           # 2 rows × 23 positions, one block
    sched = transfer_schedule(torch.tensor([k // 2, k // 2]), 5).sum(0).tolist()
    expected = [k - sum(sched[: i + 1]) for i in range(5)]
    assert counts == expected


def test_time_agnostic_model_is_cached(random_model):
    """MDLM ddpm_cache: no new forward pass when a step changed nothing."""
    proc = process("masked")
    x, editable = request(1)
    model = random_model(proc.model_vocab_size)
    res = run_sampler(proc, model, x, editable, steps=200, generator=torch.Generator().manual_seed(0))
    assert res.nfe == model.calls <= int(editable.sum()) + 1


def test_transfer_schedule_llada_example():
    assert transfer_schedule(torch.tensor([37]), 8).tolist() == [[5, 5, 5, 5, 5, 4, 4, 4]]


def test_blocks_and_steps():
    e = torch.zeros(1, 20, dtype=torch.bool)
    e[:, 4:20] = True
    assert block_ranges(e, 8) == [(4, 12), (12, 20)]
    assert block_ranges(e, None) == [(4, 20)]
    assert split_steps(5, 2) == [3, 2]
    with pytest.raises(SamplingError, match="steps"):
        split_steps(1, 2)


def test_greedy_low_confidence_is_deterministic_without_seed(random_model):
    proc = process("masked")
    x, editable = request(2)
    model = random_model(proc.model_vocab_size)
    opts = SampleOptions(temperature=0.0, remasking="low_confidence")
    a = run_sampler(proc, model, x, editable, steps=8, options=opts).tokens
    b = run_sampler(proc, model, x, editable, steps=8, options=opts).tokens
    assert torch.equal(a, b)
