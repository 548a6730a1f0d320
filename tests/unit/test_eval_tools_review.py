"""Review of the evaluation and tool command lines: a user's mistake is refused with one line
before any model is built or evaluated (not with a traceback after hours of work), and the
swap summary names the architecture."""

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_mamba.convert.importer import import_hf
from tests.helpers.hf_tiny import VOCAB, tiny_gpt_neox, tiny_mistral
from tests.helpers.tiny_tokenizer import make_tokenizer

TASKS = "tests/assets/lm_eval_tasks"
TOKENS = 300  # the tokenizer's size, above the bare models' VOCAB


@pytest.fixture(scope="module")
def natives(runtime, tmp_path_factory):
    """Two tiny native imports: one carrying a tokenizer of its vocabulary's size, one without
    (as a training run) of a smaller vocabulary, imported from `bare`, an HF directory with no
    tokenizer."""
    root = tmp_path_factory.mktemp("eval_tools")
    tiny_gpt_neox(True, layers=2).save_pretrained(root / "bare")
    import_hf(root / "bare", root / "no_tokenizer", progress=False)
    make_tokenizer(root / "hf", vocab_size=TOKENS)
    tiny_gpt_neox(True, layers=2, vocab=TOKENS).save_pretrained(root / "hf")
    import_hf(root / "hf", root / "native", progress=False)
    return root


