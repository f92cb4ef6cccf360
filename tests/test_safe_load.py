"""Checkpoint files are read without running code from them (trainer state, DCP index)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from pivotal import checkpoint as ckpt
from pivotal.errors import CheckpointError
from pivotal.safe_load import SafeDCPReader, load_state_file, safe_dcp_reader


class _RunsCode:
    """Unpickling this calls `open(target, 'w')`: the file appearing means code ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_trainer_state_with_rng_and_optimizer_round_trips(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"step": 3, "rng": ckpt.rng_state(), "optimizer": opt.state_dict(),
             "history": {"reward": [0.5]}, "config": {"a": {"b": [1, 2.0, None, "x"]}}}
    torch.save(state, tmp_path / "trainer_state.pt")
    back = load_state_file(tmp_path / "trainer_state.pt")
    assert back["step"] == 3 and back["history"] == state["history"]
    assert (back["rng"]["numpy"][1] == state["rng"]["numpy"][1]).all()
    ckpt.set_rng_state(back["rng"])  # restores as written
    torch.testing.assert_close(back["optimizer"]["state"][0]["exp_avg"],
                               state["optimizer"]["state"][0]["exp_avg"])


def test_a_trainer_state_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"step": 1, "evil": _RunsCode(target)}, tmp_path / "trainer_state.pt")
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt holds something other"):
        load_state_file(tmp_path / "trainer_state.pt")
    assert not target.exists()


def _dcp_checkpoint(path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3)).sum().backward()
    opt.step()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path, no_dist=True)
    return model, opt


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_dcp_index_loads_with_the_safe_reader_and_one_that_runs_code_is_refused(tmp_path):
    saved, _ = _dcp_checkpoint(tmp_path / "dcp")
    fresh = torch.nn.Linear(3, 2)
    state = {"model": fresh.state_dict()}
    dcp.load(state, storage_reader=SafeDCPReader(tmp_path / "dcp"), no_dist=True)
    torch.testing.assert_close(state["model"]["weight"], saved.weight.detach())

    target = tmp_path / "pwned"
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(_RunsCode(target)))
    with pytest.raises(CheckpointError, match=r"\.metadata names io\.open, which is not part"):
        safe_dcp_reader(tmp_path / "dcp")
    assert not target.exists()
