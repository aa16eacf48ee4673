"""Predict all: the model over every unseen image of a workspace, as a background job.

The job is a process of its own (``python -m app.predict_all <job_dir>/spec.json``) started and
watched through ``app.jobs.JobRunner`` under the name "predict-all", so a crash in it (or a model
that eats the memory) cannot take the server down, and cancel stops it at once. Each image is
stored in one transaction (annotation, status "predicted" and uncertainty together), so a job
that is cancelled or killed leaves every image either as it was or fully predicted. Progress goes
to ``<job_dir>/progress.json`` after every image; the outcome to ``result.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.jobs import JobBusyError, JobInfo, JobRunner, JobState
from app.store import Workspace
from maskformer.errors import ImageReadError, UserError

ROOT = Path(__file__).resolve().parents[1]
JOB_NAME = "predict-all"


@dataclass(frozen=True)
class PredictAllSpec:
    """Everything the job process needs; written to ``<job_dir>/spec.json``."""

    workspace: str
    job_dir: str
    checkpoint: str
    model_version_id: int | None
    image_ids: list[int]  # the images that were unseen when the job was asked for
    score_threshold: float | None = None  # None: the model's test config
    overlap_threshold: float | None = None
    device: str = "cpu"
    nice: int = 5  # the job yields the CPU to the app's own requests

    def save(self) -> Path:
        path = Path(self.job_dir) / "spec.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, path: str | Path) -> PredictAllSpec:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"cannot read the predict-all spec {path}: {e}") from None


@dataclass(frozen=True)
class Progress:
    """One poll of the job, ready to show.

    Attributes:
        state: ``app.jobs.STATES`` (idle, running, finished, failed, cancelled, dead).
        done: images handled so far (predicted, skipped or unreadable); total: of the job.
        predicted: images stored as predictions.
        eta_s: seconds left at the pace so far (None before the first image is done).
        message: one line for people.
    """

    state: str
    done: int = 0
    total: int = 0
    predicted: int = 0
    eta_s: float | None = None
    message: str = ""
    failed: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)

    @property
    def running(self) -> bool:
        return self.state == "running"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def eta_seconds(done: int, total: int, first_started: float | None, now: float) -> float | None:
    """Seconds left at the mean pace since the first image started (model loading excluded)."""
    if done <= 0 or first_started is None or total <= done:
        return None if done <= 0 else 0.0
    return max(0.0, (now - first_started) / done * (total - done))


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating time left"
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d} left" if s >= 60 else f"{s} s left"


# ------------------------------------------------------------------------------------ launcher


def job_env() -> dict[str, str]:
    """The project on the job's path; one CPU thread fewer than the machine has (unless set), so
    the server keeps a core for the people using it."""
    threads = str(max(1, (os.cpu_count() or 2) - 1))
    path = os.environ.get("PYTHONPATH", "")
    return {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        **os.environ,
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
        "PYTHONUNBUFFERED": "1",
    }


class PredictAll:
    """Starts, watches and cancels the predict-all job of one workspace."""

    def __init__(self, ws: Workspace, runner: JobRunner | None = None):
        self.ws = ws
        self.runner = runner or JobRunner(ws.root / "jobs", JOB_NAME)

    def start(
        self,
        checkpoint: str | Path,
        model_version_id: int | None = None,
        score_threshold: float | None = None,
        overlap_threshold: float | None = None,
        device: str = "cpu",
    ) -> JobInfo:
        """Write a spec for the images unseen now and start the job.

        Raises:
            JobBusyError: a predict-all job is already running in this workspace.
            UserError: no unseen image, or the checkpoint file is missing.
        """
        if self.runner.busy():
            raise JobBusyError("predict-all is already running in this workspace; cancel it first")
        unseen = [r.id for r in self.ws.list_images(counts=False) if r.status == "unseen"]
        if not unseen:
            raise UserError("nothing to predict: every image has a prediction or a correction")
        if not Path(checkpoint).is_file():
            raise UserError(f"checkpoint {checkpoint} not found")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        spec = PredictAllSpec(
            workspace=str(self.ws.root.resolve()),
            job_dir=str((self.ws.root / "predict_all" / stamp).resolve()),
            checkpoint=str(Path(checkpoint).resolve()),
            model_version_id=model_version_id,
            image_ids=unseen,
            score_threshold=score_threshold,
            overlap_threshold=overlap_threshold,
            device=device,
        )
        path = spec.save()
        command = [sys.executable, "-m", "app.predict_all", str(path)]
        return self.runner.start(command, spec.job_dir, label=JOB_NAME, env=job_env(), cwd=ROOT)

    def cancel(self) -> JobState:
        return self.runner.cancel()

    def progress(self) -> Progress:
        """Read the job's files once (cheap enough for a 1 s timer)."""
        st = self.runner.state()
        if st.info is None:
            return Progress("idle", message="Predict all has not run in this workspace yet.")
        job_dir = Path(st.info.job_dir)
        spec = _read_json(job_dir / "spec.json") or {}
        doc = _read_json(job_dir / "progress.json") or {}
        total = int(doc.get("total", len(spec.get("image_ids", []))))
        done, predicted = int(doc.get("done", 0)), int(doc.get("predicted", 0))
        failed = list(doc.get("failed", []))
        if st.running:
            if doc.get("first_started") is None:  # no progress file yet, or the model loads
                return Progress("running", 0, total, 0, None, "Loading the model…", failed)
            eta = eta_seconds(done, total, doc["first_started"], time.time())
            msg = f"Predicting: {done}/{total} images, {format_eta(eta)}"
            return Progress("running", done, total, predicted, eta, msg, failed)
        return Progress(
            st.state, done, total, predicted, None, _final(st, done, total, predicted, doc), failed
        )


