"""Our transformers hybrid classes on their own: batched, padded use gives each row what it
gives alone (what lm-eval and TRL rely on); a cache continues for any number of new tokens, the
user's cache included; and the classes behave as transformers' own models do (static caches,
hidden states, positional arguments, save and load with trust_remote_code)."""

import inspect
import json
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import DynamicCache, GPTNeoXModel, LlamaModel, MistralModel
from transformers.models.mamba.modeling_mamba import MambaMixer

from megatron_mamba.hf.cache import HybridCache
from megatron_mamba.hf.mixers import ClassicMamba1
from tests.distributed.launch import REPO, child_environment
from tests.helpers.hf_tiny import VOCAB, tiny_hybrid

HYBRIDS = {
    "gpt_neox classic mamba1 + mamba2": ("gpt_neox", "MSA", dict(layout="classic", d_state=8)),
    "gpt_neox classic mamba1 with biases": (
        "gpt_neox",
        "MA",
        dict(layout="classic", d_state=8, proj_bias=True),
    ),
    "llama grouped mamba1 + mamba2": ("llama", "MAS", dict(layout="attention")),
    "mistral mamba only": ("mistral", "SM", dict(layout="attention")),
}
WITH_ATTENTION = [name for name, (_, pattern, _) in HYBRIDS.items() if "A" in pattern]
_BASES = {"gpt_neox": GPTNeoXModel, "llama": LlamaModel, "mistral": MistralModel}
_GREEDY = dict(
    do_sample=False,
    eos_token_id=None,
    pad_token_id=0,
    output_logits=True,
    return_dict_in_generate=True,
)


def _model(name: str):
    arch, pattern, mamba = HYBRIDS[name]
    return tiny_hybrid(arch, pattern, **mamba)


def _rows(lengths=(7, 3, 5), seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=generator) for n in lengths]


