"""Stratified times are assigned to batch rows by a fresh permutation (issue 19, item 3).

Tying stratum i to row i makes each row's likelihood estimate biased (row 0 only ever sees t ≤ 1/B)
and the corpus figure depend on the order of the batch. These tests look at the shared draw
(``stratified_times``), at the per-window expectation of a bound on a known source, and at the
time each row actually gets inside every process that draws one t per row.
"""
import math

import pytest
import torch

from thunderdlm.config import from_dict
from thunderdlm.processes import ProcessConfig, build_process
from thunderdlm.processes.discrete.masked import stratified_times
from tests.processes.synthetic import iid_source

V = 6


def test_one_draw_per_stratum_in_a_fresh_order_every_call():
    n, calls = 4, 2000
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([stratified_times(n, torch.device("cpu"), g) for _ in range(calls)])   # (calls, n)
    stratum = torch.ceil(draws * n).long() - 1                                                # 0..n−1
    assert ((draws > 0) & (draws <= 1)).all()
    assert all(sorted(row.tolist()) == list(range(n)) for row in stratum)     # one per stratum
    # every row lands in every stratum about 1/n of the time (tied: row i always in stratum i)
    share = torch.stack([(stratum == s).float().mean(0) for s in range(n)])   # (stratum, row)
    assert (share - 1 / n).abs().max() < 0.05
    unstratified = stratified_times(n, torch.device("cpu"), g, stratified=False)
    assert unstratified.shape == (n,)


class IIDMasked(torch.nn.Module):
    """The exact denoiser of an i.i.d. source for masked diffusion: p(x0^i | x_t) = π."""

    def __init__(self, pi):
        super().__init__()
        self.logp = torch.cat([pi.log().float(), torch.zeros(1)])       # the mask logit is dropped

    def forward(self, x, sigma=None, **kw):
        return self.logp.expand(*x.shape, V + 1).clone()


def test_masked_nelbo_per_window_is_exact_and_independent_of_batch_order():
    """With the cosine schedule E[estimate | t] = −α'(t)·H_w (H_w = the window's mean −log π):
    t-dependent, so a row tied to a stratum is biased (row 0 of 2: ×0.586, row 1: ×1.414). With
    the permutation each window's mean over calls is H_w, in either order."""
    pi, _ = iid_source(V, seed=3)
    proc = build_process(from_dict(ProcessConfig, {"name": "masked", "schedule": "cosine"}), V)
    model = IIDMasked(pi)
    g = torch.Generator().manual_seed(1)
    A = torch.multinomial(pi, 32, replacement=True, generator=g)
    B = (A + 1) % V                                          # a window of different content
    exact = {name: float(-pi.log()[w].mean()) for name, w in (("A", A), ("B", B))}
    assert abs(exact["A"] - exact["B"]) > 0.2
    calls = 1500
    for order in (("A", "B"), ("B", "A")):
        batch = torch.stack([{"A": A, "B": B}[k] for k in order])
        est = torch.stack([proc.nelbo(model, batch, g) for _ in range(calls)]).double()   # (calls, 2)
        for row, name in enumerate(order):
            se = float(est[:, row].std()) / math.sqrt(calls)
            assert abs(float(est[:, row].mean()) - exact[name]) < 4 * se, (order, name)
            assert 4 * se < 0.2 * exact[name]                # the tied bias (±41%) would be visible


class SigmaRecorder(torch.nn.Module):
    """Uniform logits; remembers the per-row conditioning it was called with."""

    def __init__(self, width):
        super().__init__()
        self.width, self.seen = width, []

    def forward(self, x, sigma=None, **kw):
        self.seen.append(sigma.detach().double().reshape(x.shape[0], -1)[:, 0].clone())
        return torch.zeros(*x.shape, self.width)


@pytest.mark.parametrize("cfg", [
    {"name": "masked", "time_conditioning": True},
    {"name": "block", "block_size": 8, "time_conditioning": True},
    {"name": "uniform"},
    {"name": "uniform", "time": "discrete", "steps": 100},
    {"name": "score_entropy"},
])
def test_every_row_gets_every_stratum_in_loss_and_nelbo(cfg):
    """σ(t) grows with t, so the row with the smallest conditioning holds the lowest stratum; over
    many calls that must be each row about 1/B of the time, in training and in the bound."""
    proc = build_process(from_dict(ProcessConfig, cfg), V)
    model = SigmaRecorder(proc.model_vocab_size)
    x0 = torch.randint(0, V, (4, 8), generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(4)
    for _ in range(200):
        proc.nelbo(model, x0, g)
    for _ in range(200):
        proc.loss(model, x0)
    for part in (model.seen[:200], model.seen[200:]):
        lowest = torch.stack(part).argmin(dim=1)                                    # (calls,)
        share = torch.bincount(lowest, minlength=4).double() / len(part)
        assert share.min() > 0.12, share                     # 0.25 expected; tied: [1, 0, 0, 0]
