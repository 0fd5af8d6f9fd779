"""SEDD's graphs: the forward continuous-time Markov chains on tokens (SPEC.md §3.2–3.6).

Convention: ``Q[i, j]`` is the forward rate of a token jumping from i to j (i ≠ j) and
``Q[i, i] = −Σ_{j≠i} Q[i, j]``, so every row sums to 0. With total noise σ(t) (α_t = e^{−σ(t)}) the
forward transition is ``P = exp(σ Q)``, ``P[i, j] = q(x_t = j | x0 = i)``. The reverse chain jumps
from x to y at rate ``Q[y, x]·s(x)_y`` where ``s(x)_y = p_t(y)/p_t(x)`` is the concrete score of the
position (the other positions fixed); the network estimates it.

* ``Absorb`` (dim = V + 1, M = V): ``Q[i, M] = 1``. A token is masked with probability 1 − α_t.
  The true score of a masked position is s_y = p(x0 = y | visible)·r with r = α/(1 − α) =
  1/(e^σ − 1), so the graph works with ℓ = log s − log r, which SEDD's ``scale_by_sigma`` makes
  the network's own output (ℓ = out − log V). Everything below is then written with α instead of σ
  and stays finite at α = 0 (t = 1 with ε = 0, where σ = ∞).
* ``Uniform`` (dim = V): ``Q = 11ᵀ/V − I``. A token is replaced with probability 1 − α_t by a
  uniformly random one (possibly itself). The graph works with S = log s (S_x = 0).

Each graph gives the denoising score entropy weighted by dσ (the training loss), the Euler and
analytic (Tweedie τ-leaping) step probabilities, the final denoiser and its estimate of
p(x0 | x_t). Step probabilities may be unnormalised or slightly negative (SEDD's large-step
quirk); ``sample_categorical`` draws ∝ the positive part.

The score entropy of a position with true ratios r_y = q(y | x0)/q(x_t | x0) is

    SE = Σ_{y≠x_t} Q[y, x_t]·(s_y − r_y log s_y + r_y(log r_y − 1)) = Σ_y Q[y, x_t]·r_y·h(log s_y − log r_y),

h(d) = e^d − 1 − d ≥ 0: a Bregman divergence, ≥ 0 and exactly 0 at s = r.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from thunderdlm.errors import ConfigError
from thunderdlm import rng
from thunderdlm.processes.discrete.uniform import prior_kl


def _col(a: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, 1) for broadcasting against (B, L, V)."""
    return a[:, None, None]


