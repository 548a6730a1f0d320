"""The conversion command lines: a round trip, and one clear error with exit 1 on bad input."""

import torch
from transformers import AutoModelForCausalLM

import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes with transformers' Auto*)
from tests.helpers.hf_tiny import tiny_gpt_neox
from tools import convert_hf_to_native, convert_native_to_hf


def test_round_trip_through_the_command_lines(runtime, tmp_path, capsys):
    hf = tiny_gpt_neox(True, layers=2)
    hf.save_pretrained(tmp_path / "hf")
    argv = [str(tmp_path / "hf"), str(tmp_path / "native"), "--layer-pattern", "MA"]
    assert convert_hf_to_native.main([*argv, "--mamba", "layout=classic"]) == 0
    assert convert_native_to_hf.main([str(tmp_path / "native"), str(tmp_path / "out")]) == 0
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert out.config.layer_pattern == "MA"
    assert torch.equal(
        out.gpt_neox.layers[1].mlp.dense_h_to_4h.weight,
        hf.gpt_neox.layers[1].mlp.dense_h_to_4h.weight,
    )

    assert convert_native_to_hf.main([str(tmp_path / "native"), str(tmp_path / "out")]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert convert_hf_to_native.main([*argv, "--overwrite", "--tensor-parallel", "3"]) == 1
    assert "tensor-parallel size 3" in capsys.readouterr().err
    assert convert_native_to_hf.main([str(tmp_path / "hf"), str(tmp_path / "x")]) == 1
    assert "hf is a transformers directory, not a native checkpoint: import it first" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_more_bad_inputs_exit_1_with_one_line(runtime, tmp_path, capsys):
    from tools import swap_layers

    tiny_gpt_neox(True, layers=2).save_pretrained(tmp_path / "hf")
    assert convert_hf_to_native.main([str(tmp_path / "hf"), str(tmp_path / "native")]) == 0
    capsys.readouterr()

    def one_error(code: int, expected: str) -> None:
        assert code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err

    missing = str(tmp_path / "missing")
    one_error(swap_layers.main([missing, str(tmp_path / "s"), "--layer-pattern", "MA"]), missing)
    argv = [str(tmp_path / "native"), str(tmp_path / "out")]
    one_error(convert_native_to_hf.main([*argv, "--tokenizer", missing]), "does not exist")
    one_error(convert_native_to_hf.main([*argv, "--max-shard-gb", "0"]), "must be positive")
    (tmp_path / "afile").write_text("x")
    afile = [str(tmp_path / "afile"), "--overwrite"]
    one_error(convert_native_to_hf.main([str(tmp_path / "native"), *afile]), "not a directory")
    one_error(convert_hf_to_native.main([str(tmp_path / "hf"), *afile]), "not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "hf", "native"]
    one_error(
        convert_hf_to_native.main([missing, str(tmp_path / "n2")]),
        f"{missing} is not a directory (expected an HF model)",
    )
    one_error(
        convert_hf_to_native.main(
            [str(tmp_path / "hf"), str(tmp_path / "n3"), "--mamba", "d_state=8"]
        ),
        "the Mamba settings d_state=8 apply to no layer: the layer pattern AA is all attention",
    )
    assert not (tmp_path / "n3").exists()


def test_a_config_json_that_is_broken_or_lacks_a_shape_key_is_named(runtime, tmp_path, capsys):
    """transformers would fill a missing key with its default (GPTNeoX's are GPT-NeoX-20B's)
    and the import would fail later on something else."""
    import json

    hf = tmp_path / "hf"
    tiny_gpt_neox(True, layers=2).save_pretrained(hf)
    capsys.readouterr()
    config = json.loads((hf / "config.json").read_text())
    cald = {"model_type": "mamba", "intermediate_size": 64, "state_size": 4, "conv_kernel": 4}
    for broken, expected in (
        ({k: v for k, v in config.items() if k != "num_attention_heads"}, "num_attention_heads"),
        ("{not json", "is not valid JSON"),
        ([1, 2], "holds a list; expected a JSON object"),
        ({**cald, "gpt_neox_config": config}, "lacks time_step_rank"),
        ({**cald, "time_step_rank": 4, "gpt_neox_config": {}}, "(gpt_neox_config) lacks hidden"),
    ):
        text = broken if isinstance(broken, str) else json.dumps(broken)
        (hf / "config.json").write_text(text)
        assert convert_hf_to_native.main([str(hf), str(tmp_path / "native")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {hf / 'config.json'}") and expected in err, err
        assert err.count("\n") == 1 and not (tmp_path / "native").exists()


def test_overwrite_never_replaces_a_source_a_folder_holding_one_or_a_foreign_folder(
    runtime, tmp_path, capsys
):
    """--overwrite replaces only a converter's own earlier output: never what the conversion
    reads (a source given as its own output, or a folder above it), nor a folder that holds
    neither a transformers directory nor a native checkpoint."""
    from tools import swap_layers

    runs = tmp_path / "runs"
    hf, native = runs / "hf", runs / "native"
    tiny_gpt_neox(True, layers=2).save_pretrained(hf)
    assert convert_hf_to_native.main([str(hf), str(native)]) == 0
    (runs / "notes.txt").write_text("keep me")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f").write_text("x")
    capsys.readouterr()
    cases = [
        ("is the source", convert_native_to_hf, [native, native]),
        ("is the source", convert_hf_to_native, [hf, hf]),
        ("is the source", swap_layers, [native, native, "--layer-pattern", "MA"]),
        ("is the source", convert_native_to_hf, [native, hf, "--tokenizer", hf]),
        ("holds the source", convert_native_to_hf, [native / "checkpoints", tmp_path]),
        ("holds the source", convert_hf_to_native, [hf, runs]),
        ("holds neither a transformers directory", convert_hf_to_native, [hf, tmp_path / "other"]),
        ("which is a file", convert_hf_to_native, [hf, tmp_path / "afile" / "sub"]),
    ]
    for expected, tool, args in cases:
        assert tool.main([*map(str, args), "--overwrite"]) == 1, (expected, args)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert sorted(p.name for p in runs.iterdir()) == ["hf", "native", "notes.txt"]
    assert (tmp_path / "other" / "f").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "other", "runs"]
    # a converter's own earlier output is still replaced
    assert convert_native_to_hf.main([str(native), str(tmp_path / "out")]) == 0
    assert convert_native_to_hf.main([str(native), str(tmp_path / "out"), "--overwrite"]) == 0


def test_exporting_a_step_directory_carries_the_imports_tokenizer(runtime, tmp_path, capsys):
    """The tokenizer lives in the import's top directory: exporting one of its checkpoints
    dropped it (and with it the bos/eos ids of a training run)."""
    from tests.helpers.tiny_tokenizer import make_tokenizer

    make_tokenizer(tmp_path / "hf")
    tiny_gpt_neox(True, layers=2).save_pretrained(tmp_path / "hf")
    assert convert_hf_to_native.main([str(tmp_path / "hf"), str(tmp_path / "native")]) == 0
    step = tmp_path / "native" / "checkpoints" / "step_00000000"
    assert convert_native_to_hf.main([str(step), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert "warning" not in capsys.readouterr().err


def test_an_export_without_a_tokenizer_warns(runtime, tmp_path, capsys):
    """Not refused (the weights may be all that is wanted), but no longer silent: without bos/
    eos ids the export's generation never stops."""
    from tests.helpers.conversion import edit_config

    tiny_gpt_neox(True, layers=2).save_pretrained(tmp_path / "hf")
    edit_config(tmp_path / "hf", bos_token_id=None, eos_token_id=None)
    assert convert_hf_to_native.main([str(tmp_path / "hf"), str(tmp_path / "native")]) == 0
    capsys.readouterr()
    assert convert_native_to_hf.main([str(tmp_path / "native"), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err  # then the progress bar
    assert err.startswith("warning: the export has no tokenizer files and no bos/eos ids"), err
    assert "pass --tokenizer" in err.splitlines()[0] and err.count("warning") == 1, err
    assert (tmp_path / "out" / "config.json").is_file()


def test_importing_a_native_checkpoint_names_the_tools_for_it(runtime, tmp_path, capsys):
    """It said only '<dir> has no config.json'."""
    tiny_gpt_neox(True, layers=2).save_pretrained(tmp_path / "hf")
    native = tmp_path / "native"
    assert convert_hf_to_native.main([str(tmp_path / "hf"), str(native)]) == 0
    capsys.readouterr()
    for source in (native, native / "checkpoints", native / "checkpoints" / "step_00000000"):
        assert convert_hf_to_native.main([str(source), str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"error: {source} is a native checkpoint, not a transformers directory: change its "
            "layers with tools/swap_layers.py, or export it with tools/convert_native_to_hf.py\n"
        )
    assert not (tmp_path / "out").exists()


def test_an_empty_layer_pattern_is_refused(runtime, tmp_path, capsys):
    """It was silently taken as the source's pattern (None still is)."""
    from tools import swap_layers

    tiny_gpt_neox(True, layers=2).save_pretrained(tmp_path / "hf")
    native = tmp_path / "native"
    assert convert_hf_to_native.main([str(tmp_path / "hf"), str(native)]) == 0
    capsys.readouterr()
    for tool, source in ((convert_hf_to_native, tmp_path / "hf"), (swap_layers, native)):
        assert tool.main([str(source), str(tmp_path / "out"), "--layer-pattern", ""]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: the layer pattern '' is empty; expected one symbol per")
        assert err.count("\n") == 1 and "keep the source's AA" in err, err
    assert not (tmp_path / "out").exists()


def test_the_converters_refuse_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    """Every process wrote the same output: '[Errno 17] File exists: ….partial/…' and
    tracebacks."""
    from tools import swap_layers

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = str(tmp_path / "out")
    for tool, argv, note in (
        (convert_hf_to_native, ["--tensor-parallel", "2"], "--tensor-parallel/--pipeline"),
        (convert_native_to_hf, [], ""),
        (swap_layers, ["--layer-pattern", "MA"], ""),
    ):
        assert tool.main([str(tmp_path / "source"), out, *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: WORLD_SIZE=2: tools/{tool.__name__.split('.')[-1]}.py")
        assert "runs as one process" in err and note in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_a_mistral_is_reported_as_mistral_and_both_dtype_spellings_are_taken(
    runtime, tmp_path, capsys
):
    """The summary said llama (the native arch of a sliding-window Llama); --dtype took only
    bf16 here but only bfloat16 in eval/run_lm_evals.py."""
    from tests.helpers.hf_tiny import tiny_mistral

    tiny_mistral(window=16, layers=2).save_pretrained(tmp_path / "hf")
    native, out = tmp_path / "native", tmp_path / "out"
    assert convert_hf_to_native.main([str(tmp_path / "hf"), str(native)]) == 0
    assert convert_native_to_hf.main([str(native), str(out), "--dtype", "bfloat16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"wrote {native}: mistral, layer pattern AA",
        f"wrote {out}: mistral, layer pattern AA",
    ]
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_the_export_docstring_names_the_import_that_registers_the_hybrids():
    assert "`import megatron_mamba.hf`" in convert_native_to_hf.__doc__
