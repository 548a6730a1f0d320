"""Package metadata for megatron-mamba."""

from setuptools import find_packages, setup

setup(
    name="megatron_mamba",
    version="0.1.0",
    description="Turn pretrained Transformers into Mamba or hybrid Mamba models on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_mamba", "megatron_mamba.*"]),
    package_data={"megatron_mamba.kernels": ["csrc/*.cu"]},  # built with nvcc at first use
    install_requires=[
        "megatron-core>=0.16,<0.17",
        "torch>=2.6",
        "numpy",
        "packaging",
        "transformers>=5.23",  # the hybrid classes use its config and cache API
        "tokenizers",
        "safetensors",
        "pyyaml",
        "einops",
        "lm-eval>=0.4.13",
        "accelerate",
        "wandb",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "gpu": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        "zephyr": ["trl>=1.16"],  # the HF route of SFT/DPO on exported hybrids
        "dev": ["pytest", "pytest-xdist", "ruff", "trl>=1.16"],
    },
)
