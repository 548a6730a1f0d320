"""transformers' DynamicCache, also for models whose every layer is Mamba.

transformers counts past tokens from an attention layer's keys; a Mamba-only model has none, so the
count is kept here (advanced after each forward) and answered when no attention layer exists.
A plain DynamicCache (generate's, or a user's) becomes one in place (`as_hybrid_cache`).
"""

from __future__ import annotations

from transformers.cache_utils import CacheLayerMixin, DynamicCache


class HybridCache(DynamicCache):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_seen = 0

    @property
    def is_compileable(self) -> bool:
        """Never, as for a DynamicCache (whose exact type generate checks, not this one's): a
        Mamba-only model's cache would otherwise count as compileable, and generate would compile
        the forward and build per-layer-type masks ahead."""
        return False

    def reset(self) -> None:
        super().reset()
        self.tokens_seen = 0

    def _has_attention(self) -> bool:
        return _has_attention(self)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if self._has_attention():
            return super().get_seq_length(layer_idx)
        return self.tokens_seen

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(kv_length, kv_offset) for the causal mask, which Mamba-only models never read."""
        if self._has_attention():
            return super().get_mask_sizes(query_length, layer_idx)
        return self.tokens_seen + query_length, 0


def as_hybrid_cache(cache):
    """`cache` as a HybridCache: a plain DynamicCache (made by generate, or passed in by a user) is
    converted in place, keeping what it holds, so that the caller's object is the one filled.
    Other caches (a HybridCache, a static cache, None) are returned as they are."""
    if type(cache) is not DynamicCache:
        return cache
    if _has_attention(cache):
        seen = cache.get_seq_length()
    elif any(any(getattr(layer, "has_previous_state", {}).values()) for layer in cache.layers):
        raise ValueError(
            "this DynamicCache holds Mamba state of a model without attention layers, so the "
            "number of tokens it has seen is unknown; pass a megatron_mamba.hf.cache.HybridCache "
            "(or the cache a previous forward or generate returned) instead"
        )
    else:
        seen = 0
    cache.__class__ = HybridCache
    cache.tokens_seen = seen
    return cache


def _has_attention(cache: DynamicCache) -> bool:
    return any(isinstance(layer, CacheLayerMixin) for layer in cache.layers)
