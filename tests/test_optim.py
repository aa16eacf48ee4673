"""Optimiser: official parameter groups, lr schedules vs torch's own schedulers, clipping."""

import math
from dataclasses import replace

import pytest
import torch

from maskformer.config import apply_overrides, get_preset
from maskformer.model import build_model
from maskformer.training.optim import (
    build_optimizer,
    clip_gradients,
    lr_at,
    set_lr,
    warmup_factor_at,
)


def _hyper(optimizer):
    """param name -> (lr multiplier, weight decay)."""
    out = {}
    for g in optimizer.param_groups:
        for name in g["param_names"]:
            assert name not in out, f"{name} is in two groups"
            out[name] = (g["lr_mult"], g["weight_decay"])
    return out


def test_resnet_param_groups(tiny_cfg):
    solver = replace(tiny_cfg.solver, backbone_multiplier=0.1, weight_decay=1e-4)
    model = build_model(tiny_cfg.model)
    opt = build_optimizer(model, solver)
    hyper = _hyper(opt)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(hyper) == trainable  # every trainable parameter exactly once
    assert hyper["backbone.body.conv1.0.weight"] == (0.1, 1e-4)
    assert hyper["backbone.body.conv1.1.weight"] == (
        0.1,
        0.0,
    )  # BN: no decay, backbone lr
    assert hyper["backbone.body.bn1.bias"] == (0.1, 0.0)
    assert hyper["pixel_decoder.adapter_1.norm.weight"] == (1.0, 0.0)  # GroupNorm
    assert hyper["pixel_decoder.mask_features.bias"] == (
        1.0,
        1e-4,
    )  # biases are decayed
    assert hyper["predictor.query_embed.weight"] == (1.0, 0.0)  # nn.Embedding
    assert hyper["predictor.transformer.decoder.norm.weight"] == (1.0, 0.0)  # LayerNorm
    assert hyper["predictor.transformer.decoder.layers.0.self_attn.in_proj_weight"] == (
        1.0,
        1e-4,
    )
    assert hyper["predictor.class_embed.bias"] == (1.0, 1e-4)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(solver.base_lr * g["lr_mult"])
    # AdamW with torch's defaults, as the official builder
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8


def test_frozen_bn_params_are_not_trained(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, {"model.frozen_bn": True})
    model = build_model(cfg.model)
    hyper = _hyper(build_optimizer(model, cfg.solver))
    assert not any(".bn" in n for n in hyper)


def test_swin_param_groups():
    cfg = get_preset("maskformer_tiny_swin")
    solver = replace(cfg.solver, backbone_multiplier=1.0, weight_decay=0.01)
    hyper = _hyper(build_optimizer(build_model(cfg.model), solver))
    assert hyper["backbone.layers.0.blocks.0.attn.relative_position_bias_table"] == (
        1.0,
        0.0,
    )
    assert hyper["backbone.layers.0.blocks.0.attn.qkv.weight"] == (1.0, 0.01)
    assert hyper["backbone.layers.0.blocks.0.norm1.weight"] == (1.0, 0.0)
    assert hyper["backbone.norm0.bias"] == (1.0, 0.0)  # the extra output norms
    assert hyper["backbone.layers.0.downsample.norm.weight"] == (1.0, 0.0)
    assert hyper["backbone.patch_embed.proj.bias"] == (1.0, 0.01)


def _torch_lrs(base_lr, schedulers_fn, n):
    """The lr torch's own schedulers give for iterations 0..n-1."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = schedulers_fn(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_schedule_matches_torch_polynomial_lr():
    solver = replace(get_preset("maskformer_r50_ade20k").solver, max_iter=200)
    ours = [lr_at(i, solver) for i in range(200)]
    ref = _torch_lrs(
        1e-4,
        lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=200, power=0.9),
        200,
    )
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-14)
    assert lr_at(0, solver) == 1e-4  # ResNet configs: no warmup
    assert lr_at(100, solver) == pytest.approx(1e-4 * 0.5**0.9)


def test_warmup_poly_matches_torch_linear_then_poly():
    """Swin recipe: linear warmup from factor 1e-6 times poly (detectron2 WarmupPolyLR)."""
    solver = replace(get_preset("maskformer_swin_t_ade20k").solver, max_iter=300, warmup_iters=40)
    assert solver.warmup_factor == 1e-6 and solver.base_lr == 6e-5
    ours = [lr_at(i, solver) for i in range(300)]
    ref = _torch_lrs(
        6e-5,
        lambda o: torch.optim.lr_scheduler.ChainedScheduler(
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=1e-6, total_iters=40),
                torch.optim.lr_scheduler.PolynomialLR(o, total_iters=300, power=0.9),
            ]
        ),
        300,
    )
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-15)
    assert lr_at(0, solver) == pytest.approx(6e-5 * 1e-6)
    assert lr_at(20, solver) == pytest.approx(6e-5 * (1e-6 * 0.5 + 0.5) * (1 - 20 / 300) ** 0.9)


def test_step_schedule_matches_torch_multistep():
    solver = replace(
        get_preset("maskformer_r50_coco_panoptic").solver,
        max_iter=100,
        steps=(60, 80),
        warmup_iters=0,
    )
    ours = [lr_at(i, solver) for i in range(100)]
    ref = _torch_lrs(
        1e-4,
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[60, 80], gamma=0.1),
        100,
    )
    assert ours == pytest.approx(ref, rel=1e-9)
    coco = get_preset("maskformer_r50_coco_panoptic").solver
    assert lr_at(369_599, coco) == pytest.approx(1e-4)
    assert lr_at(369_600, coco) == pytest.approx(1e-5)
    assert lr_at(5, coco) == pytest.approx(1e-4)  # warmup 10 iters with factor 1.0: no effect


def test_warmup_factor_formula():
    assert warmup_factor_at(0, 10, 0.001) == 0.001
    assert warmup_factor_at(5, 10, 0.001) == pytest.approx(0.001 * 0.5 + 0.5)
    assert warmup_factor_at(10, 10, 0.001) == 1.0


def test_set_lr_applies_multiplier(tiny_cfg):
    solver = replace(tiny_cfg.solver, backbone_multiplier=0.1)
    opt = build_optimizer(build_model(tiny_cfg.model), solver)
    set_lr(opt, 2e-3)
    lrs = {g["lr_mult"]: g["lr"] for g in opt.param_groups}
    assert lrs[1.0] == 2e-3 and lrs[0.1] == pytest.approx(2e-4)


def test_full_model_clipping():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(5, 3)), torch.nn.Parameter(torch.zeros(7))]
    for p in params:
        p.grad = torch.randn_like(p)
    expected = math.sqrt(sum(float((p.grad**2).sum()) for p in params))
    norm = clip_gradients(params, 0.01)
    assert float(norm) == pytest.approx(expected, rel=1e-6)
    after = math.sqrt(sum(float((p.grad**2).sum()) for p in params))
    assert after == pytest.approx(0.01, rel=1e-4)  # one global L2 norm, not per tensor
    grads = [p.grad.clone() for p in params]
    assert float(clip_gradients(params, 0.0)) == pytest.approx(after, rel=1e-5)  # 0: disabled
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, params))
