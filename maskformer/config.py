"""Configuration: frozen dataclasses, the named presets, and dataset metadata.

Only the ``build_*`` functions read a ``Config``; everything below them takes keyword arguments.
Every native checkpoint stores ``config_to_dict(cfg)`` and ``asdict(meta)`` so it describes itself.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# The official pixel statistics (0-255 scale, RGB), used by every MaskFormer config.
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)

# Swin variants as the official configs define them: embed dim, depths, heads, window, pretrain size.
SWIN_VARIANTS = {
    "swin_tiny": dict(
        swin_embed_dim=96,
        swin_depths=(2, 2, 6, 2),
        swin_num_heads=(3, 6, 12, 24),
        swin_window_size=7,
        swin_pretrain_img_size=224,
    ),
    "swin_small": dict(
        swin_embed_dim=96,
        swin_depths=(2, 2, 18, 2),
        swin_num_heads=(3, 6, 12, 24),
        swin_window_size=7,
        swin_pretrain_img_size=224,
    ),
    "swin_base": dict(
        swin_embed_dim=128,
        swin_depths=(2, 2, 18, 2),
        swin_num_heads=(4, 8, 16, 32),
        swin_window_size=12,
        swin_pretrain_img_size=384,
    ),
    "swin_large": dict(
        swin_embed_dim=192,
        swin_depths=(2, 2, 18, 2),
        swin_num_heads=(6, 12, 24, 48),
        swin_window_size=12,
        swin_pretrain_img_size=384,
    ),
}


class ConfigError(ValueError):
    """A configuration value or override that cannot be used."""


@dataclass(frozen=True)
class ModelConfig:
    """The network. Defaults are the official ADE20K R50 model."""

    # "resnet50" | "resnet101" | "resnet101c" (DeepLab stem, multi-grid res5) | "swin" (see swin_*)
    # | any other timm name that supports features_only=True (used by the tiny presets).
    backbone: str = "resnet50"
    pretrained: bool = False  # timm ImageNet weights; needs network access, never used in tests
    frozen_bn: bool = True  # detectron2 FrozenBN for ResNet backbones
    swin_embed_dim: int = 96
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)
    swin_num_heads: tuple[int, ...] = (3, 6, 12, 24)
    swin_window_size: int = 7
    swin_pretrain_img_size: int = 224
    swin_drop_path_rate: float = 0.3
    num_classes: int = 150  # K real classes; index K of pred_logits is "no object"
    num_queries: int = 100
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 6
    dropout: float = 0.1
    pre_norm: bool = False
    conv_dim: int = 256  # pixel decoder width
    mask_dim: int = 256  # per-pixel embedding width
    norm: str = "GN"  # pixel decoder norm: GroupNorm(32, C)
    enc_layers: int = 0  # > 0: "+N Enc" TransformerEncoderPixelDecoder
    transformer_in_feature: str = "res5"  # res2..res5, "transformer_encoder" or "pixel_embedding"
    enforce_input_proj: bool = False
    deep_supervision: bool = True
    # Mask2Former's masked attention (not in MaskFormer; off by default): learned query features, a
    # prediction before the first layer, and each layer's cross-attention limited to the foreground
    # (sigmoid > 0.5) of the previous prediction; that prediction is supervised as one more aux output.
    masked_attention: bool = False
    size_divisibility: int = 32  # model-level padding of the batch (0 for COCO panoptic)
    # A fine-tune's extension (maskformer.model.extension; 0: a plain MaskFormer): the first
    # base_classes classes come unchanged from the base network, the others from an expert head
    # (pixel decoder + predictor) on the same backbone features. An expert query counts when a new
    # class has probability > expert_threshold; a base query gives way to a counted expert query
    # covering more than expert_overlap of its mask whose new-class probability + expert_margin
    # beats the base query's own class probability. A counted expert query whose mask overlaps a
    # surer counted expert query's by more than expert_duplicate (IoU) is a duplicate (not counted).
    base_classes: int = 0
    expert_threshold: float = 0.5
    expert_overlap: float = 0.5
    expert_margin: float = 0.15
    expert_duplicate: float = 0.5

    @property
    def num_predictions(self) -> int:
        """Predictions a training forward returns (final + aux): one per decoder layer, and with
        masked attention also the one made before the first layer. The loss weights cover these."""
        return self.dec_layers + int(self.masked_attention)


@dataclass(frozen=True)
class InputConfig:
    """Pre-processing and augmentation."""

    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    min_size_test: int = 512
    max_size_test: int = 2048
    min_size_train: tuple[int, ...] = tuple(int(x * 0.1 * 512) for x in range(5, 21))
    max_size_train: int = 2048
    crop_size: tuple[int, int] | None = (512, 512)  # (H, W); None: no crop
    color_aug_ssd: bool = True
    flip: bool = True
    pad_value: int = 128  # raw pixel value the semantic mapper pads images with
    mapper: str = "semantic"  # "semantic" | "panoptic" | "detr_panoptic"
    ignore_label: int = 255
    # copy-paste of thing instances between training images (maskformer.training.copy_paste):
    # the chance per image (0: off), the first class pasted (a fine-tune's new classes), and the
    # chance a pasted instance gets a new colour (hue turned by any angle, brightness x 0.7-1.3)
    copy_paste: float = 0.0
    copy_paste_from: int = 0
    copy_paste_color: float = 0.0


@dataclass(frozen=True)
class TestConfig:
    """Post-processing."""

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    detections_per_image: int = 100
    semantic_on: bool = True
    panoptic_on: bool = False
    instance_on: bool = False


@dataclass(frozen=True)
class SolverConfig:
    """Optimiser, schedule and loss weights."""

    batch_size: int = 16  # global batch
    max_iter: int = 160_000
    base_lr: float = 1e-4
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    backbone_multiplier: float = 0.1
    scheduler: str = "poly"  # "poly" | "step"
    poly_power: float = 0.9
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 1.0
    clip_value: float = 0.01  # full-model L2 gradient clipping
    grad_accum: int = 1
    amp: bool = False  # autocast: bf16 (fp16 on older GPUs) on CUDA, bf16 on CPUs that have it
    channels_last: bool = True  # NHWC weights: the R50 step 4 % faster on CPU (bench/train_step)
    seed: int = 0
    checkpoint_period: int = 5000
    eval_period: int = 5000
    log_period: int = 20
    num_workers: int = 2
    # loss (official weights)
    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    no_object_weight: float = 0.1
    point_sampled_loss: bool = False  # opt-in Mask2Former-style point sampling
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    # fine-tuning aids (maskformer.training.finetune), off by default
    freeze: str = ""  # comma-separated parameter prefixes kept fixed, e.g. "backbone"
    distill_weight: float = 0.0  # class distillation from the --init model on its own classes
    distill_mask_weight: float = 0.0  # mask distillation from the --init model


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    test: TestConfig = field(default_factory=TestConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)


@dataclass(frozen=True)
class DatasetMeta:
    """What the classes are. Index i describes contiguous class id i (0..K-1)."""

    class_names: tuple[str, ...]
    isthing: tuple[bool, ...]
    colors: tuple[tuple[int, int, int], ...]
    dataset_ids: tuple[int, ...] = ()  # original category ids (COCO); empty means 0..K-1
    ignore_label: int = 255
    name: str = ""

    def __post_init__(self):
        k = len(self.class_names)
        if len(self.isthing) != k or len(self.colors) != k:
            raise ConfigError(
                f"DatasetMeta: {k} class names but {len(self.isthing)} isthing flags "
                f"and {len(self.colors)} colours"
            )
        if self.dataset_ids and len(self.dataset_ids) != k:
            raise ConfigError(
                f"DatasetMeta: {k} class names but {len(self.dataset_ids)} dataset ids"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def thing_ids(self) -> tuple[int, ...]:
        """Contiguous ids of the thing classes."""
        return tuple(i for i, t in enumerate(self.isthing) if t)

    def category_ids(self) -> tuple[int, ...]:
        return self.dataset_ids or tuple(range(self.num_classes))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMeta:
        return cls(
            class_names=tuple(d["class_names"]),
            isthing=tuple(bool(x) for x in d["isthing"]),
            colors=tuple(tuple(int(v) for v in c) for c in d["colors"]),
            dataset_ids=tuple(int(x) for x in d.get("dataset_ids", ())),
            ignore_label=int(d.get("ignore_label", 255)),
            name=str(d.get("name", "")),
        )


def default_colors(k: int, seed: int = 0) -> tuple[tuple[int, int, int], ...]:
    """K distinct, reproducible colours (golden-ratio hue walk)."""
    import colorsys

    out = []
    for i in range(k):
        h = (seed * 0.17 + i * 0.618033988749895) % 1.0
        s = 0.55 + 0.35 * ((i * 7) % 3) / 2
        v = 0.95 - 0.25 * ((i * 5) % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return tuple(out)


def generic_meta(k: int, thing_ids: tuple[int, ...] = ()) -> DatasetMeta:
    """Metadata for K unnamed classes ("class_0", ...), all stuff unless listed in thing_ids."""
    return DatasetMeta(
        class_names=tuple(f"class_{i}" for i in range(k)),
        isthing=tuple(i in thing_ids for i in range(k)),
        colors=default_colors(k),
    )


# --------------------------------------------------------------------------------------------
# (de)serialisation and overrides


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Turn a JSON / CLI value into a field's type (a resolved type hint); raise ConfigError
    naming the field.

    Handles the types config fields use: ``bool``, ``int``, ``float``, ``str``, ``X | None``,
    ``tuple[X, ...]`` (any length) and ``tuple[X, Y, ...]`` of fixed length.
    """
    if _is_optional(typ):
        if value is None:
            return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    if value is None:
        raise ConfigError(f"{name} may not be None")
    try:
        if typing.get_origin(typ) is tuple:
            return _coerce_tuple(value, typing.get_args(typ), name)
        return _coerce_scalar(value, typ, name)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{name}: cannot use {value!r} ({e})") from None


