"""``HFKVCache``: the :class:`KVCache` contract over a transformers ``DynamicCache`` (hf adapter).

A pretrained decoder keeps its own keys and values: ``DynamicCache`` holds, per layer, tensors
``(B, H_kv, T, Dh)`` that grow by the ``n`` new positions of each forward run with
``use_cache=True`` (T = the number of valid positions, so there is no separate ``advance``). This
class gives the processes the same handle as the from-scratch backbones' ``KVCache``::

    cache = model.new_kv_cache()                      # HFDenoiser: an HFKVCache, empty
    model(x[:, :P], causal=True, kv_cache=cache)      # prefill: length P
    model(x_new, sigma, kv_cache=cache, attn_mask=m)  # m (n, P + n) bool: a noisy block
    cache.crop(P)                                     # forget the block's keys again

- ``length``: valid positions (the DynamicCache's sequence length), ``crop(p)`` keeps 0..p−1
  (``DynamicCache.crop`` with the number of positions to drop, ``p − length < 0``, which every
  transformers version reads alike), ``batch_size``, ``max_len`` and ``check_room`` as in
  ``KVCache``;
- ``dynamic``: the wrapped ``DynamicCache``, passed to the decoder by the adapter.
"""
from __future__ import annotations

import inspect

import torch


class HFKVCache:
    """A ``DynamicCache`` with ``length`` / ``crop`` / ``check_room`` / ``batch_size`` / ``max_len``."""

    def __init__(self, n_layer: int, max_len: int, config=None) -> None:
        from transformers import DynamicCache

        if n_layer < 1:
            raise ValueError(f"HFKVCache needs n_layer >= 1, got {n_layer}")
        if max_len < 1:
            raise ValueError(f"HFKVCache needs max_len >= 1, got {max_len}")
        self.n_layer = n_layer
        self.max_len = max_len
        takes_config = "config" in inspect.signature(DynamicCache.__init__).parameters
        self.dynamic = DynamicCache(config=config) if takes_config and config is not None else DynamicCache()

    @property
    def length(self) -> int:
        """Valid positions 0..length−1 (every layer holds the same number)."""
        return int(self.dynamic.get_seq_length())

    @property
    def batch_size(self) -> int | None:
        """Rows held (None before the first write)."""
        layers = getattr(self.dynamic, "layers", None)
        if layers:                                        # transformers >= 4.56: per-layer objects
            keys = getattr(layers[0], "keys", None)
        else:                                             # older: lists of tensors
            keys = self.dynamic.key_cache[0] if getattr(self.dynamic, "key_cache", None) else None
        if keys is None or not isinstance(keys, torch.Tensor) or keys.numel() == 0:
            return None
        return int(keys.shape[0])

    def check_room(self, batch_size: int, n: int) -> None:
        """Raise ValueError unless ``n`` positions of ``batch_size`` rows fit after ``length``."""
        if self.length + n > self.max_len:
            raise ValueError(f"HFKVCache holds {self.length} positions and room for {self.max_len}; "
                             f"{n} more do not fit (crop() or make a larger cache)")
        held = self.batch_size
        if held is not None and self.length and held != batch_size:
            raise ValueError(f"HFKVCache holds {held} rows but the input has {batch_size}; "
                             "use one cache per batch")

    def crop(self, length: int) -> None:
        """Keep positions 0..length−1 only."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop an HFKVCache of length {self.length} to {length}")
        if length < self.length:
            self.dynamic.crop(length - self.length)       # negative: the positions to drop

    def drop(self, lo: int, hi: int) -> None:
        """Remove positions lo..hi−1 (see ``KVCache.drop``: keys keep their positions)."""
        if not 0 <= lo <= hi <= self.length:
            raise ValueError(f"cannot drop positions {lo}..{hi - 1} of an HFKVCache of length {self.length}")
        if hi == lo:
            return
        keep = lambda t: torch.cat([t[:, :, :lo], t[:, :, hi:]], dim=2)   # noqa: E731  (B, H, T, Dh)
        layers = getattr(self.dynamic, "layers", None)
        if layers:                                        # transformers >= 4.56: per-layer objects
            for layer in layers:
                layer.keys, layer.values = keep(layer.keys), keep(layer.values)
        else:                                             # older: lists of tensors
            self.dynamic.key_cache = [keep(t) for t in self.dynamic.key_cache]
            self.dynamic.value_cache = [keep(t) for t in self.dynamic.value_cache]
            if hasattr(self.dynamic, "_seen_tokens"):
                self.dynamic._seen_tokens -= hi - lo

    def __repr__(self) -> str:
        return (f"HFKVCache(n_layer={self.n_layer}, length={self.length}, max_len={self.max_len}, "
                f"batch_size={self.batch_size})")
