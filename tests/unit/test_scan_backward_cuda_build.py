"""The CUDA selective-scan backward's build cache (kernels/scan_backward_cuda.py): keyed by the
source and the GPU kind, and a failed build leaves nothing behind. (The kernel itself runs in
tests/gpu/test_scan_backward_cuda_gpu.py.)"""

import concurrent.futures

import pytest

from megatron_mamba.kernels import scan_backward_cuda


@pytest.fixture
def source(tmp_path, monkeypatch):
    path = tmp_path / "kernel.cu"
    path.write_text("// one\n")
    monkeypatch.setattr(scan_backward_cuda, "SOURCE", path)
    monkeypatch.setenv("MEGATRON_MAMBA_KERNEL_CACHE", str(tmp_path / "cache"))
    return path


def test_the_cached_library_is_named_by_source_and_gpu_kind(source, tmp_path):
    hopper = scan_backward_cuda.library_path((9, 0))
    assert hopper.parent == tmp_path / "cache" and hopper.name.endswith("-sm_90a.so")
    assert scan_backward_cuda.library_path((8, 0)).name.endswith("-sm_80.so")
    source.write_text("// two\n")
    assert scan_backward_cuda.library_path((9, 0)) != hopper


def test_a_failed_build_says_so_and_leaves_nothing(source, tmp_path, monkeypatch):
    monkeypatch.setattr(scan_backward_cuda, "_nvcc", lambda: "false")
    with pytest.raises(RuntimeError, match="nvcc failed on .*kernel.cu"):
        scan_backward_cuda.build((9, 0))
    assert [f.name for f in (tmp_path / "cache").iterdir() if f.suffix != ".lock"] == []


def test_ranks_building_at_once_compile_once(source, tmp_path, monkeypatch):
    """Eight ranks of one machine starting together: one nvcc run, every rank gets the library."""
    calls = tmp_path / "calls"
    nvcc = tmp_path / "nvcc"
    nvcc.write_text(
        '#!/bin/sh\necho run >> "$CALLS"\nsleep 0.3\n'
        'while [ "$1" != "-o" ]; do shift; done\necho built > "$2"\n'
    )
    nvcc.chmod(0o755)
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setattr(scan_backward_cuda, "_nvcc", lambda: str(nvcc))
    with concurrent.futures.ThreadPoolExecutor(8) as ranks:
        built = list(ranks.map(lambda _: scan_backward_cuda.build((9, 0)), range(8)))
    assert calls.read_text().splitlines() == ["run"]
    assert set(built) == {scan_backward_cuda.library_path((9, 0))}
    assert built[0].read_text() == "built\n"


def test_a_built_library_is_not_built_again(source, monkeypatch):
    target = scan_backward_cuda.library_path((9, 0))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"built")
    monkeypatch.setattr(scan_backward_cuda, "_nvcc", lambda: pytest.fail("rebuilt"))
    assert scan_backward_cuda.build((9, 0)) == target


def test_the_real_source_builds_and_exports_its_entry_points(tmp_path, monkeypatch):
    """Compiles (no GPU needed) where nvcc is installed: both C entry points must be exported."""
    try:
        scan_backward_cuda._nvcc()
    except RuntimeError:
        pytest.skip("no nvcc here")
    monkeypatch.setenv("MEGATRON_MAMBA_KERNEL_CACHE", str(tmp_path))
    library = scan_backward_cuda._library((8, 0))  # an architecture every nvcc ≥ 11 knows
    assert library.megatron_mamba_error_string(2) == b"out of memory"
    assert library.megatron_mamba_scan_backward is not None


def test_without_nvcc_it_is_unavailable_and_says_why(source, monkeypatch):
    def missing():
        raise RuntimeError("the CUDA selective-scan backward needs nvcc")

    monkeypatch.setattr(scan_backward_cuda, "_nvcc", missing)
    scan_backward_cuda._library.cache_clear()
    scan_backward_cuda.available.cache_clear()
    with pytest.warns(UserWarning, match="using mamba_ssm's selective-scan backward: .*needs nvcc"):
        assert not scan_backward_cuda.available((7, 5))
    scan_backward_cuda.available.cache_clear()
