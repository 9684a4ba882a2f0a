"""Settings that cannot run are refused with a clear message, before any work starts."""

import pytest
import torch

from mycelium.config import torch_device
from mycelium.errors import BadInput
from mycelium.training import TrainConfig


def test_devices_are_checked_against_this_machine():
    assert torch_device("cpu") == "cpu"
    assert torch_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadInput, match="unknown device 'tpu'"):
        torch_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="no CUDA GPU here"):
            torch_device("cuda")


def test_train_config_refuses_settings_that_cannot_run():
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"patience": 0}, {"lr": 0.0}, {"head_lr": -1.0}):
        with pytest.raises(BadInput):
            TrainConfig(**bad)
    assert TrainConfig(epochs=1, batch_size=1).epochs == 1