def _left_padded(rows: list[torch.Tensor], pad: int = 0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


def _cache(output):
    """The cache a forward or generate returned (`cache` from transformers 5.24 on)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _assert_same_logits(ours, reference, tol=1e-4):
    assert len(ours) == len(reference)
    for step, (a, b) in enumerate(zip(ours, reference, strict=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=f"step {step}")


@pytest.mark.parametrize("name", HYBRIDS)
def test_left_padded_batch_generates_what_each_row_generates_alone(name):
    """Padding must neither enter the conv window nor the scan state (with projection biases,
    padded positions are not zero after in_proj)."""
    model = _model(name)
    rows = _rows()
    ids, mask = _left_padded(rows)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=5, **_GREEDY)
        for i, row in enumerate(rows):
            alone = model.generate(row[None], max_new_tokens=5, **_GREEDY)
            assert torch.equal(batched.sequences[i, -5:], alone.sequences[0, -5:]), f"row {i}"
            _assert_same_logits([s[i] for s in batched.logits], [s[0] for s in alone.logits])


@pytest.mark.parametrize("name", HYBRIDS)
def test_right_padded_batch_scores_what_each_row_scores_alone(name):
    model = _model(name)
    rows = _rows()
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    with torch.no_grad():
        batched = model(ids).logits
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            torch.testing.assert_close(batched[i, : len(row)], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HYBRIDS)
def test_a_cache_continues_with_several_new_tokens_at_once(name):
    """Chunked feeding through the cache scores what one forward does (transformers' MambaMixer
    continued its state only for one new token, and restarted on more)."""
    model = _model(name)
    ids = _rows((10,))[0][None]
    with torch.no_grad():
        whole = model(ids, use_cache=False).logits
        cache = _cache(model(ids[:, :2]))
        chunks = [model(ids[:, 2:6], cache=cache).logits, model(ids[:, 6:], cache=cache).logits]
    torch.testing.assert_close(torch.cat(chunks, 1), whole[:, 2:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", HYBRIDS)
def test_generate_continues_the_cache_a_generate_returned(name):
    """transformers' generate skips the tokens a cache has seen when it has attention layers; a
    Mamba-only model's cache (like transformers' Mamba's) is given the new tokens alone."""
    model = _model(name)
    with torch.no_grad():
        first = model.generate(_rows((6,))[0][None], max_new_tokens=4, **_GREEDY)
        cache = _cache(first)
        longer = torch.cat([first.sequences, _rows((3,), seed=9)[0][None]], 1)
        new = longer if "A" in HYBRIDS[name][1] else longer[:, cache.get_seq_length() :]
        continued = model.generate(new, cache=cache, max_new_tokens=4, **_GREEDY)
        fresh = model.generate(longer, max_new_tokens=4, **_GREEDY)
    assert torch.equal(continued.sequences[:, -4:], fresh.sequences[:, -4:])
    _assert_same_logits(continued.logits, fresh.logits)


@pytest.mark.parametrize("cache_class", [DynamicCache, HybridCache])
def test_generate_fills_and_continues_the_users_cache(cache_class):
    model = _model("llama grouped mamba1 + mamba2")
    prompt, new = _rows((6,))[0][None], _rows((2,), seed=9)[0][None]
    with torch.no_grad():
        cache = cache_class(config=model.config)
        out = model.generate(prompt, cache=cache, max_new_tokens=4, **_GREEDY)
        assert _cache(out) is cache and cache.get_seq_length() == 6 + 3

        cache = cache_class(config=model.config)
        model(prompt, cache=cache)  # filled by the user; generate gets only the new tokens
        whole = torch.cat([prompt, new], 1)
        mask = torch.ones_like(whole)
        continued = model.generate(
            new, attention_mask=mask, cache=cache, max_new_tokens=3, **_GREEDY
        )
        fresh = model.generate(whole, max_new_tokens=3, **_GREEDY)
    assert torch.equal(continued.sequences[:, -3:], fresh.sequences[:, -3:])
    _assert_same_logits(continued.logits, fresh.logits)


def test_a_filled_dynamic_cache_of_a_mamba_only_model_is_refused():
    """Without attention layers, a DynamicCache holding state cannot say how many tokens it saw
    (generate needs that); a HybridCache counts them."""
    model = _model("mistral mamba only")
    ids = _rows((6,))[0][None]
    with torch.no_grad():
        cache = _cache(model(ids, cache=DynamicCache(config=model.config)))
        assert isinstance(cache, HybridCache) and cache.get_seq_length() == 6
        cache.__class__ = DynamicCache  # as one filled by other code
        with pytest.raises(ValueError, match="HybridCache"):
            model.generate(ids, cache=cache, max_new_tokens=2, **_GREEDY)


def test_reset_cache_starts_over():
    model = _model("mistral mamba only")
    ids = _rows((6,))[0][None]
    with torch.no_grad():
        cache = HybridCache(config=model.config)
        first = model(ids, cache=cache).logits
        cache.reset()
        assert cache.get_seq_length() == 0
        torch.testing.assert_close(model(ids, cache=cache).logits, first, rtol=0, atol=0)


@pytest.mark.parametrize("name", WITH_ATTENTION)
def test_a_static_cache_generates_what_the_dynamic_one_does(name):
    """generate builds per-layer-type masks ahead for a static cache; the models take the 2D
    padding mask instead (transformers' base models take no mask dicts, and Mamba needs it)."""
    model = _model(name)
    ids, mask = _left_padded(_rows((7, 2, 5)))
    with torch.no_grad():
        static = model.generate(
            ids, attention_mask=mask, cache_implementation="static", max_new_tokens=4, **_GREEDY
        )
        dynamic = model.generate(ids, attention_mask=mask, max_new_tokens=4, **_GREEDY)
    assert torch.equal(static.sequences, dynamic.sequences)
    _assert_same_logits(static.logits, dynamic.logits)


def test_a_static_cache_is_refused_without_attention_layers():
    model = _model("mistral mamba only")
    with pytest.raises(ValueError, match="cache_implementation"):
        model.generate(
            _rows((5,))[0][None], cache_implementation="static", max_new_tokens=2, **_GREEDY
        )


@pytest.mark.parametrize("name", HYBRIDS)
def test_hidden_states_hold_every_layer(name):
    """As many as transformers' own model of as many layers gives (embeddings + one a layer),
    each the output of its layer (the last one after the final norm, as transformers has it)."""
    arch, pattern, _ = HYBRIDS[name]
    model = _model(name)
    ids = _rows((5,))[0][None]
    layers = model.base_model.layers
    outputs = []
    hooks = [
        layer.register_forward_hook(lambda _, __, out: outputs.append(out)) for layer in layers
    ]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
        native = _BASES[arch](model.config).eval()  # all attention
        native = native(ids, use_cache=False, output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    assert len(hidden) == len(native) == len(pattern) + 1
    for i, out in enumerate(outputs[: len(pattern) - 1]):
        assert torch.equal(hidden[i + 1], out if torch.is_tensor(out) else out[0]), f"layer {i}"


@pytest.mark.parametrize("arch", _BASES)
def test_the_base_model_takes_positional_arguments_in_transformers_order(arch):
    """GPTNeoXModel and LlamaModel order their arguments differently; ours follow each."""
    pattern = "MA"
    model = tiny_hybrid(arch, pattern, layout="attention").base_model
    ids, mask = _left_padded(_rows((7, 3)))
    values = dict(input_ids=ids, attention_mask=mask, use_cache=False)
    names = []
    for name, parameter in list(inspect.signature(_BASES[arch].forward).parameters.items())[1:]:
        if parameter.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            break
        names.append(name)
    with torch.no_grad():
        by_position = model(*[values.get(name) for name in names]).last_hidden_state
        by_name = model(**values).last_hidden_state
    assert "use_cache" in names
    torch.testing.assert_close(by_position, by_name, rtol=0, atol=0)


def test_classic_mamba1_is_transformers_mamba_mixer_with_a_stateful_scan():
    """Same parameters under the same names (exports and CALD's weights load), same output."""
    model = _model("gpt_neox classic mamba1 with biases")
    ours = model.gpt_neox.layers[0].attention.mamba
    assert isinstance(ours, ClassicMamba1)
    theirs = MambaMixer(ours.config, layer_idx=0).eval()
    theirs.load_state_dict(ours.state_dict())
    hidden = torch.randn(2, 7, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(hidden), theirs(hidden), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HYBRIDS)
def test_no_deprecated_cache_argument_is_passed(name):
    """transformers' MambaMixer took `cache_params`, deprecated (for removal in 5.40) for
    `cache`; the mixers take `cache`."""
    model = _model(name)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        model(_rows((4,))[0][None], use_cache=True)
    assert not [w for w in caught if "cache_params" in str(w.message)]


_LOAD_AND_SAVE = """
import sys, torch
from transformers import AutoModelForCausalLM
source, tokens, logits, target = sys.argv[1:]
assert "megatron_mamba.hf" not in sys.modules
model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=True).eval()
assert type(model).__module__ == "megatron_mamba.hf.modeling", type(model).__module__
megatron_core = sorted(m for m in sys.modules if m.split(".")[0] == "megatron")
assert not megatron_core, f"loading an export imported megatron-core: {megatron_core[:3]}"
with torch.no_grad():
    torch.save(model(torch.load(tokens)).logits, logits)
if target != "-":
    model.save_pretrained(target)
"""


@pytest.mark.parametrize(
    "name", ["gpt_neox classic mamba1 + mamba2", "llama grouped mamba1 + mamba2"]
)
def test_a_saved_model_loads_and_saves_again_with_trust_remote_code_alone(name, tmp_path):
    """A process that never imports megatron_mamba.hf loads a save_pretrained directory through
    its modeling_hybrid.py, and its own save_pretrained writes a directory that loads the same
    way (transformers would otherwise copy only configuration.py, which auto_map then names).
    Loading never imports megatron-core: an environment that only runs the export (TRL, lm-eval)
    pays neither its import time nor its requirements at run time."""
    model = _model(name)
    model.save_pretrained(tmp_path / "saved")
    tokens = _rows((8,))[0][None]
    torch.save(tokens, tmp_path / "tokens.pt")
    with torch.no_grad():
        expected = model(tokens).logits
    env = child_environment(HF_HOME=str(tmp_path / "hf_home"))
    for source, target in (("saved", "resaved"), ("resaved", None)):
        args = [tmp_path / source, tmp_path / "tokens.pt", tmp_path / f"{source}.pt"]
        args.append(tmp_path / target if target else "-")
        proc = subprocess.run(
            [sys.executable, "-c", _LOAD_AND_SAVE, *map(str, args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        loaded = torch.load(tmp_path / f"{source}.pt")
        torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5, msg=source)


def test_the_package_imports_light_and_the_hf_package_registers():
    """Every training process imports megatron_mamba: transformers stays out of it, and
    `import megatron_mamba.hf` is what makes AutoConfig / AutoModelForCausalLM know our types."""
    code = (
        "import sys, megatron_mamba.train\n"
        "assert not [m for m in sys.modules if m.startswith(('transformers', 'lm_eval'))]\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "import megatron_mamba.hf\n"
        "config = AutoConfig.for_model('llama_hybrid', layer_pattern='MA', num_hidden_layers=2)\n"
        "print(type(AutoModelForCausalLM.from_config(config)).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["LlamaHybridForCausalLM"]


@pytest.mark.parametrize(
    "edit,named",
    [
        ({"layer_pattern": "ASM"}, "the files lack"),  # layers swapped: other weight names
        ({"mamba": {"d_conv": 3}}, "in the files and"),  # other shapes
    ],
    ids=["pattern", "mamba-setting"],
)
def test_weights_that_do_not_fit_an_edited_config_are_refused(tmp_path, edit, named):
    """transformers would load them, drawing the misfitting layers afresh, and only print a
    report; the hybrid classes refuse in one sentence, unless asked for that leniency."""
    from transformers import AutoModelForCausalLM

    model = tiny_hybrid("llama", "MAS", layout="attention")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update({k: {**config[k], **v} if isinstance(v, dict) else v for k, v in edit.items()})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"do not fit its config .*{named}") as refused:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert "config.json edited" in str(refused.value)
    lenient = AutoModelForCausalLM.from_pretrained(tmp_path, ignore_mismatched_sizes=True)
    assert lenient.config.layer_pattern == config["layer_pattern"]


def test_a_model_that_fits_reports_nothing_missing(tmp_path):
    model = _model("gpt_neox classic mamba1 + mamba2")
    model.save_pretrained(tmp_path)
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
