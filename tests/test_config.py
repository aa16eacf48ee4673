"""Config: presets round-trip, overrides are type-checked, unknown keys are rejected."""

import pytest

from maskformer.config import (
    PRESETS,
    ConfigError,
    DatasetMeta,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    generic_meta,
    get_preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trip(name):
    cfg = get_preset(name)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_official_values():
    ade = get_preset("maskformer_r50_ade20k")
    assert (ade.model.num_classes, ade.model.num_queries, ade.model.dec_layers) == (150, 100, 6)
    assert ade.solver.clip_value == 0.01 and ade.solver.backbone_multiplier == 0.1
    assert ade.input.min_size_train[0] == 256 and ade.input.min_size_train[-1] == 1024
    coco = get_preset("maskformer_r50_coco_panoptic")
    assert coco.model.enc_layers == 6 and coco.model.transformer_in_feature == "transformer_encoder"
    assert coco.model.size_divisibility == 0 and coco.model.num_classes == 133
    swin = get_preset("maskformer_swin_b_ade20k")
    assert swin.model.swin_window_size == 12 and swin.solver.base_lr == 6e-5


def test_overrides_typed():
    cfg = apply_overrides(
        get_preset("maskformer_tiny"),
        ["model.num_queries=50", "input.crop_size=64,96", "solver.amp=true", "solver.base_lr=1e-3"],
    )
    assert cfg.model.num_queries == 50 and cfg.input.crop_size == (64, 96)
    assert cfg.solver.amp is True and cfg.solver.base_lr == 1e-3


@pytest.mark.parametrize(
    "bad",
    ["model.nope=1", "model.num_queries=abc", "solver.amp=maybe", "x.y=1", "model.num_queries"],
)
def test_bad_overrides(bad):
    with pytest.raises(ConfigError):
        apply_overrides(get_preset("maskformer_tiny"), [bad])


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="maskformer_r50_ade20k"):
        get_preset("nope")


def test_meta_validation_and_round_trip():
    meta = generic_meta(4, thing_ids=(0, 2))
    assert meta.thing_ids == (0, 2) and DatasetMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ConfigError):
        DatasetMeta(class_names=("a", "b"), isthing=(True,), colors=((0, 0, 0), (1, 1, 1)))


def test_overrides_follow_the_type_hints():
    """Coercion reads the fields' type hints: optional fixed-length tuples, variable tuples,
    fixed-length float tuples, bools from strings."""
    cfg = get_preset("maskformer_tiny")
    cfg = apply_overrides(
        cfg,
        {
            "input.crop_size": "(96, 128)",
            "input.min_size_train": "64,96,128",
            "input.pixel_mean": [1, 2, 3],
            "solver.amp": "off",
        },
    )
    assert cfg.input.crop_size == (96, 128)
    assert cfg.input.min_size_train == (64, 96, 128)
    assert cfg.input.pixel_mean == (1.0, 2.0, 3.0)
    assert cfg.solver.amp is False
    assert apply_overrides(cfg, {"input.crop_size": None}).input.crop_size is None
    with pytest.raises(ConfigError, match="input.crop_size needs 2 values"):
        apply_overrides(cfg, {"input.crop_size": "(1, 2, 3)"})
    with pytest.raises(ConfigError, match="input.pixel_mean needs 3 values"):
        apply_overrides(cfg, {"input.pixel_mean": "(1, 2)"})
    with pytest.raises(ConfigError, match="model.num_queries may not be None"):
        apply_overrides(cfg, {"model.num_queries": None})


def test_readme_names_every_preset():
    """README's preset list (with `{a,b}` shorthand) names exactly the presets that exist."""
    import itertools
    import re
    from pathlib import Path

    from maskformer.config import PRESETS

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    named = set()
    for token in re.findall(r"`(maskformer_[a-z0-9_{},]+)`", text):
        parts = re.split(r"\{([^}]*)\}", token)  # literal, choices, literal, ...
        choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
        named |= {"".join(c) for c in itertools.product(*choices)}
    assert named & set(PRESETS) == set(PRESETS), sorted(set(PRESETS) - named)
