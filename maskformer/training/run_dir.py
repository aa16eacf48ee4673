"""The files of a run directory that other programs read while training runs.

``config.json`` (the full config, usable with ``--config``), ``status.json`` (running / finished /
failed, rewritten atomically), ``metrics.jsonl`` (one JSON object per line, flushed line by line),
``last_checkpoint`` (the file name of the newest complete checkpoint) and the checkpoints themselves:
``model_XXXXXXX.safetensors`` + ``state_XXXXXXX.{safetensors,json}``, and ``model_final`` /
``state_final`` at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from maskformer.config import Config, config_to_dict


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    """Floats that JSON can hold (NaN/inf become strings so every line stays valid JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


class RunDir:
    """Reads and writes one run directory. Only the main process should write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- names ---------------------------------------------------------------------------------
    def model_path(self, tag: str) -> Path:
        return self.path / f"model_{tag}.safetensors"

    def state_stem(self, tag: str) -> Path:
        return self.path / f"state_{tag}"

    @staticmethod
    def tag(iteration: int | None) -> str:
        """``0000500`` for iteration 500, ``final`` for None."""
        return "final" if iteration is None else f"{iteration:07d}"

    # -- writers -------------------------------------------------------------------------------
    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, cfg: Config) -> None:
        _atomic_write(self.path / "config.json", json.dumps(config_to_dict(cfg), indent=1))

    def write_status(self, state: str, message: str = "", **fields: Any) -> None:
        """``state`` is ``running``, ``finished`` or ``failed``; ``message`` one line for people."""
        doc = {
            "state": state,
            "message": message,
            "time": time.time(),
            "pid": os.getpid(),
            **fields,
        }
        _atomic_write(self.path / "status.json", json.dumps(_jsonable(doc)))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
            f.flush()

    def truncate_metrics(self, after_iter: int) -> None:
        """Drop records with ``iter > after_iter`` (a resumed run rewrites them)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("iter", 0) <= after_iter:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        _atomic_write(path, "".join(x + "\n" for x in kept))

    def mark_last_checkpoint(self, tag: str) -> None:
        _atomic_write(self.path / "last_checkpoint", self.model_path(tag).name)

    # -- readers -------------------------------------------------------------------------------
    def last_tag(self) -> str | None:
        """The tag named by ``last_checkpoint`` (``0000500`` / ``final``), or None."""
        path = self.path / "last_checkpoint"
        if not path.exists():
            return None
        name = path.read_text().strip()
        if not (name.startswith("model_") and name.endswith(".safetensors")):
            return None
        return name[len("model_") : -len(".safetensors")]

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def read_status(self) -> dict[str, Any] | None:
        path = self.path / "status.json"
        return json.loads(path.read_text()) if path.exists() else None
