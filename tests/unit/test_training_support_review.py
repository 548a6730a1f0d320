"""Review fixes in the trainer's supporting modules: metrics.jsonl stays strict JSON with
non-finite values; report_to null / [] / none means no metric sinks."""

import json
import math

import pytest
import torch

from megatron_mamba.config_io import ConfigError, load
from megatron_mamba.training.config import TrainConfig
from megatron_mamba.training.metrics import MetricsLogger, read_metrics
from megatron_mamba.training.plots import plot


def _refuse(token):
    raise ValueError(f"not JSON: {token}")


def test_non_finite_metrics_are_written_as_null_and_read_back_as_nan(tmp_path):
    """A skipped step logs grad_norm NaN; a diverged loss may be inf. Python's json writes them
    as bare NaN / Infinity, which jq and JavaScript refuse."""
    logger = MetricsLogger(tmp_path, ("jsonl",), total_steps=3)
    logger.log(1, {"loss": 2.0, "grad_norm": 0.5, "lr": 0.1})
    logger.log(2, {"loss": math.inf, "grad_norm": math.nan, "lr": 0.1, "skipped": 1})
    logger.log(3, {"loss": -math.inf, "grad_norm": 0.25, "lr": 0.1})
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    strict = [json.loads(line, parse_constant=_refuse) for line in lines]
    assert [(r["loss"], r["grad_norm"]) for r in strict] == [(2.0, 0.5), (None, None), (None, 0.25)]
    assert strict[1]["skipped"] == 1 and strict[1]["lr"] == 0.1
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert math.isnan(records[1]["loss"]) and math.isnan(records[1]["grad_norm"])
    assert records[0]["loss"] == 2.0 and records[2]["grad_norm"] == 0.25
    assert plot(tmp_path / "metrics.jsonl", tmp_path / "curves.png") == ["loss", "lr"]


@pytest.mark.parametrize("value", ["null", "", "[]", "none"])
def test_report_to_null_empty_or_none_means_no_sinks(value):
    train = load(TrainConfig, None, [f"report_to={value}"])
    assert train.report_to == ()


def test_report_to_null_in_a_yaml_file_means_no_sinks(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("report_to:\nkeep_checkpoint_steps: null\n")
    train = load(TrainConfig, path)
    assert (train.report_to, train.keep_checkpoint_steps) == ((), ())


def test_a_report_to_given_as_one_string_names_what_was_expected():
    with pytest.raises(ConfigError, match=r"\['console,jsonl'\]; expected a list of console"):
        load(TrainConfig, None, ["report_to=console,jsonl"])


@pytest.mark.parametrize(
    "name,sxm_name",
    [("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3"), ("NVIDIA H200 NVL", "NVIDIA H200")],
)
def test_mfu_of_a_pcie_or_nvl_card_uses_its_own_lower_peak(monkeypatch, name, sxm_name):
    """The PCIe / NVL cards peak below the SXM parts (H100 PCIe: 1513 sparse bf16 TFLOP/s on its
    data sheet, 756.5 dense): taking the SXM peak understated their MFU by a fifth or more."""
    from megatron_mamba.training import throughput

    cuda = torch.device("cuda", 0)
    peaks = {}
    for card in (name, sxm_name):
        monkeypatch.setattr(throughput.torch.cuda, "get_device_name", lambda device, c=card: c)
        peaks[card] = throughput.peak_flops(cuda, "bf16", use_tf32=True)
    assert peaks[sxm_name] == 989.4e12
    assert peaks[name] < 0.85 * peaks[sxm_name]
    assert throughput.peak_flops(cuda, "no", use_tf32=True) == peaks[sxm_name] / 2
