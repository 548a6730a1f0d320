"""Stand-in inputs for the Pythia examples: random 65-token items in the pre-shuffled Pile's
layout and a random tiny attention-only teacher (whole tensors), both under OUT_DIR.

    python examples/pythia/make_tiny.py OUT_DIR
"""

import sys
from pathlib import Path

import numpy as np
import torch

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.parallel.shards import local_shards
from megatron_mamba.runtime import init_runtime, shutdown_runtime

ITEMS, ITEM, VOCAB = 256, 65, 512


def main(out: Path) -> None:
    # imported here, once megatron_mamba has quieted megatron-core's notices about TE and Apex
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    out.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(str(out / "document.bin"), dtype=np.uint16)
    rng = np.random.default_rng(0)
    for _ in range(ITEMS):  # short repeating phrases, so that there is something to learn
        phrase = rng.integers(0, VOCAB, rng.integers(3, 9))
        builder.add_document(np.resize(phrase, ITEM), [ITEM])
    builder.finalize(str(out / "document.idx"))
    init_runtime(seed=0)
    teacher = build_model(preset("tiny-gpt-neox", vocab_size=VOCAB), ParallelConfig())
    torch.save({k: v for k, (v, _) in local_shards(teacher).items()}, out / "teacher.pt")
    shutdown_runtime()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
