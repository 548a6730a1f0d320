"""transformers checkpoint directories, read and written one tensor at a time.

Reading accepts what `save_pretrained` writes and what the hubs hold: model.safetensors, sharded
safetensors with an index, or pytorch_model.bin (sharded or not; loaded with weights_only, never
unpickling arbitrary objects). A tensor is read only when asked for, so a converter holds at most
the tensors it is working on. Writing produces sharded safetensors with an index.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


class CheckpointFilesError(ValueError):
    """A checkpoint directory that is incomplete or not a transformers checkpoint."""


def _weight_map(root: Path) -> dict[str, str]:
    """Tensor name → file name, for whichever layout the directory uses."""
    for index in (SAFE_INDEX, BIN_INDEX):
        if (root / index).is_file():
            weight_map = json.loads((root / index).read_text())["weight_map"]
            missing = sorted({f for f in weight_map.values() if not (root / f).is_file()})
            if missing:
                raise CheckpointFilesError(
                    f"{root} is missing shard(s) {', '.join(missing)} listed in {index}"
                )
            return weight_map
    if (root / "model.safetensors").is_file():
        with safe_open(root / "model.safetensors", framework="pt") as f:
            return dict.fromkeys(f.keys(), "model.safetensors")
    if (root / "pytorch_model.bin").is_file():
        state = torch.load(root / "pytorch_model.bin", mmap=True, weights_only=True)
        return dict.fromkeys(state, "pytorch_model.bin")
    raise CheckpointFilesError(
        f"{root} has no weights: expected model.safetensors, {SAFE_INDEX}, pytorch_model.bin "
        f"or {BIN_INDEX}"
    )


# What a native run, import or checkpoint directory holds (training.checkpoint's layout).
_NATIVE_MARKERS = ("checkpoints", "model.yaml", "metadata.json", "latest")


def is_native_layout(root: Path) -> bool:
    """Whether `root` looks like a native checkpoint (a run, an import, or one checkpoint)."""
    return any((root / name).exists() for name in _NATIVE_MARKERS)


class HFCheckpoint:
    """The tensors of a transformers checkpoint directory, read on demand."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CheckpointFilesError(f"{self.root} is not a directory (expected an HF model)")
        if not (self.root / "config.json").is_file():
            if is_native_layout(self.root):
                raise CheckpointFilesError(
                    f"{self.root} is a native checkpoint, not a transformers directory: change "
                    "its layers with tools/swap_layers.py, or export it with "
                    "tools/convert_native_to_hf.py"
                )
            raise CheckpointFilesError(f"{self.root} has no config.json")
        self.weight_map = _weight_map(self.root)
        self._bin: dict[str, dict[str, torch.Tensor]] = {}

    def names(self) -> set[str]:
        return set(self.weight_map)

    def read(self, name: str) -> torch.Tensor:
        file = self.weight_map.get(name)
        if file is None:
            raise KeyError(name)
        if file.endswith(".safetensors"):
            # Opened per tensor so the file's pages are unmapped again right after.
            with safe_open(self.root / file, framework="pt") as f:
                return f.get_tensor(name)
        if file not in self._bin:
            self._bin[file] = torch.load(self.root / file, mmap=True, weights_only=True)
        return self._bin[file][name]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_file_streaming(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The safetensors format (8-byte header length, JSON header, raw little-endian data)
    written straight from each tensor's memory: safetensors' own save_file first copies the
    whole shard into bytes, which would double the memory of an export."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        end = offset + _nbytes(t)
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for t in tensors.values():
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)


