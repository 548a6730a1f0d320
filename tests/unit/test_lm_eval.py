"""The lm-eval model `megatron_mamba` through lm-eval's own entry points: on a native checkpoint
it gives what lm-eval's `hf` model gives on the export, its log-likelihoods are the native
(megatron-core) model's, and generate_until honours stop sequences and max tokens."""

import json
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from transformers import AutoTokenizer

from megatron_mamba.config import ParallelConfig
from megatron_mamba.convert.exporter import export_hf
from megatron_mamba.convert.importer import import_hf
from megatron_mamba.evaluation.lm_eval_model import MegatronMambaLM
from megatron_mamba.evaluation.suite import task_manager
from megatron_mamba.models.build import build_model
from megatron_mamba.training.checkpoint import load_weights, read_model_config
from tests.helpers.hf_tiny import randomize_norms, tiny_gpt_neox
from tests.helpers.tiny_tokenizer import make_tokenizer

TASKS = Path(__file__).resolve().parents[1] / "assets" / "lm_eval_tasks"
MAMBA = dict(layout="classic", d_state=16, head_dim=16, chunk_size=8)


@pytest.fixture(scope="module")
def checkpoints(runtime, tmp_path_factory):
    """A tiny Pythia-shaped hybrid (mamba1, mamba2, attention) as a native checkpoint and as
    its HF export, both carrying the tokenizer."""
    root = tmp_path_factory.mktemp("lm_eval")
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer(root / "hf"))
    model = tiny_gpt_neox(True, layers=3, vocab=len(tokenizer), positions=256, init_std=0.3)
    randomize_norms(model)
    model.save_pretrained(root / "hf")
    import_hf(root / "hf", root / "native", layer_pattern="MSA", mamba=MAMBA, progress=False)
    export_hf(root / "native", root / "export", progress=False)
    return root / "native", root / "export", tokenizer


def _evaluate(model: str, path: Path, tasks: list[str]) -> dict:
    out = lm_eval.simple_evaluate(
        model=model,
        model_args={"pretrained": str(path), "device": "cpu", "batch_size": 3},
        tasks=tasks,
        task_manager=task_manager(str(TASKS), tuple(tasks)),
    )
    return out["results"]


def test_local_tasks_give_what_the_hf_model_gives_on_the_export(checkpoints):
    native, export, _ = checkpoints
    tasks = ["tiny_mc", "tiny_ppl", "tiny_gen"]
    ours, theirs = _evaluate("megatron_mamba", native, tasks), _evaluate("hf", export, tasks)
    for task in tasks:
        metrics = {k: v for k, v in theirs[task].items() if isinstance(v, float)}
        assert metrics, task
        for name, value in metrics.items():
            # fp32 rounding of two log-softmax implementations, amplified by exp in perplexities
            assert ours[task][name] == pytest.approx(value, rel=1e-5), (task, name)


def _native_model(path: Path):
    config = read_model_config(path)
    model = build_model(config, ParallelConfig())
    load_weights(path / "checkpoints" / "step_00000000", model)
    return model.eval(), config


def _native_log_probs(model, vocab: int, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids]), None, None)[0, :, :vocab]
    return torch.log_softmax(logits.double(), dim=-1)


def _request(kind: str, *arguments) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)


def test_log_likelihoods_are_the_native_models(checkpoints):
    native, _, tokenizer = checkpoints
    model, config = _native_model(native)
    pairs = [
        ("The state space model", " reads a sequence one step at a time"),
        ("Tensor parallelism", " splits each weight matrix across devices"),
        ("A", " learning rate that warms up"),
    ]
    lm = MegatronMambaLM(pretrained=str(native), device="cpu", batch_size=2)
    got = lm.loglikelihood([_request("loglikelihood", *pair) for pair in pairs])
    for (context, continuation), (log_likelihood, greedy) in zip(pairs, got, strict=True):
        whole = tokenizer(context + continuation)["input_ids"]
        start = len(tokenizer(context)["input_ids"])
        log_probs = _native_log_probs(model, config.vocab_size, whole)
        targets = torch.tensor(whole[start:])
        picked = log_probs[start - 1 : -1].gather(-1, targets[:, None])
        assert log_likelihood == pytest.approx(picked.sum().item(), rel=1e-5, abs=1e-5)
        assert greedy == bool((log_probs[start - 1 : -1].argmax(-1) == targets).all())


