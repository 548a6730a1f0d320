"""Worker: the training entry point, killed (exit 17) inside its Nth checkpoint save.

Usage: train_killed_in_save.py N KEY=VALUE ... — the Nth save writes every file of its
checkpoint, then the process dies before the save is committed (renamed, `latest` moved).
"""

import os
import sys

from megatron.core import dist_checkpointing

from megatron_mamba.train import main

KILL_AT = int(sys.argv[1])
real_save = dist_checkpointing.save
saves = 0


def save_then_die(*args, **kwargs):
    global saves
    saves += 1
    result = real_save(*args, **kwargs)
    if saves == KILL_AT:
        os._exit(17)
    return result


dist_checkpointing.save = save_then_die
sys.exit(main(sys.argv[2:]))
