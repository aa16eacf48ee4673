"""Dataset-level scoring: evaluate_model (the app's post-processing), prediction files, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskformer.config import DatasetMeta, default_colors
from maskformer.data import Sample, open_dataset
from maskformer.data.coco import write_dataset
from maskformer.errors import DatasetError
from maskformer.evaluation import evaluate_model, evaluate_predictions

ROOT = Path(__file__).resolve().parents[1]
META = DatasetMeta(
    class_names=("sky", "box", "disc"),
    isthing=(False, True, True),
    colors=default_colors(3),
    dataset_ids=(7, 11, 12),
    name="tiny",
)
PQ_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
SEM_KEYS = ("mIoU", "fwIoU", "mAcc", "pAcc")
AP_KEYS = ("AP", "AP50", "AP75")


def _sample(rng, i, h=48, w=64):
    """Sky background, 2-3 boxes/discs (one maybe crowd), a void strip."""
    id_map = np.ones((h, w), np.int32)
    segments = [{"id": 1, "category_id": 0, "iscrowd": 0, "isthing": False}]
    yy, xx = np.mgrid[:h, :w]
    for j in range(int(rng.integers(2, 4))):
        cls = 1 + j % 2
        cy, cx, r = int(rng.integers(10, h - 10)), int(rng.integers(10, w - 10)), 7
        if cls == 1:
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        else:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        id_map[m] = j + 2
        segments.append({"id": j + 2, "category_id": cls, "iscrowd": int(j == 2), "isthing": True})
    id_map[:, :2] = 0  # void
    present = set(np.unique(id_map).tolist())
    segments = [s for s in segments if s["id"] in present]
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return Sample(image, id_map, segments, image_id=100 + i, file_name=f"im{i}.png")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("ds")
    write_dataset(out, [_sample(rng, i) for i in range(3)], META)
    return out


def _oracle_prediction(sample, meta, predicted_meta=None):
    """A Prediction whose queries reproduce the ground truth: one query per segment."""
    from maskformer.inference.predictor import Prediction

    k = meta.num_classes
    segs = sample.segments  # crowd too: otherwise its pixels would join another segment
    q = len(segs) + 2
    class_logits = torch.full((q, k + 1), -10.0)
    class_logits[:, k] = 10.0  # unused queries say "no object"
    mask_logits = torch.full((q, *sample.id_map.shape), -10.0)
    for j, s in enumerate(segs):
        class_logits[j] = -10.0
        class_logits[j, s["category_id"]] = 10.0
        mask_logits[j][torch.from_numpy(sample.id_map == s["id"])] = 10.0
    return Prediction(
        class_logits=class_logits,
        mask_logits=mask_logits,
        image=sample.image,
        meta=predicted_meta or meta,
    )


class OraclePredictor:
    """Predicts the ground truth of the dataset it is given (looked up by image content)."""

    def __init__(self, dataset):
        samples = [dataset.load(i) for i in range(len(dataset))]
        self.by_image = {s.image.tobytes(): s for s in samples}
        self.meta = dataset.meta

    def predict(self, image):
        return _oracle_prediction(self.by_image[np.asarray(image).tobytes()], self.meta)


def test_oracle_predictions_score_100_through_the_app_postprocessing(dataset_dir):
    ds = open_dataset(dataset_dir)
    r = evaluate_model(OraclePredictor(ds), ds, progress=False)
    for key in PQ_KEYS + SEM_KEYS + AP_KEYS:
        assert r[key] == pytest.approx(100.0), key
    assert r["num_images"] == 3
    assert {"panoptic", "semantic", "instance"} == set(r["per_class"])
    assert [row["name"] for row in r["per_class"]["semantic"]] == ["sky", "box", "disc"]


def test_coco_instances_dataset_is_scored_against_its_own_json(dataset_dir):
    from maskformer.evaluation.evaluate import native_instances_gt

    ds = open_dataset(dataset_dir / "instances.json")
    gt = native_instances_gt(ds)
    assert gt is not None and {c["name"] for c in gt["categories"]} == {"box", "disc"}
    r = evaluate_model(OraclePredictor(ds), ds, tasks=["instance"], progress=False)
    assert r["AP"] == pytest.approx(100.0) and r["AP75"] == pytest.approx(100.0)
    r = evaluate_predictions(dataset_dir / "instances.json", dataset_dir / "instances.json")
    assert r["AP"] == pytest.approx(100.0)


def test_evaluate_model_tasks_and_max_images(dataset_dir):
    ds = open_dataset(dataset_dir)
    r = evaluate_model(OraclePredictor(ds), ds, tasks=["semantic"], max_images=1, progress=False)
    assert r["num_images"] == 1 and r["mIoU"] == pytest.approx(100.0)
    assert "PQ" not in r and "AP" not in r


def test_evaluate_model_rejects_a_model_with_other_classes(dataset_dir):
    ds = open_dataset(dataset_dir)

    class TwoClasses(OraclePredictor):
        def predict(self, image):
            s = self.by_image[np.asarray(image).tobytes()]
            p = _oracle_prediction(s, self.meta)
            p.meta = DatasetMeta(("a", "b"), (False, True), default_colors(2))
            return p

    with pytest.raises(DatasetError, match="2 classes"):
        evaluate_model(TwoClasses(ds), ds, progress=False)


def test_ground_truth_as_predictions_scores_100(dataset_dir):
    r = evaluate_predictions(dataset_dir / "panoptic.json", dataset_dir)
    for key in PQ_KEYS:
        assert r[key] == pytest.approx(100.0), key
    r = evaluate_predictions(dataset_dir / "instances.json", dataset_dir)
    for key in AP_KEYS:
        assert r[key] == pytest.approx(100.0), key


def test_semantic_label_folder_as_predictions(dataset_dir, tmp_path):
    from PIL import Image

    from maskformer.evaluation import semantic_from_segments

    ds = open_dataset(dataset_dir)
    for i in range(len(ds)):
        s = ds.load(i)
        labels = semantic_from_segments(s.id_map, s.segments, 3, ignore_label=0)  # any class
        if i == 0:
            labels[:8] = 2  # a wrong band in the first image
        Image.fromarray(labels.astype(np.uint8)).save(tmp_path / (Path(s.file_name).stem + ".png"))
    r = evaluate_predictions(tmp_path, dataset_dir)
    assert 50 < r["mIoU"] < 100 and r["num_images"] == 3
    Image.fromarray(np.full((4, 4), 5, np.uint8)).save(tmp_path / "im1.png")
    with pytest.raises(DatasetError, match="im1.png"):
        evaluate_predictions(tmp_path, dataset_dir)


def test_prediction_files_are_checked(dataset_dir, tmp_path):
    pan = json.loads((dataset_dir / "panoptic.json").read_text())
    pan["annotations"] = pan["annotations"][:1]
    bad = tmp_path / "panoptic.json"
    bad.write_text(json.dumps(pan))
    (tmp_path / "panoptic").symlink_to(dataset_dir / "panoptic")
    with pytest.raises(DatasetError, match="no prediction for the dataset image"):
        evaluate_predictions(bad, dataset_dir)
    lone = tmp_path / "lone" / "preds.json"
    lone.parent.mkdir()
    lone.write_text((dataset_dir / "panoptic.json").read_text())
    with pytest.raises(DatasetError, match="PNG folder"):
        evaluate_predictions(lone, dataset_dir)
    pan = json.loads((dataset_dir / "panoptic.json").read_text())
    pan["annotations"][0]["segments_info"][0]["category_id"] = 999
    bad.write_text(json.dumps(pan))
    with pytest.raises(DatasetError, match="category_id 999"):
        evaluate_predictions(bad, dataset_dir)


def test_panoptic_prediction_file_against_panoptic_quality(dataset_dir, tmp_path):
    """A degraded prediction file scores what PQStat gives on the same id maps."""
    from maskformer.data.coco import write_coco_panoptic
    from maskformer.evaluation import PQStat

    ds = open_dataset(dataset_dir)
    stat, recs = PQStat(3), []
    for i in range(len(ds)):
        s = ds.load(i)
        pred = np.where(np.arange(s.width)[None] < 20, 0, s.id_map)  # left part unpredicted
        segs = [x for x in s.segments if (pred == x["id"]).any()]
        recs.append(Sample(s.image, pred, segs, s.image_id, s.file_name))
        stat.add(s.id_map, s.segments, pred, segs)
    write_coco_panoptic(tmp_path / "pred.json", tmp_path / "pred", recs, META)
    r = evaluate_predictions(tmp_path / "pred.json", dataset_dir)
    want = stat.summary(META)
    assert 0 < r["PQ"] < 100
    for key in PQ_KEYS:
        assert r[key] == pytest.approx(want[key]), key


# ---------------------------------------------------------------------------------------------
# the command line


def _cli(capsys, *args):
    """Run ``python -m maskformer ...`` in this process (torch is already imported)."""
    from maskformer.__main__ import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_scores_a_random_tiny_checkpoint_on_synthetic_data(tmp_path, tiny_cfg, capsys):
    import dataclasses

    from maskformer.checkpoint import save_checkpoint
    from maskformer.model import build_model

    data = tmp_path / "synth"
    assert _cli(capsys, "synth", "--out", data, "--num-images", 3, "--size", 64)[0] == 0
    ds = open_dataset(data)
    cfg = dataclasses.replace(
        tiny_cfg, model=dataclasses.replace(tiny_cfg.model, num_classes=ds.meta.num_classes)
    )
    ckpt = tmp_path / "random.safetensors"
    save_checkpoint(ckpt, build_model(cfg.model), cfg, ds.meta)
    out = tmp_path / "report" / "eval.json"
    code, stdout, err = _cli(
        capsys, "evaluate", "--checkpoint", ckpt, "--data", data, "--out", out, "--no-progress"
    )
    assert code == 0, err
    result = json.loads(stdout)  # exactly one JSON object on stdout
    for key in PQ_KEYS + SEM_KEYS + AP_KEYS:
        assert key in result, key
    assert result["mIoU"] is not None and 0 <= result["mIoU"] <= 100
    assert result["num_images"] == 3
    report = json.loads(out.read_text())
    assert report["metrics"] == result
    assert set(report["per_class"]) == {"panoptic", "semantic", "instance"}
    assert len(report["per_class"]["semantic"]) == ds.meta.num_classes
    code, stdout, _ = _cli(
        capsys,
        "evaluate",
        "--checkpoint",
        ckpt,
        "--data",
        data,
        "--task",
        "semantic",
        "--max-images",
        1,
        "--no-progress",
    )
    result = json.loads(stdout)
    assert code == 0 and result["num_images"] == 1 and "mIoU" in result and "PQ" not in result

    # `predict` files scored with --predictions give the same counts as scoring the checkpoint
    for task in ("panoptic", "instance"):
        code, _, err = _cli(
            capsys,
            "predict",
            "--checkpoint",
            ckpt,
            data / "images",
            "--task",
            task,
            "--out",
            tmp_path / task,
            "--no-overlay",
            "--no-progress",
        )
        assert code == 0, err
    pan = evaluate_predictions(tmp_path / "panoptic" / "panoptic.json", data)
    assert pan["per_class"]["panoptic"] == report["per_class"]["panoptic"]
    assert sum(row["FP"] + row["FN"] for row in pan["per_class"]["panoptic"]) > 0
    code, _, err = _cli(
        capsys,
        "predict",
        "--checkpoint",
        ckpt,
        data / "images",
        "--task",
        "semantic",
        "--out",
        tmp_path / "semantic",
        "--no-overlay",
        "--no-progress",
    )
    assert code == 0, err
    sem = evaluate_predictions(tmp_path / "semantic" / "semantic", data)
    assert sem["per_class"]["semantic"] == report["per_class"]["semantic"]
    inst = evaluate_predictions(tmp_path / "instance" / "instances_results.json", data)
    for key in ("AP", "AP50", "AP75"):
        assert inst[key] == pytest.approx(report["metrics"][key], abs=1e-6), key


def test_cli_predictions_mode(dataset_dir, tmp_path, capsys):
    code, out, err = _cli(
        capsys, "evaluate", "--predictions", dataset_dir / "panoptic.json", "--data", dataset_dir
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["PQ"] == pytest.approx(100.0) and result["num_images"] == 3
    code, out, err = _cli(
        capsys,
        "evaluate",
        "--predictions",
        dataset_dir / "instances.json",
        "--data",
        dataset_dir,
        "--out",
        tmp_path / "ap.json",
    )
    assert code == 0, err
    assert json.loads(out)["AP"] == pytest.approx(100.0)
    assert "instance" in json.loads((tmp_path / "ap.json").read_text())["per_class"]


def test_cli_errors_are_one_line(dataset_dir, tmp_path, capsys):
    code, out, err = _cli(
        capsys, "evaluate", "--predictions", tmp_path / "missing.json", "--data", dataset_dir
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "missing.json" in err
    code, out, err = _cli(
        capsys,
        "evaluate",
        "--checkpoint",
        tmp_path / "missing.safetensors",
        "--data",
        tmp_path / "no_such_dataset",
    )
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):  # argparse: neither --checkpoint nor --predictions
        _cli(capsys, "evaluate", "--data", dataset_dir)


def test_python_m_entry_point_prints_one_json_object(dataset_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskformer",
            "evaluate",
            "--predictions",
            str(dataset_dir / "panoptic.json"),
            "--data",
            str(dataset_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["PQ"] == pytest.approx(100.0)