def test_a_continuation_longer_than_max_length_is_refused(checkpoints):
    """lm-eval's hf model refuses it too; scoring it would read the wrong positions."""
    native, _, _ = checkpoints
    lm = MegatronMambaLM(pretrained=str(native), device="cpu", batch_size=2, max_length=4)
    with pytest.raises(ValueError, match="continuation of 5 tokens is longer than max_length=4"):
        lm._loglikelihood_tokens([(None, [1, 2], [3, 4, 5, 6, 7])])


def test_an_empty_context_or_continuation_is_refused(checkpoints):
    """lm-eval's hf model asserts both are non-empty: with no context the first continuation
    token has no position to be predicted from, and an empty continuation would score 0."""
    native, _, _ = checkpoints
    lm = MegatronMambaLM(pretrained=str(native), device="cpu", batch_size=2)
    with pytest.raises(ValueError, match="request 1 has no context tokens"):
        lm._loglikelihood_tokens([(None, [1], [3]), (None, [], [3, 4, 5])])
    with pytest.raises(ValueError, match=r"request 0 \('a', ''\) has no continuation tokens"):
        lm._loglikelihood_tokens([(("a", ""), [1, 2], [])])


def test_a_batch_size_below_one_is_refused(checkpoints):
    """A batch size of 0 failed in range() and one below 0 left every result None."""
    native, _, _ = checkpoints
    for size in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size={size}"):
            MegatronMambaLM(pretrained=str(native), device="cpu", batch_size=size)


def _greedy_text(model, vocab, tokenizer, prompt: str, steps: int) -> list[str]:
    """The decoded text after each of `steps` greedy tokens of the native model."""
    ids = tokenizer(prompt)["input_ids"]
    start, texts = len(ids), []
    for _ in range(steps):
        ids.append(int(_native_log_probs(model, vocab, ids)[-1].argmax()))
        texts.append(tokenizer.decode(ids[start:]))
    return texts


def test_generate_until_honours_stop_sequences_and_max_tokens(checkpoints):
    native, _, tokenizer = checkpoints
    model, config = _native_model(native)
    prompts = ["The values become the input", "Then", "Sequence parallelism shares the work"]
    greedy = {p: _greedy_text(model, config.vocab_size, tokenizer, p, 10) for p in prompts}
    lm = MegatronMambaLM(pretrained=str(native), device="cpu", batch_size=3)

    never = "\u2603never\u2603"  # one batch: the same generation settings for every prompt
    for tokens in (4, 10):
        capped = lm.generate_until(
            [
                _request("generate_until", p, {"until": [never], "max_gen_toks": tokens})
                for p in prompts
            ]
        )
        assert capped == [greedy[p][tokens - 1] for p in prompts]

    stops = {p: greedy[p][-1][len(greedy[p][2]) :][:2] for p in prompts}  # text of tokens 4..
    assert all(stops.values())
    stopped = lm.generate_until(
        [_request("generate_until", p, {"until": [stops[p]], "max_gen_toks": 10}) for p in prompts]
    )
    assert stopped == [greedy[p][-1].split(stops[p])[0] for p in prompts]


def test_a_training_run_needs_a_tokenizer(checkpoints, tmp_path):
    native, _, _ = checkpoints
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for item in (native / "checkpoints").iterdir():
        (run / "checkpoints" / item.name).symlink_to(item)
    with pytest.raises(ValueError, match="tokenizer="):
        MegatronMambaLM(pretrained=str(run), device="cpu")
    lm = MegatronMambaLM(pretrained=str(run), tokenizer=str(native), device="cpu")
    assert lm.model.config.layer_pattern == "MSA"


def test_a_generation_config_alone_is_not_a_tokenizer(checkpoints, tmp_path):
    """An import of a model directory without a tokenizer keeps only its generation_config.json:
    that directory must not be taken for the tokenizer's."""
    native, _, _ = checkpoints
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for item in (native / "checkpoints").iterdir():
        (run / "checkpoints" / item.name).symlink_to(item)
    (run / "generation_config.json").write_text('{"eos_token_id": 0}')
    with pytest.raises(ValueError, match="holds no tokenizer files.*tokenizer="):
        MegatronMambaLM(pretrained=str(run), device="cpu")