def test_swap_layers_summary_names_the_architecture(natives, tmp_path, capsys):
    from tools import swap_layers

    argv = [str(natives / "native"), str(tmp_path / "swapped"), "--layer-pattern", "MA"]
    assert swap_layers.main([*argv, "--mamba", "layout=classic"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'swapped'}: gpt_neox, layer pattern MA\n"


@pytest.fixture
def run_lm_evals(monkeypatch):
    """eval/run_lm_evals.main with evaluation replaced by a failure: a refusal must come first."""
    import eval.run_lm_evals as cli

    def evaluate(*args, **kwargs):
        raise AssertionError("a checkpoint was evaluated before the refusal")

    monkeypatch.setattr(cli, "evaluate", evaluate)
    return cli.main


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--batch_size", "abc", "abc is not a positive integer, 'auto' or 'auto:N'"),
        ("--batch_size", "0", "0 is not a positive integer"),
        ("--batch_size", "auto:x", "auto:x is not a positive integer"),
        ("--dtype", "bf", "invalid choice: 'bf'"),
    ],
)
def test_run_lm_evals_refuses_bad_options_before_loading(
    natives, run_lm_evals, option, value, message, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        run_lm_evals([str(natives / "native"), "--tasks", "tiny_mc", option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_run_lm_evals_accepts_auto_batch_sizes():
    from eval.run_lm_evals import parse_args

    for value in ("auto", "auto:4", "8"):
        assert parse_args(["c", "--batch_size", value]).batch_size == value


def test_run_lm_evals_refuses_an_empty_task_list(natives, run_lm_evals):
    with pytest.raises(SystemExit, match="--tasks ',' names no task"):
        run_lm_evals([str(natives / "native"), "--tasks", ","])


def test_run_lm_evals_refuses_an_output_dir_under_a_file(natives, run_lm_evals, tmp_path):
    """The outputs are written after every evaluation: a file in the way lost all of them."""
    (tmp_path / "afile").write_text("x")
    argv = [str(natives / "native"), "--tasks", "tiny_mc", "--include_path", TASKS]
    for output in (tmp_path / "afile", tmp_path / "afile" / "evals"):
        with pytest.raises(SystemExit, match=f"{tmp_path / 'afile'} is a file, not a directory"):
            run_lm_evals([*argv, "--output_dir", str(output)])


def test_run_lm_evals_checks_every_checkpoint_before_the_first_is_evaluated(
    natives, run_lm_evals, tmp_path
):
    good = str(natives / "native")
    (tmp_path / "empty").mkdir()
    argv = ["--tasks", "tiny_mc", "--include_path", TASKS, "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="neither a native checkpoint .* nor a transformers"):
        run_lm_evals([good, str(tmp_path / "empty"), *argv])
    with pytest.raises(SystemExit, match="no_tokenizer holds no tokenizer files"):
        run_lm_evals([good, str(natives / "no_tokenizer"), *argv])
    assert not (tmp_path / "o").exists()


def test_run_lm_evals_checks_every_tokenizer_before_loading_tasks_or_models(
    natives, run_lm_evals, tmp_path, monkeypatch
):
    """An HF directory without a tokenizer, a missing --tokenizer and one larger than the
    model's vocabulary failed with tracebacks, the last two only after the tasks had loaded
    (the last deep in the embedding)."""
    import eval.run_lm_evals as cli

    def task_manager(*args, **kwargs):
        raise AssertionError("the tasks were loaded before the refusal")

    monkeypatch.setattr(cli, "task_manager", task_manager)
    (tmp_path / "empty").mkdir()
    good, hf = str(natives / "native"), str(natives / "hf")
    cases = [
        ([good, str(natives / "bare")], f"{natives / 'bare'} holds no tokenizer files: give"),
        ([good, "--tokenizer", str(tmp_path / "nope")], f"{tmp_path / 'nope'} does not exist"),
        ([good, "--tokenizer", str(tmp_path / "empty")], "empty holds no tokenizer files;"),
        (
            [good, str(natives / "bare"), "--tokenizer", hf],
            f"{TOKENS} tokens, more than the vocab_size={VOCAB} of {natives / 'bare'}",
        ),
        (
            [good, str(natives / "no_tokenizer"), "--tokenizer", hf],
            f"{TOKENS} tokens, more than the vocab_size={VOCAB} of {natives / 'no_tokenizer'}",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_lm_evals([*argv, "--tasks", "tiny_mc", "--output_dir", str(tmp_path / "o")])
        assert message in str(exit_info.value.code), (argv, exit_info.value.code)
        assert "\n" not in str(exit_info.value.code)
    assert not (tmp_path / "o").exists()


def test_run_lm_evals_tokenizer_help_says_it_replaces_every_checkpoints(capsys):
    from eval.run_lm_evals import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "used for every checkpoint, in place of their own" in help_text


def test_the_model_refuses_a_directory_that_holds_no_model(tmp_path):
    from megatron_mamba.evaluation.lm_eval_model import MegatronMambaLM

    with pytest.raises(ValueError, match=f"{tmp_path} is neither a native checkpoint"):
        MegatronMambaLM(pretrained=str(tmp_path), device="cpu")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> str:
    prefix = tmp_path_factory.mktemp("held_out") / "d"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for length in (40, 23, 61):
        builder.add_document(np.random.default_rng(length).integers(0, VOCAB, length), [length])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def _perplexity(natives, held_out, *options) -> int:
    from eval.perplexity import main

    argv = ["--checkpoint", str(natives / "native"), "--data", held_out, "--seq_length", "16"]
    return main([*argv, *options])


@pytest.mark.parametrize(
    "options, message",
    [
        (["--micro_batch", "64"], "has 7 windows, fewer than --micro_batch × data-parallel size"),
        (["--max_windows", "2", "--micro_batch", "4"], "--max_windows 2 is fewer than --micro"),
        (["--tensor", "2"], "world size 1 is not divisible by tensor×pipeline"),
        (["--tensor", "2"], "launch a multiple of 2 processes: torchrun --nproc-per-node 2"),
    ],
)
def test_perplexity_reports_a_user_error_in_one_line(natives, held_out, options, message, capsys):
    assert _perplexity(natives, held_out, *options) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def unfitting(runtime, tmp_path_factory):
    """Natives that cannot run at some settings: a Mistral with an 8-token sliding window, and
    a Mamba2 hybrid with one B group (no tensor-parallel split)."""
    root = tmp_path_factory.mktemp("unfitting")
    tiny_mistral(window=8, layers=2).save_pretrained(root / "mistral_hf")
    import_hf(root / "mistral_hf", root / "mistral", progress=False)
    tiny_gpt_neox(True, layers=2).save_pretrained(root / "neox_hf")
    mamba = dict(layout="classic", head_dim=16, chunk_size=8)
    import_hf(root / "neox_hf", root / "mamba2", layer_pattern="SA", mamba=mamba, progress=False)
    return root


@pytest.mark.parametrize(
    "late, options, message",
    [
        ("mistral", [], "--seq_length 16 exceeds the sliding_window=8 of "),
        ("mamba2", ["--tensor", "2"], "tensor-parallel size 2 does not divide mamba2's 1 B"),
    ],
)
def test_perplexity_checks_every_checkpoint_before_the_first_is_evaluated(
    natives, unfitting, held_out, tmp_path, monkeypatch, capsys, late, options, message
):
    """A later checkpoint that cannot run failed with a traceback once the earlier ones had
    been evaluated, and --output was never written."""
    import eval.perplexity as cli

    def held_out_loss(*args, **kwargs):
        raise AssertionError("evaluated before the refusal")

    monkeypatch.setattr(cli, "held_out_loss", held_out_loss)
    argv = ["--checkpoint", str(natives / "native"), str(unfitting / late), "--data", held_out]
    argv += ["--seq_length", "16", "--output", str(tmp_path / "ppl.json"), *options]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: "), captured
    assert message in captured.err and captured.err.count("\n") == 1, captured.err
    assert str(unfitting / late) in captured.err
    assert not list(tmp_path.iterdir())


def test_perplexity_refuses_sizes_below_one_for_the_parallel_layout(capsys):
    from eval.perplexity import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--checkpoint", "c", "--data", "d", "--pipeline", "0"])
    assert "--pipeline: 0 is not a positive integer" in capsys.readouterr().err


def test_perplexity_refuses_an_unwritable_output_before_evaluating(
    natives, held_out, tmp_path, monkeypatch, capsys
):
    """The output was written after every checkpoint's evaluation; a directory in its place
    failed then with a traceback and left a .partial file behind."""
    import eval.perplexity as cli

    def held_out_loss(*args, **kwargs):
        raise AssertionError("evaluated before the refusal")

    monkeypatch.setattr(cli, "held_out_loss", held_out_loss)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for output, message in (
        (tmp_path / "adir", "is a directory; expected a file path"),
        (tmp_path / "afile" / "ppl.json", f"{tmp_path / 'afile'} is a file, not a directory"),
    ):
        assert _perplexity(natives, held_out, "--output", str(output)) == 1
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_run_lm_evals_keeps_the_results_of_checkpoints_evaluated_before_a_failure(
    natives, monkeypatch, tmp_path
):
    """The outputs are written after each checkpoint: a later one failing to load (corrupt
    weights pass the up-front checks) does not lose the earlier ones' hours of evaluation."""
    import json

    import eval.run_lm_evals as cli

    def evaluate(checkpoint, *args, **kwargs):  # lm-eval's results of the first, then a failure
        if checkpoint.name == "second":
            raise RuntimeError("corrupt weights")
        return {"tiny_mc": {"acc,none": 0.75, "acc_stderr,none": 0.1}}

    monkeypatch.setattr(cli, "evaluate", evaluate)
    out = tmp_path / "o"
    argv = [str(natives / "native")] * 2 + ["--names", "first", "second", "--tasks", "tiny_mc"]
    argv += ["--include_path", TASKS, "--output_dir", str(out)]
    with pytest.raises(RuntimeError, match="corrupt weights"):
        cli.main(argv)
    assert list(json.loads((out / "results.json").read_text())) == ["first"]
    assert "| first | 0.750" in (out / "table.md").read_text()


def test_run_lm_evals_refuses_an_include_path_that_is_no_directory(natives, run_lm_evals, tmp_path):
    """It was reported as unknown tasks, as if the directory held other YAMLs."""
    (tmp_path / "afile").write_text("x")
    argv = [str(natives / "native"), "--tasks", "tiny_mc", "--include_path"]
    for path, what in ((tmp_path / "nope", "does not exist"), (tmp_path / "afile", "is not a")):
        with pytest.raises(SystemExit, match=f"--include_path {path} {what}"):
            run_lm_evals([*argv, str(path)])


def test_run_lm_evals_takes_both_dtype_spellings():
    from eval.run_lm_evals import parse_args

    for short, long in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")):
        assert parse_args(["c", "--dtype", short]).dtype == long
        assert parse_args(["c", "--dtype", long]).dtype == long


def test_the_table_keeps_huge_perplexities_readable():
    """An untrained model's perplexity printed as 681696992557726080.0."""
    from megatron_mamba.evaluation.suite import to_markdown

    table = {
        "metrics": {"mc": "acc", "ppl": "word_perplexity", "bpb": "bits_per_byte"},
        "rows": {
            "a": {"mc": 0.75, "ppl": 681696992557726080.0, "bpb": 0.81234, "mean acc": 0.75},
            "b": {"mc": 0.5, "ppl": 12.3456, "bpb": 1.5, "mean acc": 0.5},
        },
    }
    lines = to_markdown(table).splitlines()
    assert lines[2] == "| a | 0.7500 | 6.817e+17 | 0.8123 | 0.7500 |"
    assert lines[3] == "| b | 0.5000 | 12.35 | 1.5 | 0.5000 |"
