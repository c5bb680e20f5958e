"""vgg/stop.py: signals as stop requests, with real signals sent to this process."""

import os
import signal

import pytest
import torch

from vgg.checkpoint import load_checkpoint, save_checkpoint
from vgg.stop import StopRequest


def quiet(*args, **kwargs):
    pass


def test_first_signal_requests_a_stop_and_the_second_stops_at_once():
    with StopRequest(announce=quiet) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_second_ctrl_c_during_a_checkpoint_write_lets_the_write_finish(tmp_path):
    path = tmp_path / "last.pt"
    with StopRequest(announce=quiet) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt), stop.writing():
            os.kill(os.getpid(), signal.SIGINT)  # mid-write
            save_checkpoint({"step": 7, "w": torch.ones(1000)}, path)
    assert load_checkpoint(path)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
