"""The safe .pkl/.pth reader: numpy checkpoints load, and code a file asks for is never run."""

import collections
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch

from maskformer.converters.safe_pickle import load_pickle_file, load_weights_file
from maskformer.errors import CheckpointError


class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class _Touch:
    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


PAYLOADS = [_System, _Exec, _Touch]


def _checkpoint_like(payload):
    """A detectron2-style dict with the payload hidden among real arrays."""
    return {
        "model": {"backbone.stem.conv1.weight": np.ones((2, 3), np.float32), "evil": payload},
        "__author__": "someone",
    }


@pytest.mark.parametrize("payload_cls", PAYLOADS, ids=lambda c: c.__name__)
def test_payload_really_runs_under_plain_pickle(tmp_path, payload_cls):
    # Proves the refusal tests below are meaningful: the stdlib unpickler does create the marker.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_checkpoint_like(payload_cls(marker))))
    assert marker.exists()


@pytest.mark.parametrize("payload_cls", PAYLOADS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("container", ["pkl", "pth", "pth_legacy"])
def test_malicious_file_is_refused_and_never_runs(tmp_path, payload_cls, container):
    marker = tmp_path / "pwned"
    obj = _checkpoint_like(payload_cls(marker))
    path = tmp_path / f"model.{container.split('_')[0]}"
    if container == "pkl":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=container == "pth")
    with pytest.raises(CheckpointError, match=r"refusing to load .*could run code"):
        load_weights_file(path)
    assert not marker.exists()


def test_refusal_names_the_global(tmp_path):
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(_checkpoint_like(_System(tmp_path / "x"))))
    with pytest.raises(CheckpointError) as err:
        load_pickle_file(path)
    assert "system" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_checkpoint_loads_with_every_protocol(tmp_path, protocol):
    model = collections.OrderedDict(
        w=np.arange(12, dtype=np.float32).reshape(3, 4),
        b=np.zeros(3, np.float16),
        idx=np.arange(5, dtype=np.int64),
        t=np.asfortranarray(np.ones((2, 3), np.float64)),
    )
    obj = {
        "model": model,
        "__author__": "FAIR",
        "matching_heuristics": True,
        "scalar": np.float32(2.5),
        "tags": {"a", "b"},
        "blob": b"\x00\xff",
    }
    path = tmp_path / "zoo.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = load_weights_file(path)
    for k, v in model.items():
        np.testing.assert_array_equal(out["model"][k], v)
        assert out["model"][k].dtype == v.dtype
    assert out["scalar"] == np.float32(2.5) and out["tags"] == {"a", "b"}
    assert out["blob"] == b"\x00\xff" and out["__author__"] == "FAIR"


def test_torch_files_load_zip_and_legacy(tmp_path):
    sd = {"model": {"a": torch.arange(6.0).view(2, 3)}, "iteration": 7}
    for zipped in (True, False):
        path = tmp_path / f"m{zipped}.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=zipped)
        out = load_weights_file(path)
        assert torch.equal(out["model"]["a"], sd["model"]["a"]) and out["iteration"] == 7


def test_codecs_encode_only_latin1(tmp_path):
    # Protocol-2 pickles store bytes as _codecs.encode(text, "latin1"); other codecs are refused.
    good = (
        b"\x80\x02c_codecs\nencode\nq\x00X\x02\x00\x00\x00abq\x01"
        b"X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04."
    )
    path = tmp_path / "g.pkl"
    path.write_bytes(good)
    assert load_pickle_file(path) == b"ab"
    path.write_bytes(good.replace(b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00rot_13"))
    with pytest.raises(CheckpointError):
        load_pickle_file(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights_file(tmp_path / "nope.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_text("this is not a pickle")
    with pytest.raises(CheckpointError, match="not a valid pickle"):
        load_weights_file(bad)
