import os
import pickle

import pytest
import torch

from xmodal.engine.checkpoint import (
    CheckpointManager,
    load_state_file,
    load_weights,
    save_atomic,
    save_safetensors_atomic,
    strip_prefix,
)
from xmodal.errors import CheckpointError


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_code_executing_pickle(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError) as e:
        load_state_file(p)
    assert "refusing to load" in str(e.value) and "\n" not in str(e.value)
    torch.save({"w": _Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_state_file(tmp_path / "evil2.pt")


def test_atomic_save_leaves_no_temp_and_truncation_is_detected(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        mgr.save({"model": {"w": torch.full((100,), float(step))}, "step": step}, step)
    assert [p.name for p in mgr.list()] == ["step_00000001.ckpt", "step_00000002.ckpt", "step_00000003.ckpt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    newest = mgr.list()[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a crash mid-copy, or a disk-full write
    path, state = mgr.latest_loadable()
    assert path.name == "step_00000002.ckpt" and state["step"] == 2
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_state_file(newest)


def test_keep_last_prunes(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in range(5):
        mgr.save({"model": {}}, step)
    assert [p.name for p in mgr.list()] == ["step_00000003.ckpt", "step_00000004.ckpt"]


def test_safetensors_round_trip_and_prefix(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    state = {f"module.{k}": v for k, v in m.state_dict().items()}
    save_safetensors_atomic(state, tmp_path / "w.safetensors", {"step": 3})
    loaded = load_state_file(tmp_path / "w.safetensors")
    m2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    load_weights(m2, loaded)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert list(strip_prefix({"module._orig_mod.x": 1})) == ["x"]


def test_wrong_architecture_is_one_clear_line(tmp_path):
    m = torch.nn.Linear(3, 4)
    save_atomic({"weight": torch.zeros(5, 3), "extra": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as e:
        load_weights(m, load_state_file(tmp_path / "w.pt"), what="teacher.pt")
    msg = str(e.value)
    assert "\n" not in msg and "teacher.pt" in msg
    assert "1 missing: bias" in msg and "1 unexpected: extra" in msg and "weight (5, 3)!=(4, 3)" in msg


def test_missing_file():
    with pytest.raises(CheckpointError, match="not found"):
        load_state_file("/nonexistent/x.ckpt")