class Graph(ABC):
    """A forward CTMC over ``dim`` token states; ``vocab_size`` real tokens."""

    name: ClassVar[str]
    absorb: ClassVar[bool]

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    @property
    def dim(self) -> int:
        return self.vocab_size

    @property
    def mask_id(self) -> int | None:
        return None

    # ---- the chain -------------------------------------------------------------------------------
    @abstractmethod
    def rate_matrix(self) -> torch.Tensor:
        """Q (dim, dim) float64, rows summing to 0 (dense: for tests and small vocabularies)."""

    @abstractmethod
    def transition_matrix(self, alpha: float) -> torch.Tensor:
        """exp(σQ) in closed form (dim, dim) float64, α = e^{−σ}."""

    @abstractmethod
    def sample_transition(self, x0: torch.Tensor, alpha: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t ~ exp(σQ)[x0, ·] per token: x0 (B, L), α (B,)."""

    @abstractmethod
    def prior(self, shape, device, generator=None) -> torch.Tensor:
        """The limit distribution π: (B, L) tokens."""

    @abstractmethod
    def prior_kl(self, alpha1: float) -> float:
        """KL(q(x_1 | x0) ‖ π) per token at α_1."""

    @abstractmethod
    def reconstruction_nats(self, alpha0: float) -> float:
        """E[−log p_rec(x0 | x_{t=0})] per token for a fixed channel p_rec, when α_0 < 1 (geometric)."""

    # ---- loss and steps on the processed network output ------------------------------------------
    @abstractmethod
    def score_entropy(self, param: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor,
                      alpha: torch.Tensor, dsigma: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """σ'(t)·SE per position (B, L). α, σ', weight = σ'/(e^σ − 1) = −α'/(1 − α): (B,)."""

    @abstractmethod
    def euler_probs(self, param, xt, alpha, dt, dsigma, weight) -> torch.Tensor:
        """onehot(x_t) + Δt·σ'(t)·R(x_t): (B, L, dim), R the model's reverse rates (rows sum to 0)."""

    @abstractmethod
    def analytic_probs(self, param, xt, a_t, a_s) -> torch.Tensor:
        """SEDD's analytic step from σ(t) to σ(s), Δσ = σ(t) − σ(s): (B, L, dim)."""

    def denoise_probs(self, param, xt, a_t) -> torch.Tensor:
        """The final denoiser: the analytic step all the way to σ = 0 (α_s = 1)."""
        return self.analytic_probs(param, xt, a_t, torch.ones_like(a_t))

    @abstractmethod
    def x0_probs(self, param, xt, a_t) -> torch.Tensor:
        """The model's p(x0 | x_t) per position: (B, L, vocab_size), rows sum to 1."""


class Absorb(Graph):
    """Absorbing graph; ``param`` is ℓ = log s − log r (only entries y ≠ M are read: s_M = 1 and
    a visible position's row are fixed by the graph — SEDD's scatter of the current token)."""

    name, absorb = "absorb", True

    @property
    def dim(self) -> int:
        return self.vocab_size + 1

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def rate_matrix(self):
        Q = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        Q[:-1, self.mask_id] = 1.0
        Q[torch.arange(self.vocab_size), torch.arange(self.vocab_size)] = -1.0
        return Q

    def transition_matrix(self, alpha):
        P = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        P[torch.arange(self.vocab_size), torch.arange(self.vocab_size)] = alpha
        P[:-1, self.mask_id] = 1.0 - alpha
        P[self.mask_id, self.mask_id] = 1.0
        return P

    def sample_transition(self, x0, alpha, generator=None):
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        return torch.where(u < alpha[:, None].to(u.dtype), x0, torch.full_like(x0, self.mask_id))

    def prior(self, shape, device, generator=None):
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def prior_kl(self, alpha1):
        # all-mask prior: exact when α_1 = 0; infinite otherwise, and then omitted as SEDD omits it
        return 0.0

    def reconstruction_nats(self, alpha0):
        # p_rec: a visible token is itself, a mask is uniform over the V real tokens
        return (1.0 - alpha0) * math.log(self.vocab_size)

    def _moves(self, ell, xt, coef):
        """probs for masked rows: coef·e^{ℓ_y} for y ≠ M, the rest on M; visible rows stay."""
        move = coef * ell.exp()                                                    # (B, L, V+1)
        move[..., self.mask_id] = 0.0
        stay = 1.0 - move.sum(-1, keepdim=True)
        probs = move.scatter(-1, torch.full_like(xt, self.mask_id).unsqueeze(-1), stay)
        keep = F.one_hot(xt, self.dim).to(probs.dtype)
        return torch.where((xt == self.mask_id).unsqueeze(-1), probs, keep)

    def score_entropy(self, ell, xt, x0, alpha, dsigma, weight):
        # s = r·e^ℓ: SE = r·(Σ_{y≠M} e^{ℓ_y} − ℓ_{x0} − 1), and σ'·r = weight stays finite at α = 0
        z = ell[..., : self.vocab_size].exp().sum(-1)                               # (B, L)
        ell_x0 = ell.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        se = weight[:, None] * (z - ell_x0 - 1.0)
        return torch.where(xt == self.mask_id, se, torch.zeros_like(se))

    def euler_probs(self, ell, xt, alpha, dt, dsigma, weight):
        return self._moves(ell, xt, _col(dt * weight))            # Δt·σ'·s_y = Δt·weight·e^{ℓ_y}

    def analytic_probs(self, ell, xt, a_t, a_s):
        # (e^{Δσ} − 1)·s_y = ((α_s − α_t)/α_t)·(α_t/(1 − α_t))·e^{ℓ_y}; with the exact score the
        # unmask probability is (α_s − α_t)/(1 − α_t) = (e^{Δσ} − 1)/(e^{σ} − 1)
        return self._moves(ell, xt, _col((a_s - a_t) / (1.0 - a_t)))

    def x0_probs(self, ell, xt, a_t):
        soft = torch.softmax(ell[..., : self.vocab_size], dim=-1)
        keep = F.one_hot(xt.clamp(max=self.vocab_size - 1), self.vocab_size).to(soft.dtype)
        return torch.where((xt == self.mask_id).unsqueeze(-1), soft, keep)


class Uniform(Graph):
    """Uniform graph; ``param`` is S = log s with S_{x_t} = 0."""

    name, absorb = "uniform", False

    def rate_matrix(self):
        V = self.vocab_size
        return torch.full((V, V), 1.0 / V, dtype=torch.float64) - torch.eye(V, dtype=torch.float64)

    def transition_matrix(self, alpha):
        V = self.vocab_size
        eye = torch.eye(V, dtype=torch.float64)
        return torch.full((V, V), (1.0 - alpha) / V, dtype=torch.float64) + alpha * eye

    def sample_transition(self, x0, alpha, generator=None):
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        noise = torch.randint(0, self.vocab_size, x0.shape, device=x0.device, generator=generator)
        return torch.where(u < alpha[:, None].to(u.dtype), x0, noise)

    def prior(self, shape, device, generator=None):
        return rng.randint(0, self.vocab_size, shape, generator, device=device)

    def prior_kl(self, alpha1):
        return prior_kl(alpha1, self.vocab_size)       # the same marginal as UDLM's

    def reconstruction_nats(self, alpha0):
        # p_rec(x0 | x') = 1 − ρ at x0 = x', ρ/(V − 1) elsewhere, ρ = P(x' ≠ x0) = (1 − α_0)(V − 1)/V
        V = self.vocab_size
        rho = (1.0 - alpha0) * (V - 1) / V
        if rho <= 0:
            return 0.0
        return -(1 - rho) * math.log1p(-rho) - rho * math.log(rho / (V - 1))

    def log_ratio(self, xt, x0, alpha):
        """log r_y = log q(y|x0) − log q(x_t|x0): (B, L, V), 0 at y = x_t.

        x_t = x0: r_y = ρ = (1 − α)/(1 − α + Vα) for y ≠ x_t; x_t ≠ x0: r_{x0} = 1/ρ, others 1."""
        V = self.vocab_size
        log_rho = torch.log1p(-alpha) - torch.log1p(alpha * (V - 1))                # (B,)
        same = (xt == x0).unsqueeze(-1)                                              # (B, L, 1)
        base = _col(log_rho).expand(*xt.shape, V)
        lr_same = base.scatter(-1, xt.unsqueeze(-1), 0.0)
        lr_diff = torch.zeros_like(base).scatter(-1, x0.unsqueeze(-1), (-_col(log_rho)).expand(*xt.shape, 1))
        return torch.where(same, lr_same, lr_diff)

    def score_entropy(self, S, xt, x0, alpha, dsigma, weight):
        log_r = self.log_ratio(xt, x0, alpha)
        d = S - log_r
        se = (log_r.exp() * (torch.expm1(d) - d)).sum(-1) / self.vocab_size       # Q[y, x] = 1/V
        return dsigma[:, None] * se

    def euler_probs(self, S, xt, alpha, dt, dsigma, weight):
        hot = F.one_hot(xt, self.vocab_size).to(S.dtype)
        rate = S.exp() / self.vocab_size * (1 - hot)                               # y ≠ x_t
        rate = rate - hot * rate.sum(-1, keepdim=True)                              # rows sum to 0
        return hot + _col(dt * dsigma) * rate

    def analytic_probs(self, S, xt, a_t, a_s):
        V = self.vocab_size
        E = _col(a_t / a_s)                                                          # e^{−Δσ}
        s = S.exp()
        staggered = (E - 1) / (V * E) * s.sum(-1, keepdim=True) + s / E
        transition = (1 - E) / V + E * F.one_hot(xt, V).to(s.dtype)                # exp(ΔσQ)[x_t, ·]
        return staggered * transition

    def x0_probs(self, S, xt, a_t):
        p = self.denoise_probs(S, xt, a_t).clamp_min(0.0)
        return p / p.sum(-1, keepdim=True).clamp_min(1e-300)


GRAPHS: dict[str, type[Graph]] = {"absorb": Absorb, "uniform": Uniform}


def build_graph(name: str, vocab_size: int) -> Graph:
    if name not in GRAPHS:
        raise ConfigError(f"config field 'process.graph': unknown graph {name!r}; use {' or '.join(GRAPHS)}")
    return GRAPHS[name](vocab_size)
