"""What the Train tab does, without gradio: readiness, the held-out split, the recipes, the
fine-tune job and its progress (model versions are in ``app.versions``, the verdict in
``app.verdict``).

The fine-tune itself runs in another process (``python -m app.finetune_job SPEC``, which runs
``python -m maskformer train``), started and watched through ``app.jobs.JobRunner``; this module
only writes its spec and reads the files it leaves (``phase.json``, ``run/metrics.jsonl``,
``result.json``). ``python -m app finetune`` runs the same job without the app.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.jobs import JobBusyError, JobInfo, JobRunner, JobState
from app.replay import replay_images
from app.store import Category, ImageRecord, Workspace
from app.verdict import MIN_HELDOUT_IMAGES
from maskformer.config import DatasetMeta
from maskformer.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MIN_CORRECTED = 4  # fewer corrected images than this: the button is disabled
HOLDOUT_FRACTION = 0.2  # of the corrected images, at least 1, kept for the before/after scores
JOB_LABEL = "fine-tune"


@dataclass(frozen=True)
class Recipe:
    """How the job trains: iterations, batch, learning rate and train-command config overrides."""

    name: str
    iters: int
    batch: int
    lr: float | None  # None: the base model's solver.base_lr
    overrides: tuple[str, ...]  # ``section.field=value`` for ``python -m maskformer train``
    about: str
    replay: bool = False  # also train on the model's confident predictions (``app.replay``)
    copy_paste: float = 0.0  # chance an image gets new-class instances pasted in (0: off)
    expert: bool = False  # train an expert head, saved as an extension of the base model


# The Train tab's recipe for corrections of the classes the model knows (the whole model, with
# distillation and replay); measured by bench/finetune_gain.py (docs/finetune.md has the trials).
FINETUNE = Recipe(
    name="finetune",
    iters=600,
    batch=4,
    lr=3e-4,
    overrides=(
        "solver.warmup_iters=60",
        "solver.distill_weight=1.0",
        "solver.distill_mask_weight=1.0",
    ),
    about=(
        "lr 3e-4 (warm-up 60) on the whole model, 600 iterations, batch 4; distillation from the "
        "base model on its own classes (weights 1 / 1); replay of its confident predictions on "
        "up to 200 uncorrected images; the new classes' instances copy-pasted (p 0.8). For "
        "corrections of the classes the model knows; when they add a class the tab runs the "
        "expert recipe (docs/finetune.md)"
    ),
    replay=True,
    copy_paste=0.8,
)
# The Train tab's recipe when the corrections add classes the base model lacks: the base model is
# kept bit for bit and an expert head (its own pixel decoder and predictor on the base's frozen
# backbone) is trained for the new classes; the result is an extended model
# (``maskformer.model.extension``) whose old classes can only lose where the expert claims an
# object. Measured by bench/finetune_gain.py (docs/finetune.md).
EXPERT = Recipe(
    name="expert",
    iters=900,
    batch=4,
    lr=1e-3,
    overrides=(
        "solver.warmup_iters=60",
        "solver.freeze=backbone",
        "input.copy_paste_color=1.0",
    ),
    about=(
        "the base model kept as it is, plus an expert head for the new classes: lr 1e-3 "
        "(warm-up 60) with the backbone frozen, 900 iterations, batch 4; replay of the base "
        "model's confident predictions on up to 200 uncorrected images, without the old "
        "classes it gives new-class objects; the new classes' instances copy-pasted (p 0.8), "
        "each copy recoloured (docs/finetune.md has the bench's figures)"
    ),
    replay=True,
    copy_paste=0.8,
    expert=True,
)
# What the tab ran before (kept to compare against): the base model's own solver (for the demo
# model lr 1e-3 on the whole model), 200 iterations, batch 4.
BASE = Recipe(
    name="base",
    iters=200,
    batch=4,
    lr=None,
    overrides=(),
    about="the base model's own solver settings, 200 iterations, batch 4 (the tab's first recipe)",
)
RECIPES = {r.name: r for r in (FINETUNE, EXPERT, BASE)}
DEFAULT_ITERS = FINETUNE.iters
DEFAULT_BATCH = FINETUNE.batch


class FinetuneError(UserError):
    """A fine-tune that cannot start or resume (too little data, nothing to resume)."""


# ------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Readiness:
    """Whether the Train button may be pressed, and why not."""

    ok: bool
    reason: str
    corrected: int = 0
    train: int = 0
    heldout: int = 0


def corrected_images(ws: Workspace) -> list[ImageRecord]:
    """Images whose annotation the user saved (or imported with labels)."""
    return [r for r in ws.list_images() if r.status == "corrected"]


def readiness(ws: Workspace, min_corrected: int = MIN_CORRECTED) -> Readiness:
    n = len(corrected_images(ws))
    if n < min_corrected:
        return Readiness(
            False,
            f"Fine-tuning needs at least {min_corrected} corrected images; "
            f"this workspace has {n}. Correct and save more images first.",
            n,
        )
    held = num_heldout(n)
    reason = (
        f"{n} corrected images: {n - held} to train on, {held} held out for "
        "the before/after comparison."
    )
    if held < MIN_HELDOUT_IMAGES:
        need = next(
            k for k in range(n, 10 * MIN_HELDOUT_IMAGES) if num_heldout(k) >= MIN_HELDOUT_IMAGES
        )
        reason += (
            f" {held} held-out image{'s are' if held != 1 else ' is'} too few to judge the "
            f"result (at least {MIN_HELDOUT_IMAGES}, from {need} corrected images): it will "
            "be saved as a version but not used until you switch to it."
        )
    return Readiness(True, reason, n, n - held, held)


def num_heldout(n: int, fraction: float = HOLDOUT_FRACTION) -> int:
    """round(fraction * n), at least 1, leaving at least 1 image to train on."""
    return min(max(1, round(fraction * n)), max(n - 1, 0))


def _rank(rec: ImageRecord) -> str:
    """A stable pseudo-random order: by a hash of the image content (not its position)."""
    return hashlib.sha256(f"holdout:{rec.sha256}".encode()).hexdigest()


def split_holdout(
    records: list[ImageRecord], fraction: float = HOLDOUT_FRACTION, first: tuple[str, ...] = ()
) -> tuple[list[int], list[int]]:
    """Deterministic (train ids, held-out ids) of the corrected images.

    Images are ranked by a hash of their content, so the split does not depend on the order they
    were added. The held-out set first takes one image of every class that occurs in at least two
    images (the classes in ``first``, e.g. new ones, then the rarest, while there is room), so a
    new class can be scored before and after.
    """
    ranked = sorted(records, key=_rank)
    n_held = num_heldout(len(ranked), fraction)
    images_of: dict[str, list[ImageRecord]] = {}
    for rec in ranked:
        for name in rec.counts:
            images_of.setdefault(name, []).append(rec)
    held: list[ImageRecord] = []
    for name in sorted(images_of, key=lambda c: (c not in first, len(images_of[c]), c)):
        if len(held) >= n_held:
            break
        recs = images_of[name]
        if len(recs) >= 2 and not any(r in held for r in recs):
            held.append(recs[0])
    held += [r for r in ranked if r not in held][: n_held - len(held)]
    held_ids = {r.id for r in held}
    return (
        [r.id for r in records if r.id not in held_ids],
        [r.id for r in records if r.id in held_ids],
    )


def training_categories(
    ws: Workspace, base_meta: DatasetMeta, records: list[ImageRecord]
) -> list[Category]:
    """The class order of the fine-tune: the base model's classes first, at their old indices
    (matched by name), then the workspace categories the corrections use that it lacks.

    Keeping the old indices is what lets the partial load keep the classifier rows (row i of the
    old model is class i of the new one); new classes get fresh rows appended.
    """
    base_ids = ws.ensure_meta(base_meta)
    cats = {c.id: c for c in ws.categories()}
    used = {name for r in records for name in r.counts}
    new = [c for c in cats.values() if c.name in used and c.id not in set(base_ids)]
    return [cats[i] for i in base_ids] + new


def plain_classes(checkpoint: str | Path, meta: DatasetMeta) -> int:
    """Classes of the plain network a fine-tune trains from: an extended model's base classes,
    else all of ``meta``'s."""
    from maskformer.checkpoint import peek_checkpoint
    from maskformer.errors import CheckpointError

    try:
        return peek_checkpoint(checkpoint).cfg.model.base_classes or meta.num_classes
    except (CheckpointError, OSError):
        return meta.num_classes


