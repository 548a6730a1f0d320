"""HF ↔ native conversion through the files: transformers' own tiny models are the reference."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes with transformers' Auto*)
from megatron_mamba.convert.exporter import export_hf
from megatron_mamba.convert.importer import import_hf
from megatron_mamba.training.checkpoint import read_model_config
from tests.distributed.launch import child_environment
from tests.helpers.conversion import (
    ARCHS,
    assert_relative,
    native_logits,
    native_model,
    sample_tokens,
    saved,
)
from tests.helpers.hf_tiny import tiny_gpt_neox, tiny_llama


@pytest.mark.parametrize("kind", ARCHS)
def test_import_gives_transformers_logits_and_export_is_bit_exact(runtime, tmp_path, kind):
    hf = saved(kind, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    model, _ = native_model(tmp_path / "native")
    tokens = sample_tokens()
    with torch.no_grad():
        assert_relative(native_logits(model, tokens), hf(tokens).logits, 1e-5)

    export_hf(tmp_path / "native", tmp_path / "back", progress=False)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    assert type(back) is type(hf)
    theirs, ours = hf.state_dict(), back.state_dict()
    assert theirs.keys() == ours.keys()
    for name in theirs:
        assert torch.equal(theirs[name], ours[name]), name


def test_sharded_and_bin_checkpoints_import_alike(runtime, tmp_path):
    model = saved("llama_tied", tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    state = load_file(tmp_path / "one" / "model.safetensors")
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "one" / "config.json", tmp_path / "bin")
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    for name in ("one", "sharded", "bin"):
        import_hf(tmp_path / name, tmp_path / f"native-{name}", progress=False)
    reference = native_logits(native_model(tmp_path / "native-one")[0], sample_tokens())
    for name in ("sharded", "bin"):
        got = native_logits(native_model(tmp_path / f"native-{name}")[0], sample_tokens())
        assert torch.equal(got, reference), name


HYBRIDS = {  # a model, its pattern and Mamba settings
    "gpt_neox": (
        lambda: tiny_gpt_neox(True, layers=4),
        "MASM",
        dict(layout="classic", d_state=16, head_dim=16, chunk_size=8),
    ),
    "llama_tied": (ARCHS["llama_tied"], "SAM", dict(layout="attention", init="attention")),
    "mistral": (ARCHS["mistral"], "MAM", dict(layout="attention", init="attention")),
}


@pytest.mark.parametrize("kind", HYBRIDS)
def test_hybrid_export_loads_with_auto_classes_and_matches(runtime, tmp_path, kind):
    factory, pattern, mamba = HYBRIDS[kind]
    saved(factory, tmp_path / "hf")
    import_hf(
        tmp_path / "hf", tmp_path / "native", layer_pattern=pattern, mamba=mamba, progress=False
    )
    model, config = native_model(tmp_path / "native")
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)

    hybrid = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(hybrid).__name__.endswith("HybridForCausalLM")
    tokens = sample_tokens()
    with torch.no_grad():
        assert_relative(hybrid(tokens).logits, native_logits(model, tokens), 1e-5)

    prompt = tokens[:1, :5]
    generated = hybrid.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None)
    greedy = prompt
    for _ in range(6):
        next_token = native_logits(model, greedy)[:, -1].argmax(-1, keepdim=True)
        greedy = torch.cat([greedy, next_token], dim=1)
    assert torch.equal(generated, greedy)

    import_hf(tmp_path / "export", tmp_path / "again", progress=False)
    again, again_config = native_model(tmp_path / "again")
    assert again_config.mixers == config.mixers
    first, second = model.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    for name in first:
        if not name.endswith("_extra_state"):
            assert torch.equal(first[name], second[name]), name


def test_mamba_in_llama_layout_imports(runtime, tmp_path):
    """A checkpoint in MambaInLlama's layout (Llama config + mamba_config.json, split
    projections) imports with its Mamba weights in our fused in_proj."""
    saved("llama_tied", tmp_path / "hf")
    import_hf(
        tmp_path / "hf",
        tmp_path / "native",
        layer_pattern="MAA",
        mamba=dict(layout="attention", init="attention"),
    )
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)
    mamba_config = json.loads((tmp_path / "export" / "mamba_config.json").read_text())
    assert mamba_config["attn_layers"] == [1, 2] and mamba_config["d_xb"] == 32
    # Their directory: the plain Llama config.json next to mamba_config.json.
    (tmp_path / "theirs").mkdir()
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "theirs" / "config.json").write_text(json.dumps(config))
    shutil.copy(tmp_path / "export" / "mamba_config.json", tmp_path / "theirs")
    weights = load_file(tmp_path / "export" / "model.safetensors")
    assert "model.layers.0.mamba.in_proj_x.weight" in weights
    save_file(weights, tmp_path / "theirs" / "model.safetensors")
    import_hf(tmp_path / "theirs", tmp_path / "native-theirs", progress=False)
    ours, _ = native_model(tmp_path / "native")
    theirs, cfg = native_model(tmp_path / "native-theirs")
    assert cfg.layer_pattern == "MAA" and cfg.mamba.layout == "attention"
    assert torch.equal(native_logits(ours, sample_tokens()), native_logits(theirs, sample_tokens()))


def test_cald_layout_imports(runtime, tmp_path):
    """CALD's student directory: a transformers MambaConfig carrying `gpt_neox_config`, weights in
    pytorch_model.bin under GPTNeoX names with the mixer at attention.mamba."""
    hf = saved("gpt_neox", tmp_path / "hf")
    mamba = dict(layout="classic", d_inner=96, dt_rank=8, d_state=8)
    import_hf(tmp_path / "hf", tmp_path / "native", layer_pattern="MMM", mamba=mamba)
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)
    (tmp_path / "cald").mkdir()
    cald_config = {
        "architectures": ["HybridMambaForCausalLM"],
        "model_type": "mamba",
        "hidden_size": 64,
        "intermediate_size": 96,
        "state_size": 8,
        "conv_kernel": 4,
        "time_step_rank": 8,
        "use_bias": False,
        "use_conv_bias": True,
        "use_mamba": True,
        "gpt_neox_config": hf.config.to_dict(),
    }
    (tmp_path / "cald" / "config.json").write_text(json.dumps(cald_config))
    weights = load_file(tmp_path / "export" / "model.safetensors")
    assert "gpt_neox.layers.0.attention.mamba.x_proj.weight" in weights
    assert "embed_out.weight" in weights
    torch.save(weights, tmp_path / "cald" / "pytorch_model.bin")
    import_hf(tmp_path / "cald", tmp_path / "native-cald", progress=False)
    ours, _ = native_model(tmp_path / "native")
    theirs, cfg = native_model(tmp_path / "native-cald")
    assert cfg.layer_pattern == "MMM" and cfg.mamba.d_inner == 96
    assert torch.equal(native_logits(ours, sample_tokens()), native_logits(theirs, sample_tokens()))


_REMOTE_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


def test_hybrid_export_loads_with_trust_remote_code_alone(runtime, tmp_path):
    """A process that never imports megatron_mamba itself loads the export through its
    modeling_hybrid.py (transformers imports the package from there)."""
    import subprocess
    import sys

    factory, pattern, mamba = HYBRIDS["mistral"]
    saved(factory, tmp_path / "hf")
    import_hf(
        tmp_path / "hf", tmp_path / "native", layer_pattern=pattern, mamba=mamba, progress=False
    )
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)
    tokens = sample_tokens()
    torch.save(tokens, tmp_path / "tokens.pt")
    env = child_environment(HF_HOME=str(tmp_path / "hf_home"))
    args = [tmp_path / "export", tmp_path / "tokens.pt", tmp_path / "logits.pt"]
    proc = subprocess.run(
        [sys.executable, "-c", _REMOTE_LOAD, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = native_model(tmp_path / "native")
    assert_relative(torch.load(tmp_path / "logits.pt"), native_logits(model, tokens), 1e-5)


# Token ids and MambaInLlama's mamba_config.json survive the round trip.


def _exported_ids(path):
    config = json.loads((path / "config.json").read_text())
    generation = json.loads((path / "generation_config.json").read_text())
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return [config.get(k) for k in keys], [generation.get(k) for k in keys]


@pytest.mark.parametrize(
    "factory, ids",
    [
        (lambda: tiny_gpt_neox(), dict(bos_token_id=0, eos_token_id=0)),  # Pythia's
        (lambda: tiny_llama(), dict(bos_token_id=128, eos_token_id=[129, 130])),  # Llama-3-like
    ],
)
def test_export_writes_the_source_token_ids(runtime, tmp_path, factory, ids):
    model = factory()
    for key, value in ids.items():
        setattr(model.config, key, value)
    model.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    (tmp_path / "native" / "generation_config.json").unlink()  # as in a run or swap directory
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)
    expected = [ids["bos_token_id"], ids["eos_token_id"], None]
    assert _exported_ids(tmp_path / "export") == (expected, expected)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert loaded.generation_config.eos_token_id == ids["eos_token_id"]


def test_swap_keeps_token_ids_and_a_training_checkpoint_takes_the_tokenizers(runtime, tmp_path):
    from megatron_mamba.convert.native_files import parameter_layout, read_native, write_native
    from megatron_mamba.convert.swap import swap_native
    from tests.helpers.tiny_tokenizer import make_tokenizer

    model = tiny_llama(layers=3)
    model.config.bos_token_id, model.config.eos_token_id = 5, 7
    model.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    swap_native(tmp_path / "native", tmp_path / "swapped", "AMA", mamba=dict(layout="attention"))
    (tmp_path / "swapped" / "generation_config.json").unlink()
    export_hf(tmp_path / "swapped", tmp_path / "export", progress=False)
    assert _exported_ids(tmp_path / "export") == ([5, 7, None], [5, 7, None])

    # A checkpoint that records no ids (as a training run's): the tokenizer's are written.
    config = read_model_config(tmp_path / "native")
    state = read_native(tmp_path / "native", config)
    write_native(tmp_path / "run", config, state, parameter_layout(config))
    tokenizer = make_tokenizer(tmp_path / "tokenizer")  # no bos, eos 2, pad 1
    export_hf(tmp_path / "run", tmp_path / "run-export", tokenizer=tokenizer, progress=False)
    assert _exported_ids(tmp_path / "run-export") == ([None, 2, 1], [None, 2, 1])


@pytest.mark.parametrize(
    "pattern, mamba",
    [
        ("MA", dict(dt_rank=8, d_conv=3, conv_bias=False, proj_bias=True)),
        ("SA", dict(d_conv=3, conv_bias=False, proj_bias=True, chunk_size=8)),
        ("MA", dict(proj_bias=False)),
    ],
)
def test_mamba_in_llama_config_describes_the_weights(runtime, tmp_path, pattern, mamba):
    """Our export re-imports as MambaInLlama publishes it (a plain Llama config.json next to
    mamba_config.json) with every Mamba setting that shapes the weights."""
    saved(lambda: tiny_llama(layers=2), tmp_path / "hf")
    mamba = dict(layout="attention", init="attention", **mamba)
    import_hf(tmp_path / "hf", tmp_path / "native", pattern, mamba=mamba, progress=False)
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)
    (tmp_path / "theirs").mkdir()
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "theirs")
    for name in ("mamba_config.json", "model.safetensors"):
        shutil.copy(tmp_path / "export" / name, tmp_path / "theirs")
    import_hf(tmp_path / "theirs", tmp_path / "again", progress=False)
    ours, config = native_model(tmp_path / "native")
    theirs, again = native_model(tmp_path / "again")
    for key in ("dt_rank", "d_conv", "conv_bias", "chunk_size"):
        if key in mamba:
            assert getattr(again.mamba, key) == mamba[key], key
    assert again.mamba.proj_bias == mamba["proj_bias"]
    first, second = ours.state_dict(), theirs.state_dict()
    assert first.keys() == second.keys()
    for name in first:
        if not name.endswith("_extra_state"):
            assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("pattern, written", [("MA", True), ("SA", True), ("MS", False)])
def test_a_transformers_save_of_an_export_keeps_mamba_in_llamas_file(
    runtime, tmp_path, pattern, written
):
    """TRL saves through transformers' save_pretrained: a one-kind attention-layout hybrid keeps
    MambaInLlama's mamba_config.json (the export's), other hybrids have none."""
    saved(lambda: tiny_llama(layers=2), tmp_path / "hf")
    mamba = dict(layout="attention", init="attention")
    import_hf(tmp_path / "hf", tmp_path / "native", pattern, mamba=mamba, progress=False)
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)
    AutoModelForCausalLM.from_pretrained(tmp_path / "export").save_pretrained(tmp_path / "resaved")
    for directory in ("export", "resaved"):
        assert (tmp_path / directory / "mamba_config.json").is_file() == written, directory
    if written:
        exported, resaved = (tmp_path / d / "mamba_config.json" for d in ("export", "resaved"))
        assert json.loads(resaved.read_text()) == json.loads(exported.read_text())
        assert json.loads(resaved.read_text())["attn_layers"] == [1]


def test_mamba_in_llama_unequal_mamba1_biases_are_refused(runtime, tmp_path):
    saved(lambda: tiny_llama(layers=2), tmp_path / "hf")
    mamba = dict(layout="attention", init="attention")
    import_hf(tmp_path / "hf", tmp_path / "native", "MA", mamba=mamba, progress=False)
    export_hf(tmp_path / "native", tmp_path / "theirs", progress=False)
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "theirs")
    config = json.loads((tmp_path / "theirs" / "mamba_config.json").read_text())
    config["ssm_cfg"]["proj_z_bias"] = True
    (tmp_path / "theirs" / "mamba_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="proj_x_bias=False, proj_z_bias=True, out_proj_bias="):
        import_hf(tmp_path / "theirs", tmp_path / "again", progress=False)
