"""The fine-tune job process: ``python -m app.finetune_job <job_dir>/spec.json``.

Steps, each skipped when a previous attempt of the same job finished it (so a killed job resumes):
export the corrected images (train and held-out sets, base classes first); score the base model on
the held-out set, image by image, and find corrections it already predicts exactly; run
``python -m maskformer train --init BASE --resume`` with the recipe's settings; score the new
model; judge it (``app.verdict``); copy it to ``<workspace>/models/finetune-<job>.safetensors``
and register it as a version with its parent, scores and verdict, made the active version only
when the verdict says it is better. Progress goes to ``phase.json``; the outcome to
``result.json``. The workspace's rows are only touched by the last step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.finetune import FinetuneSpec, meta_for, read_json
from app.heldout import score, unchanged
from app.replay import confused_classes, pseudo_label, repeats
from app.store import Workspace
from app.transfer import Record
from app.verdict import judge
from maskformer.config import DatasetMeta
from maskformer.errors import UserError

TASKS = ("panoptic", "semantic")
_DISABLED_LOGIT = -1e4  # bias of a class the base model never had: it can never win


def write_phase(job_dir: Path, phase: str, message: str) -> None:
    tmp = job_dir / ".phase.json.tmp"
    tmp.write_text(json.dumps({"phase": phase, "message": message, "time": time.time()}))
    os.replace(tmp, job_dir / "phase.json")
    print(f"[{phase}] {message}", flush=True)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ export


def export_images(
    ws: Workspace, image_ids: list[int], category_ids: list[int], meta: DatasetMeta, out_dir: Path
) -> Path:
    """Write ``image_ids`` in the COCO panoptic layout with ``category_ids[i]`` as class i.

    Built in a temporary folder and renamed into place, so a half export never exists.
    """
    from maskformer.data.coco import write_coco_panoptic

    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    records = []
    for image_id in image_ids:
        rec = ws.image(image_id)
        stored = ws.load_annotation(image_id)
        if stored is None:
            raise UserError(f"image {image_id} ({rec.name}) has no saved annotation")
        id_map, segments, _ = stored
        name = f"{rec.id:06d}{Path(rec.file).suffix}"
        shutil.copyfile(ws.root / rec.file, tmp / "images" / name)
        segs = [{**s, "category_id": contiguous[int(s["category_id"])]} for s in segments]
        records.append(Record(id_map, segs, rec.id, name))
    write_coco_panoptic(tmp / "panoptic.json", tmp / "panoptic", records, meta)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def write_training_set(
    ws: Workspace, spec: FinetuneSpec, base: Any, meta: DatasetMeta, corrected: Path, out: Path
) -> Path:
    """The training data: the corrected images, and with replay the base model's confident
    predictions on uncorrected images, the corrected ones repeated to stay about half of it.
    For an expert head the replay leaves out the classes the base model confuses with the new
    ones (``app.replay.confused_classes``)."""
    if not spec.replay_images:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(corrected, out)
        return out
    from maskformer.data import open_dataset
    from maskformer.data.coco import write_dataset
    from maskformer.data.datasets import Sample

    ds = open_dataset(corrected)
    leave_out = []
    if spec.expert:
        leave_out = confused_classes(base, ds, spec.base_classes)
        if leave_out:
            names = ", ".join(meta.class_names[c] for c in leave_out)
            print(f"replay leaves out {names}: the current model gives new-class objects that name")
    samples = []
    for image_id in spec.replay_images:
        image = ws.load_image(image_id)
        id_map, segments = pseudo_label(base, image, leave_out=leave_out)
        samples.append(Sample(image, id_map, segments, 0, f"r{image_id}.png"))
    for k in range(repeats(len(ds), len(samples))):
        for i in range(len(ds)):
            smp = ds.load(i)
            samples.append(replace(smp, file_name=f"c{k}-{smp.file_name}"))
    samples = [replace(smp, image_id=n + 1) for n, smp in enumerate(samples)]
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_dataset(tmp, samples, meta)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------ scoring


def base_predictor(path: str, meta: DatasetMeta, device: str) -> Any:
    """The base model on the fine-tune's classes: its own rows unchanged, new classes disabled.

    So "before" is exactly what the current model does (it cannot predict a class it never had).
    """
    import torch

    from maskformer.checkpoint import load_model
    from maskformer.inference import Predictor

    loaded = load_model(path, device=device, meta=meta)
    model = loaded.model
    old_k = _base_classes(path)
    if tuple(loaded.meta.class_names[:old_k]) != tuple(meta.class_names[:old_k]):
        raise UserError(
            f"the fine-tune classes do not start with the base model's classes ({path})"
        )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("class_embed.weight"):
                p[old_k : meta.num_classes].zero_()  # (K_new - K_old, D); row K stays no-object
            elif name.endswith("class_embed.bias"):
                p[old_k : meta.num_classes] = _DISABLED_LOGIT
    return Predictor(model, cfg=loaded.cfg, meta=loaded.meta, device=device)


def _base_classes(path: str) -> int:
    from maskformer.checkpoint import peek_checkpoint

    return peek_checkpoint(path).cfg.model.num_classes


# ------------------------------------------------------------------------------------ training


def train_command(
    spec: FinetuneSpec, train_dir: Path, init: str | None = None, plain_k: int | None = None
) -> list[str]:
    """The train command of the job: from ``init`` (default the spec's base checkpoint), whose
    network has ``plain_k`` classes (default the spec's ``base_classes``)."""
    plain_k = spec.base_classes if plain_k is None else plain_k
    cmd = [
        sys.executable,
        "-m",
        "maskformer",
        "train",
        "--init",
        init or spec.base_checkpoint,
        "--train",
        str(train_dir),
        "--out",
        str(spec.run_dir),
        "--resume",
        "--iters",
        str(spec.iters),
        "--batch",
        str(spec.batch),
        "--device",
        spec.device,
        "--eval-period",
        "0",
        "--checkpoint-period",
        str(spec.checkpoint_period),
        "--no-progress",
        f"--solver.log_period={spec.log_period}",
        f"--solver.warmup_iters={spec.warmup_iters}",
    ]
    if spec.lr is not None:
        cmd += ["--lr", str(spec.lr)]
    if spec.copy_paste > 0:
        # paste instances of the new classes (of every thing class when there is none)
        new_from = plain_k if len(spec.category_ids) > plain_k else 0
        cmd += [f"--input.copy_paste={spec.copy_paste}", f"--input.copy_paste_from={new_from}"]
    return cmd + [f"--{o}" for o in spec.overrides]


def train(spec: FinetuneSpec, train_dir: Path, init: str, plain_k: int) -> Path:
    """Run the train command (same process group: a cancel stops it too); the final checkpoint."""
    code = subprocess.call(train_command(spec, train_dir, init, plain_k), stdin=subprocess.DEVNULL)
    final = spec.run_dir / "model_final.safetensors"
    if code != 0 or not final.is_file():
        status = read_json(spec.run_dir / "status.json") or {}
        raise UserError(
            f"training stopped with status {code}"
            + (f": {status['message']}" if status.get("message") else "")
        )
    return final


# ------------------------------------------------------------------------------------ register


def plain_base(spec: FinetuneSpec) -> tuple[str, int]:
    """(checkpoint, classes) of the plain network the job trains from: the base checkpoint, or
    when that is an extended model its base, written once to ``<job_dir>/base.safetensors``."""
    from maskformer.checkpoint import peek_checkpoint, save_base_checkpoint

    model = peek_checkpoint(spec.base_checkpoint).cfg.model
    if not model.base_classes:
        return spec.base_checkpoint, model.num_classes
    out = Path(spec.job_dir) / "base.safetensors"
    if not out.exists():
        save_base_checkpoint(spec.base_checkpoint, out)
    return str(out), model.base_classes


def register(ws: Workspace, spec: FinetuneSpec, final: Path, metrics: dict[str, Any]) -> int:
    """Copy the checkpoint to ``models/finetune-<job>.safetensors`` (atomic), then add the version
    row. Idempotent: a job killed between the two steps and run again registers its one file once
    (no orphan copies)."""
    models = ws.root / "models"
    models.mkdir(parents=True, exist_ok=True)
    dest = models / f"finetune-{Path(spec.job_dir).name}.safetensors"
    known = next((v for v in ws.model_versions() if v.path == str(dest)), None)
    if known is not None:
        return known.id
    tmp = models / f".{dest.name}.tmp"
    shutil.copyfile(final, tmp)
    os.replace(tmp, dest)
    return ws.add_model_version(dest, parent=spec.base_version, metrics=metrics).id


# ------------------------------------------------------------------------------------ main


def run(spec: FinetuneSpec) -> dict[str, Any]:
    job_dir = Path(spec.job_dir)
    done = read_json(job_dir / "result.json")
    if done is not None:
        return done
    clock = _Clock()
    ws = Workspace(spec.workspace)
    cats = {c.id: c for c in ws.categories()}
    meta = meta_for([cats[i] for i in spec.category_ids], name=f"finetune {spec.created}")
    names = {i: ws.image(i).name for i in [*spec.train_images, *spec.heldout_images]}
    corrected_dir, held_dir = job_dir / "corrected", job_dir / "heldout"
    train_dir = job_dir / "train"
    if not (corrected_dir / "panoptic.json").exists() or not (held_dir / "panoptic.json").exists():
        write_phase(
            job_dir,
            "export",
            f"exporting {len(spec.train_images)} training and "
            f"{len(spec.heldout_images)} held-out images",
        )
        export_images(ws, spec.heldout_images, spec.category_ids, meta, held_dir)
        export_images(ws, spec.train_images, spec.category_ids, meta, corrected_dir)
        clock.lap("export")
    before = read_json(job_dir / "before.json")
    if before is None or not (train_dir / "panoptic.json").exists():
        write_phase(
            job_dir,
            "before",
            f"scoring the current model on {len(spec.heldout_images)} held-out images",
        )
        base = base_predictor(spec.base_checkpoint, meta, spec.device)
        before = score(base, held_dir, names)
        # Corrections that are what the model predicted anyway teach it nothing.
        before["unchanged_train"] = unchanged(score(base, corrected_dir, names))
        if spec.replay_images:
            write_phase(
                job_dir,
                "before",
                f"labelling {len(spec.replay_images)} uncorrected images with the current "
                "model's confident predictions (replay)",
            )
        write_training_set(ws, spec, base, meta, corrected_dir, train_dir)
        write_json(job_dir / "before.json", before)
        clock.lap("before")
    init, plain_k = plain_base(spec)
    what = "an expert head for the new classes" if spec.expert else "the model"
    write_phase(job_dir, "train", f"training {what}: {spec.iters} iterations on {spec.device}")
    final = train(spec, train_dir, init, plain_k)
    if spec.expert:
        from maskformer.checkpoint import extend_checkpoint

        final = extend_checkpoint(init, final, spec.run_dir / "extended.safetensors")
    clock.lap("train")
    write_phase(job_dir, "after", "scoring the fine-tuned model on the held-out images")
    from maskformer.inference import Predictor

    after = score(Predictor.from_checkpoint(str(final), device=spec.device), held_dir, names)
    clock.lap("after")
    write_phase(job_dir, "register", "judging and saving the new model version")
    old = set(meta.class_names[: spec.base_classes])
    new_classes = [c for c in meta.class_names if c not in old]
    verdict = judge(before, after, new_classes)
    heldout_names = [names[i] for i in spec.heldout_images]
    checks = {
        "heldout_names": heldout_names,
        "unchanged_heldout": unchanged(before),
        "unchanged_train": before.get("unchanged_train", []),
    }
    metrics = {
        "heldout": _lean(after),
        "before": _lean(before),
        "verdict": verdict.to_dict(),
        "parent": spec.base_version,
        "job": Path(spec.job_dir).name,
        "recipe": spec.recipe,
        "iters": spec.iters,
        "batch": spec.batch,
        "train_images": len(spec.train_images),
        "heldout_images": len(spec.heldout_images),
        "classes": list(meta.class_names),
        "new_classes": new_classes,
        **checks,
    }
    version_id = register(ws, spec, final, metrics)
    if verdict.activate:
        ws.set_active_model_version(version_id)
    clock.lap("register")
    result = {
        "version_id": version_id,
        "path": ws.model_version(version_id).path,
        "before": before,
        "after": after,
        "verdict": verdict.to_dict(),
        "activated": verdict.activate,
        "recipe": spec.recipe,
        "new_classes": new_classes,
        **checks,
        "timing": clock.summary(),
    }
    write_json(job_dir / "result.json", result)
    write_phase(
        job_dir,
        "done",
        f"saved version v{version_id}: {verdict.summary}"
        + (" It is now the active model." if verdict.activate else ""),
    )
    return result


def _lean(scores: dict[str, Any]) -> dict[str, Any]:
    """Scores without the per-image counts (kept in the job's files, not in the version row)."""
    return {k: v for k, v in scores.items() if k not in ("images", "unchanged_train")}


class _Clock:
    """Wall time per phase and the CPU time of the job and its children (the train command).

    Phases done by an earlier attempt of a resumed job are not in its figures.
    """

    def __init__(self):
        self.t0 = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(now - self.last, 2)
        self.last = now

    def summary(self) -> dict[str, Any]:
        import resource

        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return {
            "wall_s": round(time.perf_counter() - self.t0, 2),
            "cpu_s": round(cpu, 2),
            "phases_s": self.phases,
        }


def _num(x: Any) -> str:
    return "—" if x is None else f"{float(x):.1f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m app.finetune_job SPEC.json", file=sys.stderr)
        return 2
    spec = FinetuneSpec.load(argv[0])
    try:
        os.nice(spec.nice)
    except OSError:
        pass
    try:
        run(spec)
    except Exception as e:
        msg = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        write_phase(Path(spec.job_dir), "failed", msg.splitlines()[0] if msg else "failed")
        if not isinstance(e, UserError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
