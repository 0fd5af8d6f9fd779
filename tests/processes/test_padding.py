"""Padding (issue 19, item 5): every process's ``loss`` and ``nelbo`` take ``valid`` (B, L), True on
real tokens. The network never sees a pad (the backbone's key-padding mask), pads score nothing, and
per-token figures divide by the real tokens: the bound of a padded window equals the unpadded one.

Checked two ways: (1) exactly — for a fixed seed the result does not depend on what the pads hold
(nothing leaks through attention or into a term), and the exact AR likelihood of a padded window is
that of the window alone; (2) in expectation — the mean bound over a batch of copies of a padded
window equals that of the unpadded window (a per-token mean over L instead of the real tokens, the
bug the issue measured, halves it here)."""
import math

import pytest
import torch

from thunderdlm.config import from_dict
from thunderdlm.models import ModelConfig
from thunderdlm.processes import ProcessConfig, build_process

V, N_REAL, N_PAD = 6, 8, 8

PROCESSES = {
    "embedding": {"name": "embedding"},
    "embedding_softmax_sc": {"name": "embedding", "head": "softmax", "self_conditioning": True},
    "forcing": {"name": "forcing", "timesteps": 20, "sampling_timesteps": 4},
    "teacher_forcing": {"name": "forcing", "use_diffusion_forcing": False},
    "masked": {"name": "masked"},
    "block": {"name": "block", "block_size": 4},
    "uniform": {"name": "uniform"},
    "uniform_d3pm": {"name": "uniform", "time": "discrete", "steps": 50, "schedule": "d3pm_cosine",
                     "parameterization": "d3pm"},
    "uniform_posterior": {"name": "uniform", "time": "discrete", "steps": 50, "loss": "hybrid"},
    "score_entropy": {"name": "score_entropy"},
    "autoregressive": {"name": "autoregressive"},
}


def setup(name):
    proc = build_process(from_dict(ProcessConfig, PROCESSES[name]), V)
    torch.manual_seed(0)
    gpt = name in ("autoregressive", "forcing", "teacher_forcing")
    cfg = ModelConfig(name="gpt" if gpt else "ddit", n_layer=1, n_head=2, causal=gpt,
                      n_embd=16, cond_dim=8, time_conditioning=True)
    net = proc.build_network(cfg, N_REAL + N_PAD)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    window = torch.randint(0, V, (N_REAL,), generator=torch.Generator().manual_seed(1))
    return proc, net.eval(), window


def padded(window, n, pad_seed=0):
    pads = torch.randint(0, V, (n, N_PAD), generator=torch.Generator().manual_seed(pad_seed))
    x = torch.cat([window.expand(n, -1), pads], dim=1)
    valid = torch.arange(N_REAL + N_PAD)[None, :].expand(n, -1) < N_REAL
    return x, valid


@pytest.mark.parametrize("name", list(PROCESSES))
def test_pad_contents_change_nothing(name):
    proc, net, window = setup(name)
    a, valid = padded(window, 4, pad_seed=1)
    b, _ = padded(window, 4, pad_seed=2)
    with torch.no_grad():
        for x0 in (a, b):
            assert not torch.equal(a[:, N_REAL:], b[:, N_REAL:])
        got = [proc.nelbo(net, x, torch.Generator().manual_seed(3), valid=valid) for x in (a, b)]
        torch.testing.assert_close(got[0], got[1], rtol=1e-6, atol=1e-6)
        torch.manual_seed(4)
        la = proc.loss(net, a, valid=valid).loss
        torch.manual_seed(4)
        lb = proc.loss(net, b, valid=valid).loss
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(la)


@pytest.mark.parametrize("name", [n for n in PROCESSES if n != "autoregressive" and not n.startswith("embedding")])
def test_padded_bound_has_the_unpadded_expectation(name):
    proc, net, window = setup(name)
    n = 4096
    x, valid = padded(window, n)
    with torch.no_grad():
        pad = torch.cat([proc.nelbo(net, x, torch.Generator().manual_seed(s), valid=valid) for s in range(2)])
        ref = torch.cat([proc.nelbo(net, window.expand(n, -1).clone(), torch.Generator().manual_seed(10 + s))
                         for s in range(2)])
    pad, ref = pad.double(), ref.double()
    se = math.sqrt(pad.var() / pad.numel() + ref.var() / ref.numel())
    assert abs(float(pad.mean() - ref.mean())) < 4 * se + 1e-3, (float(pad.mean()), float(ref.mean()), se)
    assert 4 * se < 0.25 * float(ref.mean())        # sharp enough to see a mean over L (×0.5)


def test_autoregressive_padded_likelihood_is_exactly_the_window_alone():
    proc, net, window = setup("autoregressive")
    x, valid = padded(window, 3)
    with torch.no_grad():
        got = proc.nelbo(net, x, valid=valid)
        alone = proc.nelbo(net, window[None])
    torch.testing.assert_close(got, alone.expand(3), rtol=1e-5, atol=1e-6)


def test_valid_is_checked():
    proc, net, window = setup("masked")
    x, valid = padded(window, 2)
    with pytest.raises(ValueError, match="valid"):
        proc.nelbo(net, x, valid=valid[:, :4])
    with pytest.raises(ValueError, match="at least one real"):
        proc.loss(net, x, valid=torch.zeros_like(valid))


def test_embedding_terms_of_a_padded_window_are_the_unpadded_ones():
    """Embedding diffusion's bound has heavy tails under an untrained network (its SNR weight), so
    its normalisation is checked term by term, exactly: the padded window's diffusion and prior
    terms equal the unpadded window's, and the bound divides by the real tokens."""
    proc, net, window = setup("embedding")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, N_REAL, 4, generator=g)
    x0_hat = torch.randn(3, N_REAL, 4, generator=g)
    pad = lambda a: torch.cat([a, torch.randn(3, N_PAD, 4, generator=g)], dim=1)
    valid = torch.arange(N_REAL + N_PAD)[None, :].expand(3, -1) < N_REAL
    t = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(proc.diffusion_term(pad(x), pad(x0_hat), t, valid),
                               proc.diffusion_term(x, x0_hat, t))
    torch.testing.assert_close(proc.prior_term(pad(x), valid), proc.prior_term(x))
    # one window, t and noise shared: nelbo(padded) · n_real and nelbo(unpadded) · L agree once the
    # draws line up; here a fully real 'padding' (valid all True) must reproduce the plain call
    xx, _ = padded(window, 2)
    full = torch.ones_like(xx, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(proc.nelbo(net, xx, torch.Generator().manual_seed(1), valid=full),
                                   proc.nelbo(net, xx, torch.Generator().manual_seed(1)))
