"""Refusing an export whose weights do not fit its config.json.

transformers loads such a directory anyway: it reports the missing, unexpected and mismatched
weights in a table (or raises about sizes after it) and draws the layers they belonged to
afresh. For a hybrid that is what an edited `layer_pattern` or `mamba` setting produces: a model
that loads, generates and is silently wrong. One sentence naming the weights is better.
"""

from __future__ import annotations

_EXAMPLES = 2


def _first(keys) -> str:
    names = sorted(str(k) for k in keys)
    more = f" and {len(names) - _EXAMPLES} more" if len(names) > _EXAMPLES else ""
    return ", ".join(names[:_EXAMPLES]) + more


def check_weights_fit(source, config, loading_info: dict) -> None:
    """Raise ValueError when `loading_info` (from_pretrained's) lists weights the config expects
    but the files lack, weights the files hold that no layer reads, or weights of another
    shape."""
    mismatched = sorted(loading_info.get("mismatched_keys", ()), key=lambda m: str(m[0]))
    missing = loading_info.get("missing_keys", ())
    unexpected = loading_info.get("unexpected_keys", ())
    problems = []
    if mismatched:
        key, saved, expected = mismatched[0]
        problems.append(
            f"{key} has shape {tuple(saved)} in the files and {tuple(expected)} in the config"
            + (f" ({len(mismatched) - 1} more such)" if len(mismatched) > 1 else "")
        )
    if missing:
        problems.append(f"the files lack {_first(missing)}")
    if unexpected:
        problems.append(f"no layer reads {_first(unexpected)}")
    if problems:
        raise ValueError(
            f"{source}: the weights do not fit its config (layer_pattern "
            f"{config.layer_pattern!r} and its mamba settings): {'; '.join(problems)}. Was "
            "config.json edited after the export? (ignore_mismatched_sizes=True loads it anyway, "
            "drawing the misfitting weights afresh)"
        )
