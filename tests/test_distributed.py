"""DDP on CPU (gloo, 2 forked processes): ranks stay in sync and match a single-process run."""

import json
import multiprocessing
import os
import socket
import traceback
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from maskformer.checkpoint import load_model
from maskformer.training.distributed import param_checksum
from maskformer.training.loop import TrainOptions, train
from test_train import small_cfg, write_equal_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, cfg, opts) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    code = 0
    try:
        train(cfg, opts)
    except BaseException:  # noqa: BLE001 - report anything, then exit with a code
        traceback.print_exc()
        code = 1
    os._exit(code)  # skip pytest's exit handlers in the forked child


def run_ddp(cfg, opts, world: int = 2, timeout: float = 240) -> None:
    """``train`` in ``world`` forked processes (imports are inherited: no start-up cost)."""
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, cfg, opts)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a DDP process hung"
    assert [p.exitcode for p in procs] == [0] * world


@pytest.fixture(scope="module")
def equal_data(tmp_path_factory):
    return write_equal_dataset(tmp_path_factory.mktemp("ddp") / "data", n=8)


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ddp_matches_single_process(tiny_cfg, equal_data, tmp_path):
    """Same global batch (2 ranks × 2 vs 1 × 4): same losses and weights, ranks in sync.

    Frozen BN, no dropout, no augmentation and 3 masks per image make the two runs the same
    computation up to float summation order (CE and num_masks normalise per rank otherwise).
    """
    cfg = small_cfg(
        tiny_cfg,
        **{
            "model.frozen_bn": True,
            "model.dropout": 0.0,
            "solver.batch_size": 4,
            "solver.max_iter": 3,
            "solver.checkpoint_period": 0,
        },
    )
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run_ddp(
        cfg,
        TrainOptions(
            train=str(equal_data),
            out=str(ddp),
            progress=False,
            augment=False,
            device="cpu",
        ),
    )
    train(
        cfg,
        TrainOptions(
            train=str(equal_data),
            out=str(single),
            progress=False,
            augment=False,
            device="cpu",
        ),
    )
    status = json.loads((ddp / "status.json").read_text())
    sums = status["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert param_checksum(load_model(ddp / "model_final.safetensors").model) == pytest.approx(
        sums[0], rel=1e-12
    )
    for rd, rs in zip(_metrics(ddp), _metrics(single), strict=True):
        assert rd["loss"] == pytest.approx(rs["loss"], rel=1e-5)
        assert rd["loss_mask_0"] == pytest.approx(rs["loss_mask_0"], rel=1e-5)
    a, b = (
        load_file(ddp / "model_final.safetensors"),
        load_file(single / "model_final.safetensors"),
    )
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) < 1e-5


@pytest.mark.slow
def test_ddp_ranks_stay_in_sync_with_accumulation(tiny_cfg, equal_data, tmp_path):
    """Trainable BN, dropout, augmentation and grad accumulation (no_sync): identical ranks, and
    the resume state of a 2-process run restores per-rank RNG streams."""
    cfg = small_cfg(
        tiny_cfg,
        **{
            "solver.batch_size": 4,
            "solver.grad_accum": 2,
            "solver.max_iter": 2,
            "solver.checkpoint_period": 1,
        },
    )
    out = tmp_path / "run"
    run_ddp(
        cfg,
        TrainOptions(train=str(equal_data), out=str(out), progress=False, device="cpu"),
    )
    sums = json.loads((out / "status.json").read_text())["rank_checksums"]
    assert sums[0] == sums[1]
    state = json.loads((out / "state_0000001.json").read_text())
    assert state["world_size"] == 2 and state["samples_seen"] == 4
    tensors = load_file(out / "state_0000001.safetensors")
    assert not torch.equal(tensors["rng.0.torch"], tensors["rng.1.torch"])  # per-rank streams
    records = _metrics(out)
    assert [r["iter"] for r in records] == [1, 2]
    assert records[0]["images_per_s"] > 0
    cfg2 = replace(cfg, solver=replace(cfg.solver, max_iter=3))  # resume and extend
    run_ddp(
        cfg2,
        TrainOptions(
            train=str(equal_data),
            out=str(out),
            progress=False,
            device="cpu",
            resume=True,
        ),
    )
    assert [r["iter"] for r in _metrics(out)] == [1, 2, 3]