def meta_for(categories: list[Category], name: str = "workspace") -> DatasetMeta:
    return DatasetMeta(
        class_names=tuple(c.name for c in categories),
        isthing=tuple(c.isthing for c in categories),
        colors=tuple(c.color for c in categories),
        dataset_ids=tuple(c.dataset_id for c in categories),
        name=name,
    )


# ------------------------------------------------------------------------------------ the job


@dataclass(frozen=True)
class Settings:
    """What the user may change; None takes the recipe's value."""

    iters: int | None = None
    batch: int | None = None
    lr: float | None = None
    device: str | None = None  # None: cuda when available
    recipe: str = FINETUNE.name

    def resolved_recipe(self) -> Recipe:
        if self.recipe not in RECIPES:
            raise FinetuneError(
                f"unknown fine-tune recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}"
            )
        return RECIPES[self.recipe]

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class FinetuneSpec:
    """Everything the job process needs; written to ``<job_dir>/spec.json``."""

    workspace: str
    job_dir: str
    base_checkpoint: str
    base_version: int | None
    train_images: list[int]
    heldout_images: list[int]
    category_ids: list[int]  # workspace category of each contiguous class, base classes first
    base_classes: int  # K of the base model: classes at index >= this are new
    iters: int
    batch: int
    lr: float | None
    device: str
    log_period: int
    checkpoint_period: int
    warmup_iters: int
    nice: int = 5  # the job yields the CPU to the app's own requests
    created: str = ""
    recipe: str = BASE.name
    overrides: list[str] = field(default_factory=list)  # train-command config overrides
    replay_images: list[int] = field(default_factory=list)  # uncorrected images to replay
    copy_paste: float = 0.0  # ``input.copy_paste`` of the new classes' instances

    @property
    def run_dir(self) -> Path:
        return Path(self.job_dir) / "run"

    @property
    def expert(self) -> bool:
        """The job trains an expert head and saves an extended model (the expert recipe)."""
        recipe = RECIPES.get(self.recipe)
        return recipe is not None and recipe.expert

    def save(self) -> Path:
        path = Path(self.job_dir) / "spec.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".spec.json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FinetuneSpec:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise FinetuneError(f"cannot read the fine-tune spec {path}: {e}") from None


