"""Any checkpoint a user names -> one native checkpoint file, converted once and cached.

Accepted: a native ``.safetensors``; a Hugging Face model folder (``config.json`` + weights, or its
``model.safetensors`` / ``pytorch_model.bin`` itself); a Hugging Face hub id ``owner/name[@rev]``
(``maskformer.converters.hub``); an official ``.pkl`` / ``.pth``. Foreign files are converted with
the same safe readers as ``python -m maskformer convert`` (no pickled code runs) into the cache
folder ``$MASKFORMER_CACHE`` (default ``~/.cache/maskformer-studio``), under a name keyed by the
source's content, so the second use of a source costs one hash of its files.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from maskformer.errors import CheckpointError

Progress = Callable[[float, str], None]
CHECKPOINT_HELP = (
    "a native .safetensors checkpoint, a Hugging Face model folder or hub id (owner/name), or "
    "an official .pkl/.pth (converted once, cached in $MASKFORMER_CACHE)"
)

# Bumped when a converter change alters the files it writes: older cache entries are then ignored.
CONVERTER_VERSION = "1"
KINDS = ("native", "hf-folder", "hub", "official")
_OFFICIAL_SUFFIXES = (".pkl", ".pth", ".pt")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A native checkpoint file and where it came from.

    Attributes:
        path: the native .safetensors file to load.
        source: what the user named (a path or a hub id), for messages and model-version rows.
        kind: "native", "hf-folder", "hub" or "official".
        converted: True when it was converted by this call (False: native, or found in the cache).
    """

    path: Path
    source: str
    kind: str
    converted: bool = False

    def describe(self) -> str:
        """The source as a model-version row names it, e.g. ``facebook/x (hub)``."""
        label = {"hf-folder": "Hugging Face folder", "official": "official"}.get(
            self.kind, self.kind
        )
        return self.source if self.kind == "native" else f"{self.source} ({label})"


def default_cache_dir() -> Path:
    """``$MASKFORMER_CACHE``, else ``$XDG_CACHE_HOME/maskformer-studio`` (``~/.cache/...``)."""
    if os.environ.get("MASKFORMER_CACHE"):
        return Path(os.environ["MASKFORMER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "maskformer-studio"


def source_kind(spec: str | Path) -> str:
    """Which of ``KINDS`` a checkpoint argument is, from the file system alone (no network).

    Raises:
        CheckpointError: a path that does not exist and is no hub id, or a file of another kind.
    """
    from maskformer.converters.hub import parse_hub_id

    path = Path(spec)
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf-folder"
        raise CheckpointError(
            f"{path} is a folder without config.json: give a checkpoint file, a Hugging Face "
            "model folder or a hub id"
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if path.name in _HF_WEIGHTS and (path.parent / "config.json").is_file():
            return "hf-folder"
        if suffix in _OFFICIAL_SUFFIXES:
            return "official"
        if suffix == ".onnx":
            raise CheckpointError(
                f"{path} is an ONNX model: run it with --backend onnxruntime "
                "(Predictor.from_checkpoint reads it directly)"
            )
        return "native"  # load_checkpoint says clearly what else it might be
    if isinstance(spec, str) and parse_hub_id(spec) is not None:
        return "hub"
    raise CheckpointError(f"checkpoint not found: {spec} (not a file, a folder or a hub id)")


def resolve_checkpoint(
    spec: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> ResolvedCheckpoint:
    """The native checkpoint for ``spec``: itself when native, else converted (once) and cached.

    Args:
        spec: a path (native, Hugging Face folder or weights file, official .pkl/.pth) or a hub id.
        cache_dir: where converted files go (default ``default_cache_dir()``).
        progress: called with (fraction in [0, 1], message) as the steps go.

    Raises:
        CheckpointError: anything that cannot be found, read safely or converted.
    """
    kind = source_kind(spec)
    source = str(spec)
    if kind == "native":
        return ResolvedCheckpoint(Path(spec), source, kind)
    if kind == "hub":
        from maskformer.converters.hub import fetch_hub_model, parse_hub_id

        repo, revision = parse_hub_id(source)
        folder = fetch_hub_model(repo, revision, progress=progress)
    else:
        folder = Path(spec)
        if folder.is_file() and kind == "hf-folder":
            folder = folder.parent
    files = _source_files(folder, kind)
    if progress:
        progress(0.3, f"checking {source}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = source.split("@")[0] if kind == "hub" else source  # a revision: same content, same file
    out = cache / f"{_slug(name)}-{_content_key(kind, files)}.safetensors"
    if out.is_file():
        return ResolvedCheckpoint(out, source, kind, converted=False)
    if progress:
        progress(0.4, f"converting {source} (once; cached in {cache})")
    from maskformer.converters.convert import convert

    convert(folder, out, source=source)
    if progress:
        progress(1.0, f"converted {source}")
    return ResolvedCheckpoint(out, source, kind, converted=True)


def _source_files(folder: Path, kind: str) -> list[Path]:
    """The files whose content decides the conversion (config and weights)."""
    if kind == "official":
        return [folder]
    weights = next((folder / n for n in _HF_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(
            f"{folder} has neither model.safetensors nor pytorch_model.bin "
            "(sharded checkpoints are not supported)"
        )
    return [folder / "config.json", weights]


def _content_key(kind: str, files: list[Path]) -> str:
    """16 hex digits of SHA-256 over the converter version, the kind and the files' bytes."""
    h = hashlib.sha256(f"{CONVERTER_VERSION}:{kind}".encode())
    for f in files:
        h.update(f.name.encode() + b"\0")
        try:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as e:
            raise CheckpointError(f"cannot read {f}: {e}") from None
    return h.hexdigest()[:16]


def _slug(source: str) -> str:
    """A file-name-safe short form of the source (``facebook--maskformer-swin-tiny-ade``)."""
    name = source.rstrip("/\\")
    p = Path(name)
    if p.suffix.lower() in _OFFICIAL_SUFFIXES or p.name in _HF_WEIGHTS:
        name = p.parent.name if p.name in _HF_WEIGHTS else p.stem
    elif p.exists():
        name = p.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-.")[:80] or "model"
