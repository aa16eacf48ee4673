"""Every input of the hostile suite (``tests/hostile_cases.py``) is handled cleanly.

One run of ``tests/hostile_driver.py`` (child processes: a case that still crashed a process
would be reported as a crash, not end this test run). ``bench/hostile.py`` prints the same
tally with the app's Import path, kill -9 faults and concurrent sessions added.
"""

import pytest

from hostile_cases import CASES
from hostile_driver import run_all

pytestmark = pytest.mark.slow


def test_every_hostile_input_is_handled_cleanly():
    rows = run_all(timeout=1500)
    assert len(rows) == len(CASES)
    bad = [
        f"{r['name']} ({r['command']}): {r['outcome']}: {r['detail']}"
        for r in rows
        if not r["clean"]
    ]
    print(f"\nhostile inputs: {len(rows)} tried, {len(rows) - len(bad)} handled cleanly")
    assert bad == []


def test_the_suite_covers_every_kind():
    kinds = {c.kind for c in CASES}
    assert kinds >= {
        "image",
        "filename",
        "coco",
        "panoptic",
        "semantic",
        "json",
        "results",
        "names",
        "server-path",
        "archive",
    }
    commands = {c.command for c in CASES}
    assert commands == {"import", "predict", "evaluate", "train", "name", "server-path", "upload"}
