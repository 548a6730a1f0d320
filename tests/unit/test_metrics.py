"""Metrics: the console line, the jsonl record per step (deduplicated across a resume), the plot."""

import io
import json
import time

import pytest

from megatron_mamba.training.metrics import MetricsLogger, progress_line, read_metrics
from megatron_mamba.training.plots import plot
from tools import plot_run


def test_progress_line_format():
    line = progress_line(
        12,
        100,
        {
            "loss": 2.31041,
            "ce": 2.2,
            "lr": 3e-4,
            "grad_norm": 0.912,
            "tokens_per_s": 51234.0,
            "mfu": 0.412,
        },
        190.0,
    )
    assert line == (
        "step 12/100 | loss 2.3104 | ce 2.2000 | lr 3.00e-04 | grad_norm 0.9120 | "
        "tokens/s 51,234 | mfu 41.2% | eta 0:03:10"
    )


def test_jsonl_and_console_on_rank_zero_only(tmp_path):
    stream = io.StringIO()
    logger = MetricsLogger(tmp_path, ("console", "jsonl"), total_steps=3, stream=stream)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 1.0 / step, "lr": 0.1})
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and records[1]["loss"] == 0.5
    assert stream.getvalue().count("\n") == 3 and "step 3/3" in stream.getvalue()
    other = MetricsLogger(tmp_path / "other", ("console", "jsonl"), 3, is_main=False)
    other.log(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


def test_resumed_steps_replace_earlier_records_and_plot(tmp_path):
    logger = MetricsLogger(tmp_path, ("jsonl",), total_steps=4)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 9.0, "lr": 0.1})
    logger.close()
    resumed = MetricsLogger(tmp_path, ("jsonl",), total_steps=4, append=True)  # from step 2
    for step in (3, 4):
        resumed.log(step, {"loss": 1.0, "layer_mse": 0.5, "lr": 0.05})
    resumed.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records] == [(1, 9.0), (2, 9.0), (3, 1.0), (4, 1.0)]
    out = tmp_path / "curves.png"
    assert plot_run.main([str(tmp_path / "metrics.jsonl"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fresh_logger_replaces_an_earlier_runs_records(tmp_path):
    for total in (3, 2):
        logger = MetricsLogger(tmp_path, ("jsonl",), total_steps=total)
        for step in range(1, total + 1):
            logger.log(step, {"loss": float(total)})
        logger.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records] == [(1, 2.0), (2, 2.0)]


def test_the_plot_draws_losses_only(tmp_path):
    """fp16's loss scale (65536) and skipped flag, and the perplexity, are not losses."""
    logger = MetricsLogger(tmp_path, ("jsonl",), total_steps=2)
    for step in (1, 2):
        fp16 = {"loss": 5.0, "lr": 1e-3, "loss_scale": 65536.0, "skipped": 0, "grad_norm": 1.0}
        logger.log(step, {**fp16, "valid_loss": 4.5, "valid_ppl": 90.0, "mfu": 0.4})
    logger.close()
    drawn = plot(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert drawn == ["loss", "valid_loss", "lr"]


def test_the_plot_leaves_dpo_rewards_and_text_off_the_loss_axis(tmp_path, capsys):
    """DPO logs log-probabilities of hundreds and rewards beside its loss; a string field is
    no series at all; lr is named only where logged."""
    logger = MetricsLogger(tmp_path, ("jsonl",), total_steps=2)
    for step in (1, 2):
        dpo = {"reward_margin": 0.1, "reward_accuracy": 0.5, "logp_chosen": -190.0}
        logger.log(step, {"loss": 0.69, "dpo": 0.69, **dpo, "note": "warm"})
    logger.close()
    out = tmp_path / "curves.png"
    assert plot_run.main([str(tmp_path / "metrics.jsonl"), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"dpo, loss → {out}\n"


def test_plot_of_a_missing_file_fails_clearly(tmp_path, capsys):
    assert plot_run.main([str(tmp_path / "none.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("error: [Errno 2]")


def test_corrupt_metrics_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1}\n{oops\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not a JSON record"):
        read_metrics(path)


def test_wandb_runs_offline_with_the_run_config(tmp_path, monkeypatch):
    """No network: the run is written under the output directory, with the config and records."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = {"train": {"learning_rate": 0.00321}}
    logger = MetricsLogger(tmp_path, ("wandb",), 2, is_main=True, run_name="w", config=config)
    logger.log(1, {"loss": 2.5})
    logger.close()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    wanted = (b"learning_rate", b"0.00321", b"loss")
    # wandb's own service process writes the file; on a loaded machine it may still be
    # flushing when finish() returns
    deadline = time.monotonic() + 60
    while not all(w in run_file.read_bytes() for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.5)
    written = run_file.read_bytes()
    assert all(w in written for w in wanted)


def test_progress_line_names_only_skipped_steps():
    applied = progress_line(3, 10, {"loss": 2.0, "skipped": 0}, 1.0)
    skipped = progress_line(4, 10, {"loss": float("nan"), "skipped": 1}, 1.0)
    assert applied == "step 3/10 | loss 2.0000 | eta 0:00:01"
    assert skipped == "step 4/10 | loss nan | skipped | eta 0:00:01"
