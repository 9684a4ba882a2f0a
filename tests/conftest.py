import json
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts, or raw strings for malformed lines) to a .jsonl file under tmp_path."""

    def write(relpath: str, rows) -> Path:
        path = tmp_path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def smollm2():
    """The embedded teacher (SmolLM2-135M-Instruct GGUF), loaded once: about 20 s."""
    from mycelium.teacher import Teacher

    return Teacher.load()


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A 2-layer, 2-head random Llama saved as safetensors with SmolLM2's tokenizer.

    It stands in for a hub checkout: the same from_pretrained(folder) path a
    hub id takes, without the network, and it loads in a second.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mycelium.teacher import resolve

    folder, gguf = resolve("smollm2")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-teacher")
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory):
    """MiniLM specialists overfitted on two real GSM8K problems (Natalia's clips, Weng's babysitting)."""
    import torch

    from mycelium.specialists import SpecialistConfig, Specialists
    from mycelium.training import TrainConfig, train

    from .test_specialists import EXAMPLE, SECOND

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    model = Specialists.create(SpecialistConfig(constants=["1/100", "2", "60"]))
    train(model, [EXAMPLE, SECOND] * 8, [EXAMPLE, SECOND],
          TrainConfig(epochs=8, batch_size=4, lr=1e-4, head_lr=3e-3, patience=8), folder, progress=False)
    return folder