def _final(st: JobState, done: int, total: int, predicted: int, doc: dict[str, Any]) -> str:
    if st.state == "finished":
        return doc.get("message", f"Predicted {predicted} of {total} images.")
    if st.state == "cancelled":
        return (
            f"Cancelled after {done} of {total} images ({predicted} predicted); the others are "
            "still unseen."
        )
    why = doc.get("error") or st.message
    return f"Predict all stopped after {done} of {total} images ({why})."


# ------------------------------------------------------------------------------------ the job


class Cancelled(BaseException):
    """SIGTERM from ``JobRunner.cancel``: raised between statements, so an open transaction
    rolls back and the image stays as it was."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Cancelled()


def run(spec: PredictAllSpec) -> dict[str, Any]:
    """Predict every image of the spec that is still unseen; returns the counts."""
    from app.uncertainty import image_uncertainty
    from maskformer.inference import Predictor

    job_dir, ws = Path(spec.job_dir), Workspace(spec.workspace)
    doc: dict[str, Any] = {
        "total": len(spec.image_ids),
        "done": 0,
        "predicted": 0,
        "skipped": 0,
        "failed": [],
        "first_started": None,  # set once the model is loaded: the ETA counts from here
    }
    _write_json(job_dir / "progress.json", doc)
    predictor = Predictor.from_checkpoint(spec.checkpoint, device=spec.device)
    test = predictor.cfg.test
    t_score = test.object_mask_threshold if spec.score_threshold is None else spec.score_threshold
    t_overlap = test.overlap_threshold if spec.overlap_threshold is None else spec.overlap_threshold
    categories = ws.ensure_meta(predictor.meta)  # workspace category id of each model class
    doc["first_started"] = time.time()
    for image_id in spec.image_ids:
        if ws.image(image_id).status == "unseen":  # opened and saved meanwhile: leave it
            try:
                pred = predictor.predict(ws.load_image(image_id))
            except ImageReadError as e:
                doc["failed"].append(f"{image_id}: {e}")
            else:
                pan = pred.panoptic(t_score, t_overlap)
                segments = [
                    {
                        "id": int(g["id"]),
                        "category_id": categories[int(g["category_id"])],
                        "isthing": bool(g["isthing"]),
                        "query": int(g["query"]),
                        "score": float(g["score"]),
                    }
                    for g in pan.segments
                ]
                stored = ws.save_prediction(
                    image_id,
                    pan.panoptic_seg.numpy(),
                    segments,
                    uncertainty=image_uncertainty(pred, t_score, t_overlap),
                    model_version_id=spec.model_version_id,
                )
                doc["predicted" if stored else "skipped"] += 1
        else:
            doc["skipped"] += 1
        doc["done"] += 1
        _write_json(job_dir / "progress.json", doc)
    doc["message"] = (
        f"Predicted {doc['predicted']} of {doc['total']} images"
        + (f", {doc['skipped']} skipped (opened meanwhile)" if doc["skipped"] else "")
        + (f", {len(doc['failed'])} unreadable" if doc["failed"] else "")
        + "."
    )
    _write_json(job_dir / "progress.json", doc)
    _write_json(job_dir / "result.json", doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m app.predict_all SPEC.json", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        spec = PredictAllSpec.load(argv[0])
        try:
            os.nice(spec.nice)
        except OSError:
            pass
        run(spec)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 143
    except UserError as e:
        _note_error(argv[0], str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        _note_error(argv[0], f"{type(e).__name__}: {e}")
        raise
    return 0


def _note_error(spec_path: str, message: str) -> None:
    path = Path(spec_path).with_name("progress.json")
    doc = _read_json(path) or {}
    doc["error"] = message.splitlines()[0] if message else "failed"
    try:
        _write_json(path, doc)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
