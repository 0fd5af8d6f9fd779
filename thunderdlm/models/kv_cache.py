"""``KVCache``: keys and values of the positions already seen, for incremental causal decoding.

A causal transformer's keys and values at position ``j`` depend only on the inputs at ``0..j``, so
once computed they never change while the prefix stays the same. With a cache a backbone runs on
the *new* tokens only::

    cache = model.new_kv_cache()                        # empty, capacity max_seq_len
    logits = model(x[:, :P], causal=True, kv_cache=cache)         # prefill: (B, P, V), length P
    logits = model(x[:, P:P + 1], causal=True, kv_cache=cache)    # one more token: (B, 1, V)

Layout per layer ``i``: ``keys[i]``, ``values[i]`` of shape ``(B, H, T, Dh)`` with ``T`` the
capacity (``max_len``); positions ``0..length-1`` are valid. The buffers are allocated on the first
write, in the dtype and on the device of the keys written (so autocast and GPU need no
configuration), and are reused afterwards: a forward over ``n`` new tokens costs ``O(n)`` token
positions of network work plus attention over ``length + n`` keys.

The backbone drives the cache in two phases so every layer writes the same positions:
``layer(i).append(k, v)`` for each layer (writes at ``length..length+n-1`` and returns the keys and
values of ``0..length+n-1``), then ``advance(n)`` once. ``crop(p)`` forgets positions ``>= p``
(when the tokens there changed), which is how a caller rolls the cache back instead of starting over.
"""
from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value buffers ``(B, H, max_len, Dh)`` and the number of valid positions."""

    def __init__(self, n_layer: int, max_len: int) -> None:
        if n_layer < 1:
            raise ValueError(f"KVCache needs n_layer >= 1, got {n_layer}")
        if max_len < 1:
            raise ValueError(f"KVCache needs max_len >= 1, got {max_len}")
        self.n_layer = n_layer
        self.max_len = max_len
        self.length = 0                                   # valid positions 0..length-1
        self.keys: list[torch.Tensor | None] = [None] * n_layer      # (B, H, max_len, Dh) each
        self.values: list[torch.Tensor | None] = [None] * n_layer

    @property
    def batch_size(self) -> int | None:
        """Rows held (None before the first write)."""
        k = self.keys[0]
        return None if k is None else k.shape[0]

    def layer(self, index: int) -> LayerKV:
        """The slot of layer ``index``: what one attention module reads and writes."""
        if not 0 <= index < self.n_layer:
            raise IndexError(f"layer {index} is outside 0..{self.n_layer - 1} of this KVCache")
        return LayerKV(self, index)

    def check_room(self, batch_size: int, n: int) -> None:
        """Raise ValueError unless ``n`` positions of ``batch_size`` rows fit after ``length``."""
        if self.length + n > self.max_len:
            raise ValueError(f"KVCache holds {self.length} positions and room for {self.max_len}; "
                             f"{n} more do not fit (crop() or make a larger cache)")
        if self.batch_size is not None and self.batch_size != batch_size:
            raise ValueError(f"KVCache holds {self.batch_size} rows but the input has {batch_size}; "
                             "use one cache per batch")

    def append(self, index: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, n, Dh) at positions length..length+n-1 of layer ``index``.

        Returns the keys and values of positions 0..length+n-1, each (B, H, length+n, Dh).
        ``length`` itself moves only in :meth:`advance`, after every layer has written.
        """
        B, H, n, Dh = k.shape
        self.check_room(B, n)
        if self.keys[index] is None:
            self.keys[index] = k.new_empty(B, H, self.max_len, Dh)
            self.values[index] = v.new_empty(B, H, self.max_len, Dh)
        keys, values = self.keys[index], self.values[index]
        assert keys is not None and values is not None
        end = self.length + n
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        """Mark the ``n`` positions just written by every layer as valid."""
        if self.length + n > self.max_len:
            raise ValueError(f"cannot advance KVCache of length {self.length} by {n} past "
                             f"max_len={self.max_len}")
        self.length += n

    def crop(self, length: int) -> None:
        """Keep positions 0..length-1 only (later writes overwrite the rest)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a KVCache of length {self.length} to {length}")
        self.length = length

    def drop(self, lo: int, hi: int) -> None:
        """Remove positions lo..hi−1; the later ones move down by hi − lo (length shrinks by it).

        Keys keep the positions they were computed at (rotary angles, learned position
        embeddings are baked in), so a compacted cache still reads as the original positions, and
        attention does not depend on the order of its keys. New tokens fed after it must then be
        given their own ``positions`` (Fast-dLLM's DualCache: the prefix and the suffix of a block
        cached, the block fed at its own positions)."""
        if not 0 <= lo <= hi <= self.length:
            raise ValueError(f"cannot drop positions {lo}..{hi - 1} of a KVCache of length {self.length}")
        n = hi - lo
        if n:
            for store in (self.keys, self.values):
                for t in store:
                    if t is not None:          # clone: source and destination overlap
                        t[:, :, lo:self.length - n] = t[:, :, hi:self.length].clone()
            self.length -= n

    def reset(self) -> None:
        """Forget every position and the buffers (the next write may use another batch size)."""
        self.length = 0
        self.keys = [None] * self.n_layer
        self.values = [None] * self.n_layer

    def __repr__(self) -> str:
        return (f"KVCache(n_layer={self.n_layer}, length={self.length}, max_len={self.max_len}, "
                f"batch_size={self.batch_size})")


class LayerKV:
    """One layer's view of a :class:`KVCache`: its offset and an ``append``."""

    __slots__ = ("cache", "index")

    def __init__(self, cache: KVCache, index: int) -> None:
        self.cache = cache
        self.index = index

    @property
    def offset(self) -> int:
        """Absolute position of the first new token (= the number of cached positions)."""
        return self.cache.length

    @property
    def capacity(self) -> int:
        """Positions the cache can hold (its ``max_len``)."""
        return self.cache.max_len

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`KVCache.append`."""
        return self.cache.append(self.index, k, v)
