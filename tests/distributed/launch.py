"""The helpers that start real multi-process runs (gloo on CPU, nccl on GPUs) and tools.

On CPU the processes fork from a server that has imported the training stack once
(`multiprocessing`'s forkserver), instead of each spending 10-15 s importing megatron-core and
torch's compiler stack as a fresh torchrun worker does. Each one gets torchrun's environment
(RANK, WORLD_SIZE, MASTER_ADDR, ...) and runs the script as `__main__` with its argv, so the code
under test is the same; the example scripts' tests still go through real torchrun, and
MEGATRON_MAMBA_TEST_LAUNCHER=torchrun makes every run here a real subprocess.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRELOAD = ["megatron_mamba.train", "megatron_mamba.convert.importer", __name__]
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Finished:
    """How the processes of one run ended: the first failure's exit code (0 when none), and
    every process's stdout and stderr, rank by rank."""

    returncode: int
    stdout: str
    stderr: str


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child that starts a world of its own, without the
    rendezvous variables an in-process runtime left (the child would try to bind the port
    this process's store still holds), plus `extra`."""
    return {k: v for k, v in os.environ.items() if k not in RENDEZVOUS} | extra


def _environment(cpu: bool) -> dict[str, str]:
    env = child_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _forking() -> bool:
    return os.environ.get("MEGATRON_MAMBA_TEST_LAUNCHER") != "torchrun"


def launch(script: Path, nproc: int | None, *args, timeout: int = 600, cpu: bool = True):
    """`script` with `args` in `nproc` processes with torchrun's environment, or (nproc None)
    in one process on its own, the way `python script` runs it; returns a Finished."""
    env, argv = _environment(cpu), [str(a) for a in args]
    if cpu and _forking():
        return _forked(str(script), nproc, argv, env, timeout)
    cmd = [sys.executable, str(script), *argv]
    if nproc is not None:  # standalone: torchrun's agent binds a free port itself (no race)
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return Finished(proc.returncode, proc.stdout, proc.stderr)


def torchrun(script: Path, nproc: int, *args: str, timeout: int = 600, cpu: bool = True) -> str:
    """Run `script` as torchrun would with `nproc` processes; return its output or fail loudly.

    With `cpu` the processes see no GPU (gloo); otherwise they use one GPU each (nccl).
    """
    done = launch(script, nproc, *args, timeout=timeout, cpu=cpu)
    if done.returncode != 0:
        raise AssertionError(
            f"torchrun {Path(script).name} {' '.join(map(str, args))} with {nproc} processes "
            f"failed (exitcode: {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        )
    return done.stdout


def run_script(script: Path, *args, timeout: int = 300) -> str:
    """Run a Python script in a process of its own (no torchrun environment: the child picks its
    own free port); its output, or fail loudly. Tools run this way keep this process free of
    process groups."""
    done = launch(script, None, *args, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"{Path(script).name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        )
    return done.stdout


_server = None


def _context():
    """The forkserver, started with no GPU visible: its workers are the CPU runs, and a server
    that had initialised CUDA (importing the stack does on a GPU machine) could not fork them."""
    global _server
    if _server is None:
        _server = multiprocessing.get_context("forkserver")
        _server.set_forkserver_preload(PRELOAD)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if visible is None:
                del os.environ["CUDA_VISIBLE_DEVICES"]
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible
    return _server


def _worker(script: str, argv: list[str], env: dict[str, str], log: str) -> None:
    """One process forked from the server: the given environment, stdout and stderr to
    `log`.out / .err, the script run as __main__; exits with the script's exit code."""
    for descriptor, suffix in ((1, "out"), (2, "err")):
        os.dup2(os.open(f"{log}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), descriptor)
    os.environ.clear()
    os.environ.update(env)
    import torch

    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = [script, *argv]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _forked(script: str, nproc: int | None, argv: list[str], env: dict, timeout: int) -> Finished:
    rendezvous = {}
    if nproc is not None:
        rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        rendezvous |= {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0"}
    with tempfile.TemporaryDirectory() as logs:
        workers = []
        for rank in range(nproc or 1):
            rank_env = {**env, **rendezvous}
            if nproc is not None:
                rank_env |= {"RANK": str(rank), "LOCAL_RANK": str(rank)}
            log = f"{logs}/{rank}"
            worker = _context().Process(target=_worker, args=(script, argv, rank_env, log))
            worker.start()
            workers.append(worker)
        code = _wait(workers, timeout)

        def joined(suffix: str) -> str:
            return "".join(Path(f"{logs}/{r}.{suffix}").read_text(errors="replace") for r in ranks)

        ranks = range(len(workers))
        stderr = joined("err") + (f"\nkilled after the {timeout} s timeout" if code == -9 else "")
        return Finished(code, joined("out"), stderr)


def _wait(workers, timeout: int) -> int:
    """Until all exit; on the first failure (or the timeout) the others are killed, as torchrun
    does. The first failure's exit code (-9 for the timeout), or 0."""
    deadline = time.monotonic() + timeout
    while True:
        codes = [w.exitcode for w in workers]
        bad = [code for code in codes if code not in (None, 0)]
        if bad or time.monotonic() > deadline:
            for worker in workers:
                if worker.exitcode is None:
                    worker.kill()
                worker.join()
            return bad[0] if bad else -9
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.05)
