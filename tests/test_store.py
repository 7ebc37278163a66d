import json

import numpy as np
import pytest

from cccad.data.store import DatasetError, DatasetWriter, open_dataset


def make(path, config=None, n=1000):
    config = config or {"collect": {"episodes": 10}, "seed": 0}
    w = DatasetWriter(path, "demo", config, "hash-" + json.dumps(config, sort_keys=True))
    a = w.create("frames", (n, 8, 8), np.uint8)
    a[:] = np.arange(n * 64, dtype=np.int64).reshape(n, 8, 8) % 251
    w.add("rewards", np.linspace(0, 1, n, dtype=np.float32))
    w.commit(counts={"n": n}, meta={"note": "x"})
    return config


def test_round_trip_is_memory_mapped(tmp_path):
    cfg = make(tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds", kind="demo", expect_config=cfg, expect_hash="hash-" + json.dumps(cfg, sort_keys=True))
    assert isinstance(ds["frames"], np.memmap) and ds["frames"].dtype == np.uint8
    assert ds["frames"][999, 7, 7] == (999 * 64 + 63) % 251
    assert ds["rewards"][-1] == 1.0 and ds.meta == {"note": "x"}
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_truncated_file_is_refused(tmp_path):
    make(tmp_path / "ds")
    f = tmp_path / "ds" / "frames.npy"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="frames.npy.*truncated"):
        open_dataset(tmp_path / "ds")


def test_corrupt_byte_is_refused_by_checksum(tmp_path):
    make(tmp_path / "ds")
    f = tmp_path / "ds" / "frames.npy"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="frames.npy.*checksum"):
        open_dataset(tmp_path / "ds")


def test_mismatched_config_is_refused_naming_the_key(tmp_path):
    make(tmp_path / "ds", {"collect": {"episodes": 10}, "seed": 0})
    want = {"collect": {"episodes": 20}, "seed": 0}
    with pytest.raises(DatasetError, match=r"collect\.episodes=10 \(config wants 20\)"):
        open_dataset(tmp_path / "ds", expect_config=want, expect_hash="other")


def test_corrupt_manifest_and_unfinished_writes_are_not_datasets(tmp_path):
    make(tmp_path / "ds")
    m = tmp_path / "ds" / "manifest.json"
    m.write_text(m.read_text()[:50])
    with pytest.raises(DatasetError, match="manifest.json.*not valid JSON"):
        open_dataset(tmp_path / "ds")
    w = DatasetWriter(tmp_path / "ds2", "demo", {}, "h")
    w.create("x", (10,), np.uint8)
    # the writer "dies" here: nothing is at the final path
    with pytest.raises(DatasetError, match="no dataset folder"):
        open_dataset(tmp_path / "ds2")


def test_existing_dataset_is_never_overwritten(tmp_path):
    make(tmp_path / "ds")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        DatasetWriter(tmp_path / "ds", "demo", {}, "h")
