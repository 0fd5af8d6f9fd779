"""``Backbone``: the contract every network in ``models/`` meets.

A backbone is a pure ``nn.Module`` from token ids and a noise level to logits::

    logits = model(x, sigma, causal=None)    # x (B, L) long, sigma (B,) | (B, L) | None
                                             # -> (B, L, vocab_size) float32

- ``x``: token ids, ``0 <= x < vocab_size``, ``L <= max_seq_len``.
- ``sigma``: one noise level per sequence ``(B,)`` or one per token ``(B, L)`` (diffusion
  forcing); ``None`` means zeros; a 0-dim tensor is broadcast to ``(B,)``. What the number
  means (total noise σ(t), a time t, a DDPM step) is the process's business; the backbone
  only embeds it.
- ``causal``: ``None`` takes ``cfg.causal``; ``True`` restricts position ``i`` to ``j <= i``.
- The output is float32 even under autocast. Process-specific output transforms (SEDD's
  ``scale_by_sigma``, MDLM's SUBS, zeroing the current token) live in the processes.

Continuous inputs and features (embedding diffusion, diffusion forcing, adapters)::

    h = model(None, sigma, inputs_embeds=e)              # e (B, L, D) replaces the token lookup E[x]
    f = model(x, sigma, return_hidden=True)              # (B, L, D) features before the output layer

- ``inputs_embeds`` takes the place of the token table row of each position; everything the
  backbone adds to it (learned / sinusoidal positions, the time embedding) is added as usual.
- ``return_hidden`` returns the final normalised (DDiT: normalised and adaLN-modulated) features
  that the output projection would read; a process can put its own head on them.
- ``token_embedding`` is the (V, D) input table, ``n_embd`` its width ``D``.
- ``out_dim`` (constructor, default ``vocab_size``) sets the output width: a process that regresses
  a continuous target builds the backbone with ``out_dim`` = that target's width, so no parameter is
  left unused (DDP requires every parameter to get a gradient).

Structured attention (block diffusion, BD3-LM)::

    logits = model(x, sigma, attn_mask=m, positions=pos)
                                             # m (L, L) or (B, 1, L, L) bool, True = may attend,
                                             # or a PiecewiseMask (the same pattern run piece by
                                             # piece: models/attention_mask.py);
                                             # it replaces ``causal``. pos (L,) or (B, L) long:
                                             # the position of each input (rotary angles, position
                                             # tables), default 0..L-1; with ``positions`` the
                                             # input may be up to 2·max_seq_len long (x_t ⊕ x0),
                                             # each position must be < max_seq_len

Padding (variable-length windows in one batch, a batching server)::

    logits = model(x, sigma, valid=v)        # v (B, K) bool, True on real tokens, K = the keys
                                             # (L, or P + L after P cached positions)

- A key where ``v`` is False is attended by no query: the outputs at real positions are those of
  the batch without the padding (tested for every backbone). ``valid`` narrows whatever pattern
  the call has — ``causal``, ``attn_mask`` (a ``PiecewiseMask`` is made dense for it) or the
  cached default — into one (B, 1, L, K) boolean mask, so it works with every other argument.
- A padded query still sees itself (no empty softmax row, no NaN); its output is meaningless and
  the processes leave it out of every loss and bound. Each row needs at least one real token.
- Positions are not shifted: pad on the right, or give ``positions`` (B, L), one row per
  sequence, so real tokens keep theirs wherever the pads are (a left-padded batch of prompts of
  different lengths, ``sampling/batched.py``: row i's real tokens at positions 0..n_i−1).

Incremental causal decoding (backbones with ``supports_kv_cache``)::

    cache = model.new_kv_cache()                             # KVCache, empty (hf adapter: an
                                                             # HFKVCache, the same handle)
    logits = model(x_new, sigma, causal=True, kv_cache=cache)
                                             # x_new (B, n): the tokens at absolute positions
                                             # cache.length .. cache.length + n - 1
                                             # -> (B, n, vocab_size); their k/v are appended

- Positions are absolute (rotary angles, learned / sinusoidal tables start at ``cache.length``);
  query ``p`` sees keys ``0..p``, so the logits equal those of the full causal forward over
  ``x[:, :cache.length + n]`` at the new positions, for any chunk size ``n`` (prefill or one token).
- ``sigma``: ``(B,)`` per sequence, or ``(B, n)`` per token for the *new* positions only (the same
  shape as ``x_new``). Cached keys and values keep the σ they were computed with.
- ``attn_mask`` (n, P + n) bool replaces the causal rule for the new queries (block decoding: a
  block sees every cached position and the whole block); ``positions`` (n,) or (B, n) defaults
  to P..P+n-1; ``valid`` then covers the keys (B, P + n).
  A forward whose keys must not stay in the cache (a noisy block being denoised) is followed by
  ``cache.crop(P)``.
- ``causal`` must resolve to True unless ``attn_mask`` is given (a bidirectional model has no
  valid prefix cache); the cache's
  capacity and ``max_seq_len`` bound ``cache.length + n``. ``KVCache.crop(p)`` rolls back to ``p``
  positions when the tokens from ``p`` on change. Without ``kv_cache`` nothing of this runs.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from thunderdlm.models.attention_mask import PiecewiseMask
from thunderdlm.models.config import ModelConfig
from thunderdlm.models.kv_cache import KVCache


class Backbone(nn.Module, metaclass=ABCMeta):
    """Abstract base: ``forward(x, sigma, *, causal, kv_cache) -> (B, L, vocab_size)`` float32."""

    cfg: ModelConfig
    vocab_size: int
    max_seq_len: int
    #: True when ``forward`` accepts ``kv_cache=`` (incremental causal decoding).
    supports_kv_cache: ClassVar[bool] = False

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_seq_len: int,
                 out_dim: int | None = None) -> None:
        super().__init__()
        if out_dim is not None and out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.out_dim = vocab_size if out_dim is None else out_dim

    @abstractmethod
    def forward(self, x: torch.Tensor | None, sigma: torch.Tensor | None = None, *,
                causal: bool | None = None, kv_cache: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, return_hidden: bool = False,
                attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L) token ids, sigma: (B,) | (B, L) | None -> (B, L, out_dim) float32.

        With ``kv_cache`` (only where ``supports_kv_cache``) ``x`` holds the tokens after the
        cached ones; ``inputs_embeds`` (B, L, D) replaces the token lookup (x is then None);
        ``return_hidden`` gives the (B, L, D) features before the output layer. See the module
        docstring.
        """

    @property
    @abstractmethod
    def token_embedding(self) -> torch.Tensor:
        """The (V, D) input token table."""

    @property
    def n_embd(self) -> int:
        return self.cfg.n_embd

    def new_kv_cache(self, max_len: int | None = None) -> KVCache:
        """An empty cache for this backbone, room for ``max_len`` (default max_seq_len) positions."""
        if not self.supports_kv_cache:
            raise ValueError(f"{type(self).__name__} does not support a KV cache")
        return KVCache(self.cfg.n_layer, min(max_len or self.max_seq_len, self.max_seq_len))

    @abstractmethod
    def _embedding_parameters(self) -> list[nn.Parameter]:
        """Input embedding tables (token, learned position) left out of non-embedding counts."""

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters, a shared (tied) tensor counted once.

        ``non_embedding=True`` leaves out the input embedding tables (Kaplan et al.): the token
        embedding (and with it a tied output head) and a learned position table.
        """
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            for p in self._embedding_parameters():
                params.pop(id(p), None)
        return sum(p.numel() for p in params.values())

    # ------------------------------------------------------------------------------------------
    # helpers for subclasses: input checks shared by every backbone
    # ------------------------------------------------------------------------------------------

    def _resolve_causal(self, causal: bool | None) -> bool:
        """``causal`` or, when None, the config default."""
        return self.cfg.causal if causal is None else bool(causal)

    def _input_embeddings(self, x: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                          table: torch.Tensor, max_len: int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checks ``x`` xor ``inputs_embeds``; returns (token-shaped (B, L) stand-in, h0 (B, L, D)).

        ``max_len`` (default ``max_seq_len``) bounds L (2·max_seq_len with explicit positions)."""
        max_len = max_len or self.max_seq_len
        if inputs_embeds is None:
            if x is None:
                raise ValueError(f"{type(self).__name__}: give token ids x or inputs_embeds")
            self._check_tokens(x, max_len)
            return x, torch.nn.functional.embedding(x, table)
        if x is not None:
            raise ValueError(f"{type(self).__name__}: give either token ids x or inputs_embeds, not both")
        e = inputs_embeds
        if e.dim() != 3 or e.shape[-1] != table.shape[1] or not e.is_floating_point():
            raise ValueError(f"inputs_embeds must be (B, L, {table.shape[1]}) floats, got "
                             f"{e.dtype} {tuple(e.shape)}")
        if not 1 <= e.shape[1] <= max_len:
            raise ValueError(f"sequence length {e.shape[1]} is outside 1..{max_len} of this "
                             f"{type(self).__name__} (max_seq_len={self.max_seq_len})")
        stand_in = torch.zeros(e.shape[:2], dtype=torch.long, device=e.device)
        return stand_in, e.to(table.dtype)

    def _check_tokens(self, x: torch.Tensor, max_len: int | None = None) -> None:
        """x must be (B, L) integer ids with 1 <= L <= max_len (default max_seq_len)."""
        max_len = max_len or self.max_seq_len
        if x.dim() != 2 or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"x must be (B, L) integer token ids, got {x.dtype} {tuple(x.shape)}")
        if not 1 <= x.shape[1] <= max_len:
            raise ValueError(f"sequence length {x.shape[1]} is outside 1..{max_len} of this "
                             f"{type(self).__name__} (max_seq_len={self.max_seq_len})")

    def _structure_limit(self, positions: torch.Tensor | None) -> int:
        """Longest input accepted: 2·max_seq_len when explicit positions are given (x_t ⊕ x0)."""
        return 2 * self.max_seq_len if positions is not None else self.max_seq_len

    def _check_structure(self, L: int, attn_mask: torch.Tensor | None,
                         positions: torch.Tensor | None, cached: int = 0) -> None:
        """``attn_mask`` (L, cached + L) or (B, 1, L, cached + L) bool; ``positions`` (L,) or
        (B, L) long in [0, max_seq_len)."""
        if isinstance(attn_mask, PiecewiseMask):
            if cached or attn_mask.shape != (L, L):
                raise ValueError(f"a PiecewiseMask of shape {attn_mask.shape} does not fit "
                                 f"{L} positions (and needs no KV cache)")
        elif attn_mask is not None:
            if attn_mask.dtype != torch.bool or attn_mask.shape[-2:] != (L, cached + L):
                raise ValueError(f"attn_mask must be bool (..., {L}, {cached + L}), got "
                                 f"{attn_mask.dtype} {tuple(attn_mask.shape)}")
        if positions is not None:
            if positions.dim() not in (1, 2) or positions.shape[-1] != L or positions.is_floating_point():
                raise ValueError(f"positions must be ({L},) or (B, {L}) integers, got "
                                 f"{positions.dtype} {tuple(positions.shape)}")
            if L and not (0 <= int(positions.min()) and int(positions.max()) < self.max_seq_len):
                raise ValueError(f"positions must lie in 0..{self.max_seq_len - 1} (max_seq_len), "
                                 f"got {int(positions.min())}..{int(positions.max())}")

    def _with_padding(self, attn_mask, valid: torch.Tensor | None, causal: bool, B: int, L: int,
                      cached: int = 0, device: torch.device | None = None):
        """``attn_mask`` narrowed by the key-padding mask ``valid`` (B, cached + L): a (B, 1, L,
        cached + L) bool mask where no query sees a padded key but every query sees itself.
        Returns ``attn_mask`` unchanged when ``valid`` is None."""
        if valid is None:
            return attn_mask
        K = cached + L
        if valid.dtype != torch.bool or valid.shape != (B, K):
            raise ValueError(f"valid must be a ({B}, {K}) bool key-padding mask (True on real "
                             f"tokens), got {valid.dtype} {tuple(valid.shape)}")
        if not bool(valid.any(dim=1).all()):
            raise ValueError("valid: every row needs at least one real (True) token")
        q = cached + torch.arange(L, device=device)                             # absolute query positions
        k = torch.arange(K, device=device)
        if isinstance(attn_mask, PiecewiseMask):
            base = attn_mask.dense()
        elif attn_mask is not None:
            base = attn_mask
        elif causal:
            base = k[None, :] <= q[:, None]                                     # (L, K)
        else:
            base = torch.ones(L, K, dtype=torch.bool, device=device)
        own = k[None, :] == q[:, None]                                          # (L, K) the diagonal
        base = base.view(-1, 1, L, K) if base.dim() == 4 else base[None, None]
        return base & (valid[:, None, None, :].to(device) | own[None, None])   # (B, 1, L, K)

    def _check_kv_cache(self, x: torch.Tensor, causal: bool, kv_cache: KVCache,
                        attn_mask: torch.Tensor | None = None) -> None:
        """A cache needs causal attention (or an explicit mask), matching depth, and room."""
        if not causal and attn_mask is None:
            raise ValueError(f"{type(self).__name__}: a KV cache needs causal attention "
                             "(pass causal=True or set model.causal) or an explicit attn_mask")
        if kv_cache.n_layer != self.cfg.n_layer:
            raise ValueError(f"KVCache has {kv_cache.n_layer} layers but this "
                             f"{type(self).__name__} has {self.cfg.n_layer}; "
                             "make it with model.new_kv_cache()")
        end = kv_cache.length + x.shape[1]
        if end > self.max_seq_len:
            raise ValueError(f"positions up to {end} (cache {kv_cache.length} + {x.shape[1]} new) "
                             f"exceed max_seq_len={self.max_seq_len} of this {type(self).__name__}")
        kv_cache.check_room(x.shape[0], x.shape[1])

    def _prepare_sigma(self, x: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
        """Noise levels as float32 (B,) or (B, L) on x's device; None -> zeros (B,)."""
        B, L = x.shape
        if sigma is None:
            return torch.zeros(B, device=x.device, dtype=torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).float()
        if sigma.dim() == 0:
            return sigma.expand(B)
        if sigma.shape not in ((B,), (B, L)):
            raise ValueError(f"sigma must have shape (B,)={(B,)} or (B, L)={(B, L)}, "
                             f"got {tuple(sigma.shape)}")
        return sigma
