"""Model FLOPs utilisation: achieved model FLOPs over the GPUs' dense peak.

The peak is looked up from the GPU's name (dense bf16/fp16; tf32 is half of it); unknown GPUs
and CPUs report no MFU rather than a made-up one.
"""

from __future__ import annotations

import torch

# Dense (not sparse) 16-bit tensor-core peaks, in TFLOP/s, from the vendors' data sheets; the
# first key found in the device's name counts, so the PCIe / NVL cards (lower clocks and power
# than the SXM parts, e.g. "NVIDIA H100 PCIe") come before their family's SXM value.
PEAK_16BIT_TFLOPS = {
    "H100 PCIe": 756.5,
    "H100 NVL": 835.5,
    "H200 NVL": 835.5,
    "H200": 989.4,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "A10G": 70.0,
}


def peak_flops(device: torch.device, mixed_precision: str, use_tf32: bool) -> float | None:
    """One device's peak FLOP/s for this precision, or None where it is not known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    tflops = next((v for k, v in PEAK_16BIT_TFLOPS.items() if k in name), None)
    if tflops is None:
        return None
    if mixed_precision == "no":
        return tflops * 1e12 / 2 if use_tf32 else None
    return tflops * 1e12


def mfu(flops_per_token: float, tokens_per_s: float, peak_per_device: float, devices: int):
    return flops_per_token * tokens_per_s / (peak_per_device * devices)