def _is_optional(typ: Any) -> bool:
    return typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(typ)
    )


def _coerce_tuple(value: Any, args: tuple[Any, ...], name: str) -> tuple:
    items = _as_seq(value)
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        return tuple(_coerce_scalar(x, args[0], name) for x in items)
    if len(items) != len(args):
        raise ConfigError(f"{name} needs {len(args)} values, got {value!r}")
    return tuple(_coerce_scalar(x, t, name) for x, t in zip(items, args, strict=True))


def _coerce_scalar(value: Any, typ: Any, name: str) -> Any:
    if typ is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name} expects true/false, got {value!r}")
        return bool(value)
    if typ is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} expects an integer, got {value!r}")
        return int(value)
    if typ in (float, str):
        return typ(value)
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass (its annotations are strings under PEP 563)."""
    return typing.get_type_hints(cls)


def _as_seq(value: Any) -> list:
    if isinstance(value, str):
        value = value.strip().strip("()[]")
        return [x for x in value.replace(" ", "").split(",") if x]
    return list(value)


def _section_from_dict(cls, d: dict[str, Any], prefix: str):
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(prefix + k for k in sorted(unknown))}"
        )
    types_ = _field_types(cls)
    return cls(**{k: _coerce(v, types_[k], prefix + k) for k, v in d.items()})


_SECTIONS = {"model": ModelConfig, "input": InputConfig, "test": TestConfig, "solver": SolverConfig}


def config_from_dict(d: dict[str, Any]) -> Config:
    unknown = set(d) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    return Config(**{k: _section_from_dict(c, d.get(k, {}), k + ".") for k, c in _SECTIONS.items()})


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply ``section.key=value`` overrides (e.g. ``model.num_queries=50``) with type checks."""
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        section, _, name = key.lstrip("-").partition(".")
        if section not in _SECTIONS or not name:
            raise ConfigError(
                f"override {key!r}: expected <section>.<field> with section in "
                f"{', '.join(_SECTIONS)}"
            )
        sub = getattr(cfg, section)
        known = {f.name: f for f in fields(sub)}
        if name not in known:
            raise ConfigError(f"unknown config key: {section}.{name}")
        sub = replace(sub, **{name: _coerce(value, _field_types(type(sub))[name], key)})
        cfg = replace(cfg, **{section: sub})
    return cfg


