"""The layer pattern: one symbol per layer choosing its mixer.

"A" keeps attention, "M" puts a Mamba1 (selective scan) mixer, "S" a Mamba2 (SSD) mixer. Whitespace
and "|" are ignored so long patterns can be grouped, e.g. "AMAM|AMAM".
"""

from __future__ import annotations

SYMBOLS = {"A": "attention", "M": "mamba1", "S": "mamba2"}


def parse_layer_pattern(pattern: str | list[str] | None, num_layers: int) -> str:
    """Normalise a pattern (string or list of symbols/names) and check it against the model."""
    if pattern is None:
        return "A" * num_layers
    if isinstance(pattern, list | tuple):
        pattern = _symbols_of_list(pattern)
    if not isinstance(pattern, str):
        raise TypeError(f"layer pattern {pattern!r} must be a string or a list of mixer names")
    cleaned = "".join(ch for ch in pattern if not ch.isspace() and ch != "|")
    unknown = sorted({ch for ch in cleaned if ch not in SYMBOLS})
    if unknown:
        raise ValueError(
            f"layer pattern {pattern!r} has unknown symbol(s) {', '.join(unknown)}; "
            f"expected {', '.join(f'{s} ({n})' for s, n in SYMBOLS.items())}"
        )
    if len(cleaned) != num_layers:
        raise ValueError(
            f"layer pattern {pattern!r} has {len(cleaned)} layers; the model has {num_layers}"
        )
    return cleaned


def _symbols_of_list(items: list | tuple) -> str:
    """One symbol per item (a mixer name or a symbol); a bad item is named as given, not as a
    joined string of its letters."""
    by_name = {name: symbol for symbol, name in SYMBOLS.items()}
    symbols = []
    for item in items:
        symbol = by_name.get(item, item) if isinstance(item, str) else None
        if symbol not in SYMBOLS:
            raise ValueError(
                f"layer pattern item {item!r} is unknown; expected one of "
                f"{', '.join(f'{s} or {n}' for s, n in SYMBOLS.items())}"
            )
        symbols.append(symbol)
    return "".join(symbols)


def mixer_names(pattern: str) -> list[str]:
    return [SYMBOLS[ch] for ch in pattern]
