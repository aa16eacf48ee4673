"""Read .pkl / .pth weight files without ever running code that the file asks for.

A pickle is a small program: ``GLOBAL os system`` followed by ``REDUCE`` runs a shell command.
Model-zoo files only need numpy arrays and plain containers, so the unpickler here resolves an
allow-list of names and refuses everything else before it is imported or called. PyTorch files
(zip or legacy) go through ``torch.load(weights_only=True)``, PyTorch's own restricted unpickler.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maskformer.errors import CheckpointError

# First object of a legacy (non-zip) torch.save file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _safe_codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to latin-1, which protocol-2 pickles use to store bytes."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """(module, name) -> object for everything a numpy-array pickle needs (numpy 1 and 2 names)."""
    import numpy as np

    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _safe_codecs_encode,
    }
    for mod in ("numpy.core", "numpy._core"):  # files written under numpy 1 use numpy.core
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    # Plain containers and values that have no pickle opcode of their own in older protocols.
    for name in ("set", "frozenset", "slice", "complex", "bytearray", "range", "bytes"):
        allowed[("builtins", name)] = getattr(builtins, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` only returns allow-listed numpy / container names."""

    def __init__(self, file, *, path: str | Path, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2 pickles
            module = "builtins"
        obj = self._allowed.get((module, name))
        if obj is None:
            raise CheckpointError(
                f"refusing to load {self._path}: it asks for {module}.{name}, which could run code "
                "(only numpy arrays and plain containers are allowed)"
            )
        return obj


def load_pickle_file(path: str | Path) -> Any:
    """Unpickle ``path`` with the allow-list (latin-1 strings, as detectron2 reads model-zoo files).

    Raises:
        CheckpointError: missing file, not a pickle, or a pickle naming anything off the list.
    """
    path = _existing_file(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path=path, encoding="latin1").load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a hostile stream can raise almost anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path}: not a valid pickle file ({first})") from None


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with refusals as CheckpointError."""
    import torch

    path = _existing_file(path)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"global[: ]+'?([\w.]+)", str(e))
        what = found.group(1) if found else "a Python object outside the safe list"
        raise CheckpointError(
            f"refusing to load {path}: it asks for {what}, which could run code"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path} as a PyTorch file: {first}") from None


def load_weights_file(path: str | Path) -> Any:
    """Load a .pkl or .pth/.pt file safely, picking the reader from the file's content.

    Zip archives (PyTorch >= 1.6 ``torch.save``) go to ``torch.load(weights_only=True)``; anything
    else is read with the restricted unpickler, and handed to torch when it turns out to be a legacy
    ``torch.save`` stream (its first pickled object is torch's magic number).
    """
    path = _existing_file(path)
    if zipfile.is_zipfile(path):
        return load_torch_file(path)
    obj = load_pickle_file(path)
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return load_torch_file(path)
    return obj


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    return path