def _split(o: str) -> tuple[str, str]:
    if "=" not in o:
        raise ConfigError(f"override {o!r} must look like section.key=value")
    k, v = o.split("=", 1)
    return k, v


def load_config_file(path: str | Path) -> Config:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    return config_from_dict(d)


# --------------------------------------------------------------------------------------------
# presets, named after the official configs


def _ignore_label(cfg: Config, ignore_label: int) -> Config:
    return replace(cfg, input=replace(cfg.input, ignore_label=ignore_label))


def _resnet_semantic(
    backbone: str, k: int, crop: int, test_size: int, max_test: int, iters: int, batch: int = 16
) -> Config:
    sizes = tuple(int(x * 0.1 * crop) for x in range(5, 21))
    return Config(
        model=ModelConfig(backbone=backbone, num_classes=k),
        input=InputConfig(
            min_size_test=test_size,
            max_size_test=max_test,
            min_size_train=sizes,
            max_size_train=4 * crop,
            crop_size=(crop, crop),
        ),
        solver=SolverConfig(max_iter=iters, batch_size=batch),
    )


def _swin(cfg: Config, variant: str) -> Config:
    model = replace(cfg.model, backbone="swin", **SWIN_VARIANTS[variant])
    solver = replace(
        cfg.solver,
        base_lr=6e-5,
        weight_decay=0.01,
        backbone_multiplier=1.0,
        warmup_iters=1500,
        warmup_factor=1e-6,
    )
    return replace(cfg, model=model, solver=solver)


