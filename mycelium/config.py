"""Configuration as dataclasses that load from YAML.

    >>> cfg = load_config(DataConfig, {"dev_size": 200})
    >>> cfg.dev_size, cfg.seed
    (200, 0)

A YAML file (or a dict) supplies any subset of fields; unknown keys are an
error rather than silently ignored, so a typo never changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import BadInput, MissingFile

T = TypeVar("T")

# The shipped datasets live beside the checkout: <repo>/../shared/data.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_ENV = "MYCELIUM_DATA"


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The local datasets folder: argument, then $MYCELIUM_DATA, then ../shared/data."""
    return Path(override or os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


def torch_device(name: str) -> str:
    """A `--device` value checked against this machine: "auto" is cuda where torch sees a GPU, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise BadInput(f"unknown device {name!r}; use auto, cpu or cuda (cuda:1 for a second GPU)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        built = "a CUDA build" if torch.backends.cuda.is_built() else "a CPU-only build"
        raise BadInput(f"--device {name}, but torch sees no CUDA GPU here (torch {torch.__version__}, {built})")
    return name


@dataclasses.dataclass
class DataConfig:
    root: str | None = None  # None: $MYCELIUM_DATA or ../shared/data
    dev_size: int = 500  # problems carved from GSM8K train for tuning (and from ASDiv, held out)
    seed: int = 0


@dataclasses.dataclass
class ExecutorConfig:
    time_budget_s: float = 1.0  # wall clock per graph
    max_digits: int = 60  # |numerator| and |denominator| of every value below 10**max_digits
    max_exponent: int = 1000
    max_root: int = 12  # x**(p/q) only for q up to this
    max_steps: int = 256
    max_operands: int = 64


def load_config(cls: type[T], source: str | os.PathLike | dict[str, Any] | None = None, base: T | None = None) -> T:
    """Build `cls` from a YAML path or a dict; missing fields keep `base`'s values, or the defaults."""
    if source is None:
        return base if base is not None else cls()
    if isinstance(source, dict):
        values = source
    else:
        path = Path(source)
        if not path.is_file():
            raise MissingFile(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise BadInput(f"{path}: not valid YAML ({e.__class__.__name__})") from None
        if not isinstance(values, dict):
            raise BadInput(f"{path}: expected a mapping of settings")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise BadInput(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
