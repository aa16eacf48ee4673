"""Resume state without pickles: optimiser, scaler, RNGs and data position as safetensors + JSON."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from maskformer.errors import CheckpointError

STATE_FORMAT = "maskformer-train-state/1"


@dataclass
class TrainState:
    """What a resumed run needs besides the model weights.

    Attributes:
        iteration: Updates done so far (the next iteration to run).
        samples_seen: Indices of the global sample stream consumed so far (all ranks together).
        world_size: Processes of the run that saved it (RNG states are per rank).
        extra: Free-form JSON (e.g. the schedule parameters, for the record).
    """

    iteration: int
    samples_seen: int
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# RNG states as tensors (so every rank's state can be gathered and stored)


def capture_rng() -> dict[str, torch.Tensor]:
    """This process's torch (CPU and current CUDA device), numpy and python RNG states as tensors."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    _, key, pos, has_gauss, gauss = np.random.get_state()
    gauss_bits = torch.tensor([gauss], dtype=torch.float64).view(torch.int64)
    out["numpy"] = torch.cat(
        [
            torch.from_numpy(key.astype(np.int64)),
            torch.tensor([pos, has_gauss]),
            gauss_bits,
        ]
    )  # (627,)
    version, internal, py_gauss = random.getstate()
    py_gauss_bits = torch.tensor([py_gauss or 0.0], dtype=torch.float64).view(torch.int64)
    out["python"] = torch.cat(
        [
            torch.tensor([version, py_gauss is not None]),
            torch.tensor(internal, dtype=torch.int64),
            py_gauss_bits,
        ]
    )  # (628,)
    return out


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(states["torch"].to(torch.uint8))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].to(torch.uint8))
    n = states["numpy"].to(torch.int64)
    gauss = float(n[-1:].view(torch.float64).item())
    np.random.set_state(
        ("MT19937", n[:624].numpy().astype(np.uint32), int(n[624]), int(n[625]), gauss)
    )
    p = states["python"].to(torch.int64)
    py_gauss = float(p[-1:].view(torch.float64).item()) if int(p[1]) else None
    random.setstate((int(p[0]), tuple(int(x) for x in p[2:-1]), py_gauss))


# ------------------------------------------------------------------------------------------------
# optimiser state: tensors to safetensors, the rest to JSON


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer.state."):
            idx, name = key[len("optimizer.state.") :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [
        {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------------
# files


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_train_state(
    stem: str | Path,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    rng_per_rank: list[dict[str, torch.Tensor]],
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write ``stem.safetensors`` (tensors) then ``stem.json`` (everything else), each atomically.

    Args:
        stem: Path without suffix, e.g. ``RUN_DIR/state_0000500``.
        state: Iteration and data position.
        optimizer: Its ``state_dict()`` is stored (param names kept to check the model on resume).
        rng_per_rank: ``capture_rng()`` of every rank, in rank order.
        scaler: fp16 GradScaler, if used.
    """
    stem = Path(stem)
    tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    for rank, rng in enumerate(rng_per_rank):
        tensors.update({f"rng.{rank}.{k}": v.contiguous() for k, v in rng.items()})
    tmp = stem.with_name(f".{stem.name}.safetensors.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT})
    os.replace(tmp, stem.with_suffix(".safetensors"))
    doc = {
        "format": STATE_FORMAT,
        "iteration": state.iteration,
        "samples_seen": state.samples_seen,
        "world_size": state.world_size,
        "optimizer": optim_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "extra": state.extra,
    }
    _atomic_write_text(stem.with_suffix(".json"), json.dumps(doc, indent=1))


def load_train_state(
    stem: str | Path,
    optimizer: torch.optim.Optimizer,
    rank: int = 0,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """Load a state written by ``save_train_state`` into ``optimizer`` (and ``scaler``).

    Returns:
        The ``TrainState`` and this rank's RNG states (None when the saving run had fewer ranks).

    Raises:
        CheckpointError: missing/corrupt files, or an optimiser that does not match the model.
    """
    stem = Path(stem)
    try:
        doc = json.loads(stem.with_suffix(".json").read_text())
        tensors = load_file(str(stem.with_suffix(".safetensors")))
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read the training state {stem}.json/.safetensors: {e}"
        ) from None
    if doc.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{stem}.json is not a training state ({STATE_FORMAT})")
    sd = _unflatten_optimizer(tensors, doc["optimizer"])
    _check_param_names(optimizer, sd, stem)
    optimizer.load_state_dict(sd)
    _match_param_layouts(optimizer)
    if scaler is not None and doc.get("scaler"):
        scaler.load_state_dict(doc["scaler"])
    prefix = f"rng.{rank}."
    rng = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)} or None
    state = TrainState(
        doc["iteration"],
        doc["samples_seen"],
        doc.get("world_size", 1),
        doc.get("extra", {}),
    )
    return state, rng


def _match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded moment tensor its parameter's strides (files hold contiguous tensors).

    The fused AdamW kernel walks a parameter and its moments as flat memory, so an NCHW moment for
    a channels-last weight would update the wrong elements, silently.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    optimizer.state[p][name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _check_param_names(optimizer: torch.optim.Optimizer, sd: dict, stem: Path) -> None:
    now = [g.get("param_names") for g in optimizer.param_groups]
    saved = [g.get("param_names") for g in sd["param_groups"]]
    if now != saved:
        raise CheckpointError(
            f"the training state {stem}.json was saved for a different model or optimiser "
            "configuration; resume with the same config, or start a new run with --init"
        )
