"""transformers' DynamicCache, also for models whose every layer is Mamba.

transformers counts past tokens from an attention layer's keys; a Mamba-only model has none, so the
count is kept here (advanced after each forward) and answered when no attention layer exists.
It is never "compileable", which keeps generate from building per-layer-type mask dicts.
"""

from __future__ import annotations

from transformers.cache_utils import CacheLayerMixin, DynamicCache


class HybridCache(DynamicCache):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_seen = 0

    @property
    def is_compileable(self) -> bool:
        """The models take 2D masks; a compileable cache would make generate pass 4D ones."""
        return False

    def _has_attention(self) -> bool:
        return any(isinstance(layer, CacheLayerMixin) for layer in self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if self._has_attention():
            return super().get_seq_length(layer_idx)
        return self.tokens_seen

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(kv_length, kv_offset) for the causal mask, which Mamba-only models never read."""
        if self._has_attention():
            return super().get_mask_sizes(query_length, layer_idx)
        return self.tokens_seen + query_length, 0
