"""Diffusion Forcing schedules (SPEC.md §6.1, §6.3, §6.4, §6.6): β schedules, loss weights, level
mapping and scheduling matrices, each checked against the official code's definition."""
import math

import numpy as np
import pytest
import torch

from thunderdlm.processes.forcing.schedules import (GaussianTables, beta_schedule, loss_weights, shift_betas,
                                                    real_levels, sampler_states, scheduling_matrix,
                                                    trapezoid_matrix)

OBJECTIVES = ["pred_noise", "pred_x0", "pred_v"]
SCHEDULES = ["linear", "cosine", "sigmoid"]


def assert_close(a, b, rtol=1.3e-6, atol=1e-5):
    """torch.allclose with a message (torch.testing imports sympy: slow on a busy machine)."""
    assert a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol), (a - b).abs().max()


def tables(name="cosine", T=32, C=5.0):
    return GaussianTables(beta_schedule(name, T), C)


# ---- β schedules and tables ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [32, 1000])
def test_betas_are_float64_in_range_and_alpha_bar_decreases(name, T):
    b = beta_schedule(name, T)
    assert b.dtype == torch.float64 and b.shape == (T,)
    assert (b > 0).all() and (b <= 0.999).all()
    ab = torch.cumprod(1 - b, 0)
    assert (ab[1:] < ab[:-1]).all() and ab[-1] > 0


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("shift", [1.0, 1 / 16, 4.0])
def test_shifted_schedule_multiplies_every_snr(name, shift):
    b = beta_schedule(name, 64)
    shifted = shift_betas(b, shift)
    t0, t = GaussianTables(b, 5.0), GaussianTables(shifted, 5.0)
    assert torch.allclose(t.snr, shift * t0.snr, rtol=1e-9)
    assert ((shifted > 0) & (shifted < 1)).all() and (t.alphas_cumprod.diff() < 0).all()
    if shift == 1.0:
        assert torch.equal(shifted, b)


