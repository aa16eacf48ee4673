"""A Hugging Face hub id -> a local model folder, through ``huggingface_hub``'s own cache.

Online, the files are downloaded (once) into the hub cache; offline (``HF_HUB_OFFLINE=1``) only the
cache is read, and a model missing from it is one clear error naming the variable and the folder.
Only ``config.json`` and one weights file are fetched: ``model.safetensors`` when the repository
has it, else ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``, never unpickled
freely).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from maskformer.errors import CheckpointError

# owner/name, optionally @revision: what the hub accepts as a model repository id.
_HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]+))?$"
)
_TRUE = {"1", "on", "yes", "true"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``spec`` reads as ``owner/name[@revision]``, else None."""
    m = _HUB_ID.match(spec)
    if m is None or ".." in spec or spec.endswith((".safetensors", ".pkl", ".pth", ".onnx")):
        return None
    return m["repo"], m["rev"]


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids network access (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The folder ``huggingface_hub`` keeps models in: ``HF_HUB_CACHE``, else ``HF_HOME/hub``."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def fetch_hub_model(
    repo_id: str,
    revision: str | None = None,
    *,
    progress: Callable[[float, str], None] | None = None,
) -> Path:
    """The local snapshot folder of ``repo_id`` holding config.json and one weights file.

    Raises:
        CheckpointError: offline and not cached, not found on the hub, or a network failure; each
            names where the cache is and what to do.
    """
    cache = hub_cache_dir()
    offline = hub_offline()
    if progress:
        progress(0.0, f"{'looking up' if offline else 'downloading'} {repo_id} (cache {cache})")
    folder = _snapshot(repo_id, revision, ["config.json", "model.safetensors"], cache, offline)
    if not (folder / "model.safetensors").is_file():
        folder = _snapshot(repo_id, revision, ["config.json", "pytorch_model.bin"], cache, offline)
    if not (folder / "config.json").is_file() or not any(
        (folder / name).is_file() for name in WEIGHT_FILES
    ):
        where = "in the cache" if offline else "on the hub"
        raise CheckpointError(
            f"{repo_id} {where} ({folder}) has no config.json with model.safetensors or "
            "pytorch_model.bin: is it a MaskFormer model repository?"
        )
    return folder


def _snapshot(
    repo_id: str, revision: str | None, patterns: list[str], cache: Path, offline: bool
) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                cache_dir=str(cache),
                local_files_only=offline,
            )
        )
    except LocalEntryNotFoundError:
        if offline:
            raise CheckpointError(
                f"{repo_id} is not a local path and not in the Hugging Face cache ({cache}), and "
                "HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE to download, or "
                "give a local folder"
            ) from None
        raise CheckpointError(
            f"cannot download {repo_id} from the Hugging Face hub (no connection?) and it is not "
            f"in the cache ({cache}); give a local folder, or (with no network) set HF_HUB_OFFLINE=1 "
            "and HF_HUB_CACHE to a cache that has it"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise CheckpointError(
            f"{repo_id} is not a local path, and the Hugging Face hub has no public model of "
            "that name"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r} on the hub") from None
    except OSError as e:  # requests' connection errors, disk errors
        raise CheckpointError(
            f"cannot download {repo_id} from the Hugging Face hub ({_first_line(e)}); with no "
            f"network, set HF_HUB_OFFLINE=1 to use the cache ({cache})"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
