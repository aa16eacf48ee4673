"""The train command's glibc settings: a conv net's steps stop page-faulting their activations."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from maskformer.training import allocator

ROOT = Path(__file__).resolve().parents[1]
STEPS = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from maskformer.training.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
torch.set_num_threads(1)  # OpenMP workers allocate in arenas of their own
net = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1),
                                                torch.nn.ReLU()) for _ in range(6)])
x = torch.randn(8, 32, 96, 96)
def step():
    net(x).square().mean().backward()
for _ in range(5):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""

glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _faults_per_step(mode: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not allocator.is_malloc_variable(k)}
    out = subprocess.run(
        [sys.executable, "-c", STEPS.format(root=str(ROOT)), mode],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    )
    applied, faults = out.stdout.split()
    return applied, float(faults)


@glibc
def test_keeping_freed_memory_stops_the_page_faults_of_each_step():
    _, default = _faults_per_step("default")
    applied, kept = _faults_per_step("keep")
    assert applied == "True"
    assert default > 1000  # 9.4 MiB activations: fresh mmaps, faulted in every step
    assert kept < 0.1 * default  # seen: 18800-36700 per step by default, 0-230 kept


def test_a_user_choice_in_the_environment_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert allocator.keep_freed_memory() is False
