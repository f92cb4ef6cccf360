"""Reading checkpoint files without running code from them.

A checkpoint directory is a file a user may be handed, and unpickling one runs whatever it names.
Two files of a pivotal checkpoint are pickles: the trainer state (`torch.save` of numbers, tensors,
dicts and the RNG states) and DCP's `.metadata` (its index of the shards). The first is read with
`torch.load(weights_only=True)`, which allows tensors and plain containers only, plus the three
numpy names the numpy RNG state needs; the second with an unpickler that allows DCP's own metadata
classes and nothing else. Anything outside the lists is a `CheckpointError` naming the file and the
name it asked for; nothing it names is imported or called.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata

from .errors import CheckpointError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

# what np.random.get_state() pickles to: an ndarray of uint32 rebuilt by _reconstruct
NUMPY_STATE_GLOBALS = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_state_file(path: Path) -> dict:
    """A trainer-state file (`trainer_state.pt`, `rank_XXXXX.pt`) of tensors and plain values."""
    try:
        with torch.serialization.safe_globals(NUMPY_STATE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} holds something other than tensors and plain values, so "
                              f"it is not loaded (it could run code): {first}") from e


def _allowed(module: str, name: str) -> bool:
    if module == dcp_metadata.__name__:
        return isinstance(getattr(dcp_metadata, name, None), type)
    if module == "torch.distributed.checkpoint.filesystem":
        return name == "_StorageInfo"
    if module == "torch":
        return name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
    if module == "torch.serialization":
        return name == "_get_layout"  # maps a layout's name to the layout
    if module == "pathlib":
        return name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
    if module == "collections":
        return name == "OrderedDict"
    return module == "builtins" and name in ("set", "frozenset", "slice")


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, stream, path: Path):
        super().__init__(stream)
        self.path = path

    def find_class(self, module: str, name: str):
        if not _allowed(module, name):
            raise CheckpointError(f"{self.path} names {module}.{name}, which is not part of a "
                                  f"DCP checkpoint index; not loaded (it could run code)")
        return super().find_class(module, name)


class SafeDCPReader(FileSystemReader):
    """DCP's filesystem reader with `.metadata` read by the allow-list unpickler (the shards
    themselves DCP already reads with `torch.load(weights_only=True)`)."""

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            try:
                metadata = _MetadataUnpickler(stream, Path(path)).load()
            except (pickle.UnpicklingError, EOFError) as e:
                raise CheckpointError(f"{path} is not a readable DCP index: {e}") from e
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise CheckpointError(f"{path} is not a DCP index (it holds a "
                                  f"{type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def safe_dcp_reader(path: Path) -> SafeDCPReader:
    """A reader for the DCP directory `path`, its index checked here first: DCP would wrap a
    refusal in its own multi-rank exception, this raises the `CheckpointError` itself."""
    reader = SafeDCPReader(path)
    reader.read_metadata()
    return reader
