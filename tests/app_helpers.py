"""For the app tests: a scripted prediction with known fates, a tiny checkpoint, a live server."""

from __future__ import annotations

import contextlib
import io
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskformer.config import apply_overrides, get_preset
from maskformer.data.synthetic import synthetic_meta
from maskformer.inference import Prediction

ROOT = Path(__file__).resolve().parents[1]
# Real-browser tests: Debian's Chromium driven by Playwright (never `playwright install`)
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_WAIT = 60_000  # ms: the shared 2-core machine can be slow
K = 8  # synthetic classes: 0 circle, 1 square, 2 triangle, 3 star, 4 ring | 5 sky, 6 grass, 7 water


def tiny_cfg():
    return apply_overrides(get_preset("maskformer_tiny"), {"model.backbone": "test_resnet"})


def _logits(label: int, p: float) -> torch.Tensor:
    """(K+1,) class logits whose softmax gives class ``label`` probability ``p`` (others equal)."""
    z = torch.zeros(K + 1)
    z[label] = math.log(p * K / (1 - p))
    return z


def script(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-made outputs for an h x w image with known merge results at thresholds 0.8 / 0.8.

    q0 sky (top half but its left corner), q1 circle (disc), q2 square (two separate squares:
    splits in 2), q3 triangle at p=0.6 (below threshold), q4 no-object, q5 grass (bottom half, soft
    mask), q6 star at p=0.85 on a box mostly inside the disc (keeps only the corners: overlap),
    q7 sky on the top-left corner (merges into q0's segment). Returns (Q, K+1) class logits and
    (Q, h, w) mask logits (+8 inside, -8 outside).
    """
    ys, xs = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    top, bottom = ys < 0.5, ys >= 0.5
    disc = (ys - 0.7) ** 2 + (xs - 0.3) ** 2 < 0.12**2
    squares = ((ys > 0.6) & (ys < 0.72) & (xs > 0.6) & (xs < 0.72)) | (
        (ys > 0.8) & (ys < 0.92) & (xs > 0.8) & (xs < 0.92)
    )
    tri = (ys > 0.52) & (ys < 0.58) & (xs < 0.3)
    box = (ys > 0.6) & (ys < 0.8) & (xs > 0.2) & (xs < 0.4)  # its corners stick out of the disc
    corner = top & (xs < 0.25)
    masks = [top & ~corner, disc, squares, tri, disc, bottom, box, corner]
    labels = [(5, 0.97), (0, 0.95), (1, 0.9), (2, 0.6), (K, 0.9), (6, 0.9), (3, 0.85), (5, 0.82)]
    class_logits = torch.stack([_logits(c, p) for c, p in labels])  # (Q, K+1)
    mask_logits = torch.from_numpy(np.stack([np.where(m, 8.0, -8.0) for m in masks])).float()
    mask_logits[5][bottom] = 2.0  # grass: soft, so the things on it win their pixels
    return class_logits, mask_logits  # (Q, K+1), (Q, h, w)


class ScriptedPredictor:
    """The Predictor interface over ``script``: the real ``Prediction`` (and its merges) on
    outputs whose correct results are known by construction."""

    def __init__(self):
        self.cfg, self.meta = tiny_cfg(), synthetic_meta()
        self.calls = 0

    def predict(self, image: np.ndarray) -> Prediction:
        self.calls += 1
        class_logits, mask_logits = script(*image.shape[:2])
        return Prediction(
            class_logits=class_logits,
            mask_logits=mask_logits,
            image=image,
            meta=self.meta,
            test=self.cfg.test,
        )


def png_bytes(h: int = 64, w: int = 64, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def tiny_checkpoint(path: Path) -> Path:
    """A random tiny MaskFormer (test_resnet, K=8, Q=20) saved as a native checkpoint.

    A fresh model says nearly the same class for every query; its class bias is nudged towards a
    thing class (circle) so the merge at low thresholds gives several separate segments.
    """
    from maskformer.checkpoint import save_checkpoint
    from maskformer.model import build_model

    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        model.predictor.class_embed.bias[0] += 2.0
    save_checkpoint(path, model, cfg, synthetic_meta())
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``python launch.py`` as a subprocess on a free port; stopped by its PID."""

    def __init__(self, checkpoint: Path, workspace: Path, log: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {
            **os.environ,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": "1",
        }
        self.log = open(log, "w")  # noqa: SIM115 -- open while the server runs; stop() closes it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "launch.py"),
                "--checkpoint",
                str(checkpoint),
                "--workspace",
                str(workspace),
                "--port",
                str(self.port),
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 240) -> AppServer:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the app exited with {self.proc.returncode}; see {self.log.name}"
                )
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the app did not answer on {self.url} within {timeout} s")

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=10) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        self.log.close()


_SHARED: dict[str, AppServer] = {}


def shared_server() -> AppServer:
    """One app for every test module of this process (starting one costs 10-60 s on 2 busy
    cores): a random tiny checkpoint and a fresh workspace in a temp folder, stopped at exit."""
    if "server" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="mfs-app-"))
        ckpt = tiny_checkpoint(root / "tiny.safetensors")
        imports = root / "imports"  # the one folder the server may import from (--import-root)
        imports.mkdir()
        server = AppServer(
            ckpt, root / "workspace", root / "server.log", "--import-root", str(imports)
        )
        atexit.register(shutil.rmtree, root, True)
        atexit.register(server.stop)
        _SHARED["server"] = server.wait()
        server.root = root
    server = _SHARED["server"]
    if not server.alive():
        raise RuntimeError(f"the shared app stopped; see {server.log.name}")
    return server


def screenshot_folder() -> Path:
    """Where browser tests save their screenshots: ``$MFS_SCREENSHOTS`` (default
    ``test-artifacts/screenshots``); printed so the test run says where they are."""
    folder = Path(os.environ.get("MFS_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@contextlib.contextmanager
def browser_page(url: str, height: int, width: int = 1400):
    """A Chromium page (fresh profile, ``width`` x ``height``, downloads allowed) at ``url``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="mfs-chromium-"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=BROWSER_FLAGS,
            viewport={"width": width, "height": height},
            accept_downloads=True,
        )
        try:
            page = context.new_page()
            page.set_default_timeout(BROWSER_WAIT)
            # the page's errors and warnings, for the message of a wait that times out
            page.mfs_console = []
            page.on(
                "console",
                lambda m: (
                    m.type in ("error", "warning")
                    and page.mfs_console.append(f"{m.type}: {m.text}"[:300])
                ),
            )
            page.on("pageerror", lambda e: page.mfs_console.append(f"pageerror: {e}"[:300]))
            page.goto(url)
            yield page
        finally:
            context.close()
