import math

import pytest
import torch

from thunderdlm.processes.discrete.schedules import SCHEDULES, SIGMA_COND_MAX, build_schedule


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_boundaries(name, eps):
    s = build_schedule(name, eps)
    t0, t1 = torch.tensor([0.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    assert s.alpha(t0).item() == pytest.approx(1.0, abs=1e-12)
    assert s.alpha(t1).item() == pytest.approx(eps, abs=1e-12)
    assert s.mask_prob(t0).item() == pytest.approx(0.0, abs=1e-12)
    assert s.sigma(t0).item() == pytest.approx(0.0, abs=1e-12)
    if eps > 0:
        assert s.sigma(t1).item() == pytest.approx(-math.log(eps), rel=1e-9)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_derivatives_match_finite_differences(name):
    s = build_schedule(name, 1e-3)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    fd_alpha = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    fd_sigma = (s.sigma(t + h) - s.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(s.dalpha(t), fd_alpha, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(s.dsigma(t), fd_sigma, rtol=1e-6, atol=1e-8)
    assert (s.dalpha(t) < 0).all(), "α_t must decrease"


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_weight_is_dsigma_over_expm1_sigma(name, eps):
    s = build_schedule(name, eps)
    t = torch.linspace(0.01, 0.98, 40, dtype=torch.float64)
    torch.testing.assert_close(s.nelbo_weight(t), s.dsigma(t) / torch.expm1(s.sigma(t)), rtol=1e-9, atol=0)


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1])
def test_loglinear_weight_is_one_over_t(eps):
    s = build_schedule("loglinear", eps)
    t = torch.linspace(0.001, 1.0, 100, dtype=torch.float64)
    generic = -s.dalpha(t) / (1 - s.alpha(t))
    torch.testing.assert_close(generic, 1 / t, rtol=1e-9, atol=0)


def test_conditioning_sigma_is_finite_at_t1():
    s = build_schedule("loglinear", 0.0)
    t1 = torch.tensor([1.0])
    assert torch.isinf(s.sigma(t1)).all()
    assert s.sigma_for_conditioning(t1).item() == pytest.approx(SIGMA_COND_MAX)