def write_safetensors(
    root: Path, tensors: Iterable[tuple[str, torch.Tensor]], max_shard_bytes: int
) -> None:
    """Sharded safetensors plus index from a stream of tensors; at most one shard in memory."""
    shards: list[list[str]] = []
    pending: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal pending, size
        if pending:
            save_file_streaming(pending, root / f"shard-{len(shards):05d}.tmp")
            shards.append(list(pending))
            pending, size = {}, 0

    for name, tensor in tensors:
        tensor = tensor.contiguous()
        if size and size + _nbytes(tensor) > max_shard_bytes:
            flush()
        pending[name] = tensor
        size += _nbytes(tensor)
        total += _nbytes(tensor)
    flush()
    if len(shards) == 1:
        os.replace(root / "shard-00000.tmp", root / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(root / f"shard-{i:05d}.tmp", root / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _replaceable(path: Path) -> bool:
    """Whether `--overwrite` may replace the directory `path`: empty, or one of the outputs the
    converters write (a transformers directory, a native checkpoint)."""
    return not any(path.iterdir()) or any(
        (path / name).exists() for name in ("config.json", "checkpoints", "model.yaml")
    )


def check_output(path: str | Path, overwrite: bool, sources: Iterable[str | Path] = ()) -> Path:
    """`path` as an absolute path a converter may write: new, or (with `overwrite`) a directory
    it wrote before; never a `source` it reads or a folder holding one, nor under a file.
    Callers check before reading their sources, so a refusal costs nothing."""
    path = Path(os.path.abspath(path))
    for source in sources:
        source_path = Path(source).resolve()
        if path.resolve() == source_path or path.resolve() in source_path.parents:
            what = "is" if path.resolve() == source_path else "holds"
            raise FileExistsError(
                f"output {path} {what} the source {source}; expected another output path"
            )
    parent = next(p for p in path.parents if p.exists() or p.is_symlink())
    if not parent.is_dir():
        raise NotADirectoryError(
            f"output {path} lies under {parent}, which is a file; expected a new path or a "
            "directory to replace"
        )
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FileExistsError(
                f"output {path} exists and is not a directory; expected a directory to replace "
                "or a new path"
            )
        if not overwrite:
            raise FileExistsError(f"output {path} already exists; pass --overwrite to replace it")
        if not _replaceable(path):
            raise FileExistsError(
                f"output {path} holds neither a transformers directory (config.json) nor a "
                "native checkpoint, so --overwrite does not replace it; expected a new path, "
                "or remove it yourself"
            )
    return path


def prepare_output(path: str | Path, overwrite: bool, sources: Iterable[str | Path] = ()) -> Path:
    """A fresh temporary directory next to `path` (checked by `check_output`);
    `commit_output` moves it into place."""
    path = check_output(path, overwrite, sources)
    temporary = path.with_name(path.name + ".partial")
    _remove(temporary)
    temporary.mkdir(parents=True)
    return temporary


def commit_output(temporary: Path, path: str | Path) -> None:
    """Move the finished `temporary` to `path`. A replaced output is moved aside first and
    deleted only once the new one is in place, so a failure leaves the old one whole."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        os.replace(temporary, path)
        return
    old = path.with_name(path.name + ".old")
    _remove(old)
    os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextmanager
def output_directory(
    path: str | Path, overwrite: bool, sources: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """A temporary directory to write `path` in: moved into place when the block completes,
    removed if anything (the move included) fails, so `path` is never half-written. `sources`:
    what the conversion reads, which the output must not replace (`check_output`)."""
    temporary = prepare_output(path, overwrite, sources)
    try:
        yield temporary
        commit_output(temporary, Path(os.path.abspath(path)))
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    GENERATION_CONFIG,
)
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def has_tokenizer(source: Path) -> bool:
    return any((source / n).is_file() for n in TOKENIZER_FILES if n != GENERATION_CONFIG)


def find_tokenizer_dir(path: str | Path) -> Path | None:
    """The nearest directory at or above `path` that holds tokenizer files: a checkpoint
    directory inside a run or an import has none of its own, the import's top directory has
    its source's. A generation_config.json alone is none (an import keeps it even from a source
    without a tokenizer)."""
    path = Path(path).absolute()
    return next((d for d in (path, *path.parents) if has_tokenizer(d)), None)


def check_tokenizer_source(source: str | Path) -> Path:
    """A directory given as the tokenizer to copy must exist and hold tokenizer files."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"tokenizer directory {source} does not exist")
    if not has_tokenizer(source):
        expected = ", ".join(n for n in TOKENIZER_FILES if n != GENERATION_CONFIG)
        raise FileNotFoundError(
            f"tokenizer directory {source} holds no tokenizer files; expected one of {expected}"
        )
    return source


def load_tokenizer(source: str | Path):
    """The transformers tokenizer in the directory `source`; one ValueError if it cannot load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as error:  # noqa: BLE001  (whatever the tokenizer's loader raises)
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ValueError(f"the tokenizer in {source} cannot be loaded: {reason}") from None


def tokenizer_token_ids(source: Path) -> dict | None:
    """The bos/eos/pad ids of the tokenizer in `source`, overridden by those its
    generation_config.json sets; None when `source` holds no tokenizer."""
    if not has_tokenizer(source):
        return None
    tokenizer = load_tokenizer(source)
    ids = {key: getattr(tokenizer, key, None) for key in TOKEN_ID_KEYS}
    if (source / GENERATION_CONFIG).is_file():
        try:
            generation = json.loads((source / GENERATION_CONFIG).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{source / GENERATION_CONFIG} is not valid JSON: {error}") from error
        ids.update({k: generation[k] for k in TOKEN_ID_KEYS if generation.get(k) is not None})
    return ids


def copy_tokenizer(source: Path, target: Path) -> list[str]:
    """Copy the tokenizer (and generation config) files `source` has; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    return copied