def test_linear_endpoints_and_cosine_last_beta_clipped():
    b = beta_schedule("linear", 100)
    assert math.isclose(b[0].item(), 1e-3) and math.isclose(b[-1].item(), 0.2)
    # cos²(π/2) = 0: the last cosine/sigmoid beta is the 0.999 clip
    assert beta_schedule("cosine", 32)[-1].item() == pytest.approx(0.999)
    assert beta_schedule("sigmoid", 32)[-1].item() == pytest.approx(0.999)
    # cosine: ᾱ_k = cos²((k+1)/T + s)/(1+s)·π/2) / cos²(s/(1+s)·π/2) before the clip
    T, s = 32, 0.008
    ab = torch.cumprod(1 - beta_schedule("cosine", T), 0)
    f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    for k in (0, 5, 20):
        assert ab[k].item() == pytest.approx(f((k + 1) / T) / f(0), rel=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_identities(name):
    t = tables(name, 64)
    ab, prev, b = t.alphas_cumprod, t.alphas_cumprod_prev, t.betas
    # the KL weight used by nelbo: coef1² / β̃_k = snr_{k−1} − snr_k
    lhs = t.posterior_mean_coef1[1:] ** 2 / t.posterior_variance[1:]
    assert_close(lhs, t.snr[:-1] - t.snr[1:], rtol=1e-9, atol=0)
    # DDIM with η = 1 from k to k − 1 has the DDPM posterior variance (SPEC §6.6 property 6)
    a, a_next = ab[1:], ab[:-1]
    sigma2 = (1 - a / a_next) * (1 - a_next) / (1 - a)
    assert_close(sigma2, t.posterior_variance[1:], rtol=1e-9, atol=0)
    # the posterior mean at k = 0 is x̂0 (ᾱ_{−1} = 1): coef1 = 1, coef2 = 0
    assert t.posterior_mean_coef1[0].item() == pytest.approx(1.0) and t.posterior_mean_coef2[0] == 0
    assert t.alpha_bar(torch.tensor([-1, 0])).tolist() == [1.0, ab[0].item()]


# ---- level mapping -------------------------------------------------------------------------------------

def test_real_levels_official_mapping():
    r = real_levels(50, 1000)
    assert r[0] == -1 and r[-1] == 999 and r[:4].tolist() == [-1, 19, 39, 59]
    assert real_levels(32, 32).tolist() == list(range(-1, 32))
    r = real_levels(10, 32)                                      # truncation toward zero
    assert r.tolist() == [int(v) for v in torch.linspace(-1, 31, 11).tolist()]


def test_decode_level_skips_the_low_noise_levels():
    assert real_levels(22, 32, decode_level=10).tolist() == [-1] + list(range(10, 32))
    r = real_levels(11, 32, decode_level=10)
    assert r[0] == -1 and r[1] == 11 and r[-1] == 31 and (r[1:] >= 10).all()
    assert torch.equal(real_levels(8, 32, decode_level=0), real_levels(8, 32))


# ---- loss weights --------------------------------------------------------------------------------------

def official_weights(levels, t: GaussianTables, objective, d, fused=True):
    """``Diffusion.compute_loss_weights`` written out as the official loop (frame axis first)."""
    C = t.snr_clip
    lv = levels.T                                                # (F, B): time-major as the official code
    snr, cs = t.snr[lv], t.clipped_snr[lv]
    n, m = cs / C, snr / C
    if not fused:
        return {"pred_noise": cs / snr, "pred_x0": cs, "pred_v": cs / (snr + 1)}[objective].T
    cum = torch.zeros_like(m)
    for f in range(lv.shape[0]):
        cum[f] = n[f] if f == 0 else d * cum[f - 1] + (1 - d) * n[f]
    cum = torch.cat([torch.zeros_like(cum[:1]), cum[:-1]])
    cf = 1 - (1 - cum * d) * (1 - n)
    fu = 1 - (1 - cum * d) * (1 - m)
    return {"pred_noise": cf / fu, "pred_x0": cf * C, "pred_v": cf * C / (fu * C + 1)}[objective].T


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("d", [0.95, 0.5, 1.0])
def test_fused_weights_equal_the_official_recursion(objective, d):
    t = tables()
    levels = torch.randint(0, 32, (5, 40), generator=torch.Generator().manual_seed(1))
    ours = loss_weights(levels, t, objective, d)
    assert_close(ours, official_weights(levels, t, objective, d), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("name", SCHEDULES)
def test_decay_zero_gives_per_token_min_snr(objective, name):
    t = tables(name, 64)
    levels = torch.randint(0, 64, (4, 50), generator=torch.Generator().manual_seed(2))
    fused = loss_weights(levels, t, objective, 0.0, fused=True)
    min_snr = loss_weights(levels, t, objective, 0.95, fused=False)
    snr, cs = t.snr[levels], t.clipped_snr[levels]
    by_hand = {"pred_noise": cs / snr, "pred_x0": cs, "pred_v": cs / (snr + 1)}[objective]
    assert torch.equal(min_snr, by_hand)
    assert_close(fused, min_snr, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [1, 32, 1000])
def test_weights_finite_at_every_level_including_extremes(objective, name, T):
    if name == "linear" and T <= 20:
        pytest.skip("the linear schedule needs T > 20")
    t = tables(name, T)
    L = 12
    patterns = [torch.zeros(1, L, dtype=torch.long), torch.full((1, L), T - 1),
                (torch.arange(L) % 2 * (T - 1))[None], torch.arange(L)[None] % T,
                torch.randint(0, T, (3, L), generator=torch.Generator().manual_seed(0))]
    for d in (0.0, 0.95, 1.0):
        for fused in (True, False):
            for lv in patterns:
                w = loss_weights(lv, t, objective, d, fused)
                assert torch.isfinite(w).all() and (w > 0).all(), (d, fused, lv)
                if objective == "pred_x0":
                    assert (w <= t.snr_clip * (1 + 1e-12)).all()
                if objective == "pred_noise" and not fused:
                    assert (w <= 1 + 1e-12).all()


# ---- scheduling matrices -------------------------------------------------------------------------------

def expected_height(kind, H, S, u):
    return {"full_sequence": S + 1, "pyramid": S + int((H - 1) * u) + 1,
            "autoregressive": S * (H - 1) + S + 1,
            "trapezoid": S + int(((H - 1) // 2) * u) + 1}[kind]


@pytest.mark.parametrize("kind", ["full_sequence", "pyramid", "autoregressive", "trapezoid"])
@pytest.mark.parametrize("H, S, u", [(1, 4, 1.0), (4, 3, 1.0), (7, 5, 2.0), (10, 8, 0.5),
                                     (9, 6, 0.3), (16, 32, 1.0)])
def test_matrices_shape_boundaries_and_monotone_columns(kind, H, S, u):
    M = scheduling_matrix(kind, H, S, u)
    assert M.dtype == torch.long and tuple(M.shape) == (expected_height(kind, H, S, u), H)
    assert (M[0] == S).all(), "must start at pure noise"
    assert (M[-1] == 0).all(), "must end clean"
    steps = M[:-1] - M[1:]
    assert ((steps == 0) | (steps == 1)).all(), "columns never gain noise and step one level at a time"
    for col in M.T:                                              # every level is visited: DDPM-valid
        assert set(col.tolist()) == set(range(S + 1))


def test_pyramid_values_and_special_cases():
    M = scheduling_matrix("pyramid", 3, 2, 1.0)
    assert M.tolist() == [[2, 2, 2], [1, 2, 2], [0, 1, 2], [0, 0, 1], [0, 0, 0]]
    assert torch.equal(scheduling_matrix("pyramid", 5, 4, 0.0), scheduling_matrix("full_sequence", 5, 4, 1.0))
    assert torch.equal(scheduling_matrix("autoregressive", 4, 3, 1.0), scheduling_matrix("pyramid", 4, 3, 3.0))


def test_official_trapezoid_quirk_is_reproduced_and_our_deviation_is_the_symmetric_fix():
    off = trapezoid_matrix(4, 3, 1.0, official=True)
    # quirks: column H/2 = 2 is never written (clean from row 0); the last column gets t = 1's value
    assert (off[:, 2] == 0).all()
    assert (off[:, 3] == off[:, 1]).all()
    assert off.shape == (3 + 2, 4)
    assert not (off[0] == 3).all()                              # it does not start at pure noise
    ours = scheduling_matrix("trapezoid", 4, 3, 1.0).numpy()
    assert (ours == ours[:, ::-1]).all()                        # symmetric: t and H−1−t together
    assert ours[:, 0].tolist() == [3, 2, 1, 0, 0] and ours[:, 1].tolist() == [3, 3, 2, 1, 0]
    # where the official matrix has no quirk (columns 0, 1) both agree on the rows they share
    assert (ours[: off.shape[0], :2] == off[:, :2]).all()
    # odd H: the official matrix writes every column; ours agrees wherever the official starts at S
    off5, ours5 = trapezoid_matrix(5, 3, 1.0, official=True), scheduling_matrix("trapezoid", 5, 3, 1.0).numpy()
    assert (off5[:, 2] == ours5[: off5.shape[0], 2]).all() and (off5[:, 2][0] == 3)


@pytest.mark.parametrize("kind, u", [("pyramid", 1.0), ("autoregressive", 1.0), ("full_sequence", 1.0),
                                     ("trapezoid", 2.0), ("pyramid", 0.5)])
def test_sampler_states_are_rows_the_sampler_feeds_and_cover_all_of_them(kind, u):
    """Every drawn row is real[M[m]] over the horizon after some prompt length c, with the prompt
    clean (−1) and m one of the rows the network is evaluated at (never the all-clean last row);
    over many draws every such (c, m) state turns up."""
    L, S, T = 5, 3, 8
    real = real_levels(S, T)
    states = {}
    for c in range(L):
        M = scheduling_matrix(kind, L - c, S, u)
        for m in range(M.shape[0] - 1):
            row = torch.cat([torch.full((c,), -1), real[M[m]]])
            states.setdefault(tuple(row.tolist()), (c, m))
    drawn = sampler_states(kind, 4000, L, S, u, real, torch.Generator().manual_seed(0))
    assert drawn.shape == (4000, L) and drawn.dtype == torch.long
    seen = {tuple(r) for r in drawn.tolist()}
    assert seen <= set(states), seen - set(states)
    assert seen == set(states)
    assert (drawn >= 0).any(dim=1).all(), "every state has a column still to denoise"


def test_autoregressive_states_have_a_clean_prefix_and_one_moving_token():
    real = real_levels(4, 16)
    drawn = sampler_states("autoregressive", 500, 12, 4, 1.0, real, torch.Generator().manual_seed(1))
    for row in drawn.tolist():
        inside = [k for k in row if 0 <= k < 15]                # neither clean nor pure noise
        assert len(inside) <= 1
        first_noisy = next(i for i, k in enumerate(row) if k >= 0)
        assert all(k == -1 for k in row[:first_noisy]) and all(k >= 0 for k in row[first_noisy:])


def test_unknown_matrix_is_an_error():
    with pytest.raises(ValueError, match="full_sequence"):
        scheduling_matrix("pyramidal", 4, 3, 1.0)
    assert isinstance(scheduling_matrix("full_sequence", 2, 3, 1.0).numpy(), np.ndarray)