def schedule(iters: int) -> dict[str, int]:
    """Log, checkpoint and warm-up periods that suit a short run of ``iters`` iterations."""
    return {
        "log_period": max(1, min(10, iters // 15)),
        "checkpoint_period": max(5, iters // 6),
        "warmup_iters": min(10, iters // 10),
    }


def job_command(spec_path: str | Path) -> list[str]:
    return [sys.executable, "-m", "app.finetune_job", str(spec_path)]


def job_env() -> dict[str, str]:
    """The job's environment: the project on its path whatever the server's working directory,
    and (unless set) one CPU thread fewer than the machine has, so the app keeps a core.

    Measured on the 2-core machine: a tiny-preset step takes ~0.45 CPU-s with 1 thread but
    ~2 CPU-s with 2 threads once anything else runs (the threads spin waiting for each other).
    """
    path = os.environ.get("PYTHONPATH", "")
    threads = str(max(1, (os.cpu_count() or 2) - 1))
    return {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        **os.environ,
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass(frozen=True)
class Progress:
    """One poll of the job, ready to show.

    Attributes:
        state: the job state (``app.jobs.STATES``).
        phase: the job's own step: export, before, train, after, register, done, failed.
        message: one line for people.
        iteration, total: training progress; fraction in [0, 1] over the whole job.
        eta_s: seconds left (None until two log records exist).
        losses: ``(iter, loss)`` pairs from ``metrics.jsonl``.
        result: ``result.json`` once the job registered the new version.
        log_tail: the end of the job's log (shown when it failed).
    """

    state: str
    phase: str = ""
    message: str = ""
    iteration: int = 0
    total: int = 0
    fraction: float = 0.0
    eta_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    log_tail: str = ""
    job_id: str = ""


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The training log records (lines cut short by a crash are skipped)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def loss_curve(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    pts = []
    for r in records:
        loss = r.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            pts.append((int(r["iter"]), float(loss)))
    return pts


def eta_seconds(records: list[dict[str, Any]], total: int) -> float | None:
    """Seconds left from the pace between the first and the last log record."""
    steps = [r for r in records if "loss" in r and isinstance(r.get("time"), (int, float))]
    if len(steps) < 2 or steps[-1]["iter"] <= steps[0]["iter"]:
        return None
    a, b = steps[0], steps[-1]
    per_iter = (b["time"] - a["time"]) / (b["iter"] - a["iter"])
    return max(0.0, per_iter * (total - b["iter"]))


# Share of the whole job's time each phase ends at (training dominates).
_PHASE_END = {
    "export": 0.02,
    "before": 0.06,
    "train": 0.94,
    "after": 0.98,
    "register": 1.0,
    "done": 1.0,
}


class Finetuner:
    """Starts, watches, cancels and resumes the fine-tune job of one workspace."""

    def __init__(self, ws: Workspace, runner: JobRunner | None = None):
        self.ws = ws
        self.runner = runner or JobRunner(ws.root / "jobs", "train")

    def readiness(self) -> Readiness:
        r = readiness(self.ws)
        if r.ok and self.runner.busy():
            return Readiness(
                False,
                "A fine-tune is running; wait for it or cancel it.",
                r.corrected,
                r.train,
                r.heldout,
            )
        return r

    def prepare(
        self,
        base_checkpoint: str | Path,
        base_version: int | None,
        base_meta: DatasetMeta,
        settings: Settings = Settings(),
    ) -> FinetuneSpec:
        """Split the corrected images and write the spec of a new job (nothing runs yet)."""
        ready = readiness(self.ws)
        if not ready.ok:
            raise FinetuneError(ready.reason)
        recipe = settings.resolved_recipe()
        records = corrected_images(self.ws)
        cats = training_categories(self.ws, base_meta, records)
        added = len(cats) > plain_classes(base_checkpoint, base_meta)
        if recipe is FINETUNE and added:
            recipe = EXPERT  # new classes: keep the base model and train an expert for them
        elif recipe.expert and not added:
            raise FinetuneError(
                "the expert recipe trains classes the base model lacks, and the corrected "
                "images add none; use the finetune recipe"
            )
        iters = recipe.iters if settings.iters is None else int(settings.iters)
        batch = recipe.batch if settings.batch is None else int(settings.batch)
        if iters < 1 or batch < 1:
            raise FinetuneError(
                f"iterations and batch size must be at least 1, got {iters} and {batch}"
            )
        new_names = tuple(c.name for c in cats[base_meta.num_classes :])
        train, held = split_holdout(records, first=new_names)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        spec = FinetuneSpec(
            workspace=str(self.ws.root),
            job_dir=str(self.ws.root / "finetune" / stamp),
            base_checkpoint=str(base_checkpoint),
            base_version=base_version,
            train_images=train,
            heldout_images=held,
            category_ids=[c.id for c in cats],
            base_classes=base_meta.num_classes,
            iters=iters,
            batch=batch,
            lr=recipe.lr if settings.lr is None else float(settings.lr),
            device=settings.resolved_device(),
            created=stamp,
            recipe=recipe.name,
            overrides=list(recipe.overrides),
            replay_images=replay_images(self.ws.list_images()) if recipe.replay else [],
            copy_paste=recipe.copy_paste,
            **schedule(iters),
        )
        spec.save()
        return spec

    def start(
        self,
        base_checkpoint: str | Path,
        base_version: int | None,
        base_meta: DatasetMeta,
        settings: Settings = Settings(),
    ) -> JobInfo:
        if self.runner.busy():  # checked again under the lock by the runner
            raise JobBusyError(
                "a fine-tune is already running in this workspace; wait for it or cancel it"
            )
        spec = self.prepare(base_checkpoint, base_version, base_meta, settings)
        return self.launch(spec)

    def launch(self, spec: FinetuneSpec) -> JobInfo:
        path = Path(spec.job_dir) / "spec.json"
        return self.runner.start(
            job_command(path), spec.job_dir, label=JOB_LABEL, env=job_env(), cwd=ROOT
        )

    def resume(self) -> JobInfo:
        """Run the last job again: its export is reused and training continues from the run's
        last checkpoint (``train --resume``); finished steps are skipped."""
        st = self.runner.state()
        if st.info is None:
            raise FinetuneError("there is no fine-tune to resume")
        if st.running:
            raise FinetuneError("the fine-tune is still running")
        result = read_json(Path(st.info.job_dir) / "result.json")
        if result is not None:
            raise FinetuneError(
                f"the last fine-tune already finished (version "
                f"{result.get('version_id')}); start a new one"
            )
        return self.launch(FinetuneSpec.load(Path(st.info.job_dir) / "spec.json"))

    def cancel(self) -> JobState:
        return self.runner.cancel()

    def can_resume(self, st: JobState | None = None) -> bool:
        st = st or self.runner.state()
        return (
            st.info is not None
            and st.state in ("failed", "cancelled", "dead")
            and (Path(st.info.job_dir) / "spec.json").exists()
        )

    def progress(self) -> Progress:
        """Read the job's files once (cheap enough for a 1 s timer)."""
        st = self.runner.state()
        if st.info is None:
            return Progress(state="idle", message="No fine-tune has run in this workspace yet.")
        job_dir = Path(st.info.job_dir)
        spec = read_json(job_dir / "spec.json") or {}
        total = int(spec.get("iters", 0))
        phase_doc = read_json(job_dir / "phase.json") or {}
        phase = phase_doc.get("phase", "starting")
        records = read_metrics(job_dir / "run")
        it = max((int(r["iter"]) for r in records if "loss" in r), default=0)
        frac = _fraction(phase, it, total)
        eta = eta_seconds(records, total) if phase == "train" else None
        message = phase_doc.get("message", "starting the job process")
        if st.state != "running":
            message = _final_message(st, phase_doc)
            frac = 1.0 if st.state == "finished" else frac
        return Progress(
            state=st.state,
            phase=phase,
            message=message,
            iteration=it,
            total=total,
            fraction=frac,
            eta_s=eta,
            losses=loss_curve(records),
            result=read_json(job_dir / "result.json"),
            log_tail=_tail(st.info.log_path) if st.state in ("failed", "dead") else "",
            job_id=st.info.job_id,
        )


def _fraction(phase: str, it: int, total: int) -> float:
    if phase == "train" and total > 0:
        lo, hi = _PHASE_END["before"], _PHASE_END["train"]
        return lo + (hi - lo) * min(1.0, it / total)
    prev = {
        "export": 0.0,
        "before": _PHASE_END["export"],
        "after": _PHASE_END["train"],
        "register": _PHASE_END["after"],
        "done": 1.0,
    }
    return prev.get(phase, 0.0)


def _final_message(st: JobState, phase_doc: dict[str, Any]) -> str:
    if st.state == "finished":
        return phase_doc.get("message", "finished")
    if st.state == "cancelled":
        return (
            "Cancelled. The current model and the workspace are unchanged; Resume continues "
            "from the last checkpoint."
        )
    why = phase_doc.get("message", "") if phase_doc.get("phase") == "failed" else st.message
    return f"The fine-tune stopped ({why}). The current model and the workspace are unchanged."


def _tail(path: Path, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