def _coco_panoptic(backbone: str) -> Config:
    swin = backbone.startswith("swin")
    model = ModelConfig(
        backbone="resnet50" if swin else backbone,
        num_classes=133,
        enc_layers=0 if swin else 6,
        transformer_in_feature="res5" if swin else "transformer_encoder",
        enforce_input_proj=swin,
        size_divisibility=0,  # "COCO model should not pad image"
    )
    cfg = Config(
        model=model,
        input=InputConfig(
            min_size_test=800,
            max_size_test=1333,
            min_size_train=tuple(range(480, 801, 32)),
            max_size_train=1333,
            crop_size=None,
            color_aug_ssd=False,
            mapper="detr_panoptic",
        ),
        test=TestConfig(panoptic_on=True, instance_on=True),
        solver=SolverConfig(
            batch_size=64, max_iter=554_400, scheduler="step", steps=(369_600,), warmup_iters=10
        ),
    )
    if swin:
        cfg = _swin(cfg, backbone)
        cfg = replace(cfg, solver=replace(cfg.solver, scheduler="step", steps=(369_600,)))
        if backbone == "swin_large":
            cfg = replace(cfg, input=replace(cfg.input, max_size_train=1000))
    return cfg


def _ade_panoptic(backbone: str) -> Config:
    cfg = _resnet_semantic(backbone, 150, 640, 640, 2560, 720_000)
    model = replace(cfg.model, enc_layers=6, transformer_in_feature="transformer_encoder")
    return replace(
        cfg,
        model=model,
        input=replace(cfg.input, mapper="panoptic"),
        test=TestConfig(
            object_mask_threshold=0.7, overlap_threshold=0.8, panoptic_on=True, instance_on=True
        ),
    )


def _tiny(backbone: str = "resnet10t") -> Config:
    """A small model for tests and the shipped demo: 64-d, 2 decoder layers, 20 queries.

    Trained from scratch, so its ResNet BatchNorm is trainable (the official models freeze BN because they
    start from ImageNet statistics).
    """
    model = ModelConfig(
        backbone=backbone,
        frozen_bn=False,
        num_classes=8,
        num_queries=20,
        hidden_dim=64,
        num_heads=4,
        dim_feedforward=256,
        dec_layers=2,
        conv_dim=64,
        mask_dim=64,
        dropout=0.0,
        swin_embed_dim=32,
        swin_depths=(1, 1, 2, 1),
        swin_num_heads=(1, 2, 4, 8),
        swin_window_size=4,
        swin_drop_path_rate=0.1,
    )
    return Config(
        model=model,
        input=InputConfig(
            min_size_test=128,
            max_size_test=512,
            min_size_train=tuple(range(96, 193, 16)),
            max_size_train=512,
            crop_size=(128, 128),
            mapper="panoptic",
        ),
        test=TestConfig(
            object_mask_threshold=0.5,
            overlap_threshold=0.8,
            panoptic_on=True,
            instance_on=True,
            detections_per_image=20,
        ),
        solver=SolverConfig(
            batch_size=8,
            max_iter=2000,
            base_lr=2e-4,
            backbone_multiplier=1.0,
            weight_decay=1e-4,
            warmup_iters=50,
            warmup_factor=0.01,
            checkpoint_period=500,
            eval_period=500,
            log_period=10,
            num_workers=0,
        ),
    )