def test_run_lm_evals_writes_one_table_for_several_checkpoints(checkpoints, tmp_path, capsys):
    from eval.run_lm_evals import main

    native, export, _ = checkpoints
    argv = [str(native), str(export), "--names", "native", "export", "--device", "cpu"]
    argv += ["--tasks", "tiny_mc,tiny_ppl", "--include_path", str(TASKS)]
    assert main([*argv, "--output_dir", str(tmp_path / "evals")]) == 0
    table = json.loads((tmp_path / "evals" / "table.json").read_text())
    assert table["metrics"] == {"tiny_mc": "acc", "tiny_ppl": "word_perplexity"}
    reference = _evaluate("hf", export, ["tiny_mc", "tiny_ppl"])
    for name in ("native", "export"):
        row = table["rows"][name]
        assert row["tiny_mc"] == pytest.approx(reference["tiny_mc"]["acc,none"])
        expected_ppl = reference["tiny_ppl"]["word_perplexity,none"]
        assert row["tiny_ppl"] == pytest.approx(expected_ppl, rel=1e-5)
        assert row["mean acc"] == row["tiny_mc"]
    markdown = (tmp_path / "evals" / "table.md").read_text()
    assert markdown == capsys.readouterr().out
    assert "| native |" in markdown and "tiny_mc (acc)" in markdown
    results = json.loads((tmp_path / "evals" / "results.json").read_text())
    assert set(results) == {"native", "export"}


def test_run_lm_evals_refuses_unknown_tasks_before_loading(checkpoints, tmp_path):
    from eval.run_lm_evals import main

    native, _, _ = checkpoints
    with pytest.raises(SystemExit, match="unknown lm-eval task.*no_such_task"):
        main([str(native), "--tasks", "tiny_mc,no_such_task", "--include_path", str(TASKS)])
    with pytest.raises(SystemExit, match="not found"):
        main([str(tmp_path / "missing"), "--tasks", "tiny_mc"])


def test_run_lm_evals_refuses_a_task_whose_data_cannot_be_loaded_before_loading(
    checkpoints, tmp_path, monkeypatch
):
    """Offline, a dataset neither local nor cached fails before the first model loads."""
    from eval.run_lm_evals import main
    from megatron_mamba.evaluation import lm_eval_model

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(lm_eval_model.MegatronMambaLM, "__init__", no_model)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "unreachable.yaml").write_text(
        (TASKS / "tiny_mc.yaml")
        .read_text()
        .replace("task: tiny_mc", "task: unreachable")
        .replace(
            "custom_dataset: !function local_data.load\ndataset_kwargs:\n  file: tiny_mc.jsonl",
            f"dataset_path: json\ndataset_kwargs:\n  data_files: {tmp_path / 'absent.jsonl'}",
        )
    )
    native, _, _ = checkpoints
    out = str(tmp_path / "evals")
    argv = [
        str(native),
        "--tasks",
        "unreachable",
        "--include_path",
        str(tasks),
        "--output_dir",
        out,
    ]
    with pytest.raises(SystemExit, match=r"the data of lm-eval task\(s\) unreachable could not be"):
        main(argv)
    assert not (tmp_path / "evals").exists()


def test_run_lm_evals_refuses_a_name_given_twice(tmp_path):
    """results are keyed by name: a repeated name would drop a checkpoint's row silently."""
    from eval.run_lm_evals import main

    paths = [str(tmp_path / "one"), str(tmp_path / "two")]
    with pytest.raises(SystemExit, match="two checkpoints are named a"):
        main([*paths, "--names", "a", "a"])
    with pytest.raises(SystemExit, match=f"two checkpoints are named {paths[0]}"):
        main([paths[0], paths[0]])


def test_cald_suite_names_are_lm_eval_tasks():
    """With a local task among them the index is lm-eval's own as well."""
    from megatron_mamba.evaluation.suite import CALD_TASKS, check_tasks

    tasks = [*CALD_TASKS, "tiny_mc"]
    check_tasks(tasks, task_manager(str(TASKS), tuple(tasks)))  # raises on an unknown name


def test_local_tasks_alone_are_indexed_without_lm_evals_own():
    from megatron_mamba.evaluation.suite import check_tasks

    manager = task_manager(str(TASKS), ("tiny_mc", "tiny_ppl"))
    check_tasks(["tiny_mc", "tiny_ppl"], manager)
    assert "piqa" not in manager.all_tasks
    with pytest.raises(ValueError, match="unknown lm-eval task.*no_such_task"):
        check_tasks(
            ["tiny_mc", "no_such_task"], task_manager(str(TASKS), ("tiny_mc", "no_such_task"))
        )


def test_registering_keeps_lm_evals_own_models():
    """lm-eval registers its built-in models only while its registry is empty: registering
    ours first hid them (`--model hf` was 'no model for this name found'). A fresh process,
    as eval/lm_eval_main.py starts."""
    import subprocess
    import sys

    code = (
        "import megatron_mamba.evaluation\n"
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('hf').__name__, get_model('megatron_mamba').__name__)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["HFLM", "MegatronMambaLM"]