def _demo() -> Config:
    """The shipped demo model's recipe (checkpoints/README.md; why each setting: docs/demo_recipe.md).

    The tiny model with its decoder on the stride-4 ``res2`` features (at 128 px ``res5`` is a
    4 x 4 grid), Mask2Former's masked attention with 3 decoder layers (not MaskFormer's decoder;
    off in every other preset), class and dice loss weights 3 (official 1 and 1), no scale or
    colour jitter (the synthetic train and val images share one scale), bf16 autocast on CPUs
    with native bf16, and as many iterations as fit in 30 minutes on a 2-core CPU.
    """
    cfg = _tiny("resnet10t")
    return replace(
        cfg,
        model=replace(
            cfg.model, transformer_in_feature="res2", masked_attention=True, dec_layers=3
        ),
        input=replace(cfg.input, min_size_train=(128,), color_aug_ssd=False),
        solver=replace(
            cfg.solver,
            base_lr=1e-3,
            max_iter=7500,
            eval_period=2000,
            checkpoint_period=2000,
            class_weight=3.0,
            dice_weight=3.0,
            amp=True,
        ),
    )


PRESETS = {
    "maskformer_r50_ade20k": lambda: _resnet_semantic("resnet50", 150, 512, 512, 2048, 160_000),
    "maskformer_r101_ade20k": lambda: _resnet_semantic("resnet101", 150, 512, 512, 2048, 160_000),
    "maskformer_r101c_ade20k": lambda: _resnet_semantic("resnet101c", 150, 512, 512, 2048, 160_000),
    "maskformer_swin_t_ade20k": lambda: _swin(
        _resnet_semantic("resnet50", 150, 512, 512, 2048, 160_000), "swin_tiny"
    ),
    "maskformer_swin_s_ade20k": lambda: _swin(
        _resnet_semantic("resnet50", 150, 512, 512, 2048, 160_000), "swin_small"
    ),
    "maskformer_swin_b_ade20k": lambda: _swin(
        _resnet_semantic("resnet50", 150, 640, 640, 2560, 160_000), "swin_base"
    ),
    "maskformer_swin_l_ade20k": lambda: _swin(
        _resnet_semantic("resnet50", 150, 640, 640, 2560, 160_000), "swin_large"
    ),
    "maskformer_r50_ade20k_full": lambda: _ignore_label(
        _resnet_semantic("resnet50", 847, 512, 512, 2048, 200_000), 65535
    ),
    "maskformer_r50_coco_stuff": lambda: _resnet_semantic(
        "resnet50", 171, 640, 640, 2560, 60_000, 32
    ),
    "maskformer_r101_cityscapes": lambda: replace(
        _resnet_semantic("resnet101", 19, 512, 1024, 2048, 90_000),
        input=InputConfig(
            min_size_test=1024,
            max_size_test=2048,
            min_size_train=tuple(int(x * 0.1 * 1024) for x in range(5, 21)),
            max_size_train=4096,
            crop_size=(512, 1024),
        ),
    ),
    "maskformer_r50_ade20k_panoptic": lambda: _ade_panoptic("resnet50"),
    "maskformer_r101_ade20k_panoptic": lambda: _ade_panoptic("resnet101"),
    "maskformer_r50_coco_panoptic": lambda: _coco_panoptic("resnet50"),
    "maskformer_r101_coco_panoptic": lambda: _coco_panoptic("resnet101"),
    "maskformer_swin_t_coco_panoptic": lambda: _coco_panoptic("swin_tiny"),
    "maskformer_swin_s_coco_panoptic": lambda: _coco_panoptic("swin_small"),
    "maskformer_swin_b_coco_panoptic": lambda: _coco_panoptic("swin_base"),
    "maskformer_swin_l_coco_panoptic": lambda: _coco_panoptic("swin_large"),
    "maskformer_tiny": lambda: _tiny("resnet10t"),
    "maskformer_tiny_swin": lambda: _tiny("swin"),
    "maskformer_demo": _demo,
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
