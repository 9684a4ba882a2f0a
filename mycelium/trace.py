"""Teacher traces: what each solution token attended to in the problem.

    >>> teacher = Teacher.load()
    >>> t = capture(teacher, "Tom has 3 apples and buys 2. How many?", "3 + 2 = 5 apples.")
    >>> t.attn.shape          # [layer, head, solution token, problem token]
    (30, 9, 9, 12)
    >>> t.question[slice(*t.problem_offsets[2])]
    ' 3'

One forward pass over the chat-formatted problem + solution. A forward hook on
each layer's attention module (capture point `layers.{i}.self_attn`) receives
that layer's weights `[batch, head, query, key]` and reduces them at once, so
the full `layers × heads × T × T` tensor never exists; only these survive:

    attn          [layer, head, sol, prob]  float16  solution row → problem keys
    mass          [layer, head, sol, 3]     float16  row mass on prompt / problem / solution
    read_argmax   [layer, head, prob]       int16    reading phase: argmax key of each problem row
    read_sink     [layer, head]             float32  reading phase: mean mass on the first token
    read_jsd      [layer, head]             float32  reading phase: mean JSD of consecutive rows

The pass stops after the last captured layer, so capturing layers 0–9 of 30
costs about a third of a full pass. Also kept: token ids and character offsets of problem and solution tokens, each
relative to its own text, so `question[a:b]` is the text under a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import MyceliumError
from .teacher import Teacher, TeacherConfig

SCHEMA = "mycelium.trace/1"


@dataclass
class TraceConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mode: str = "forced"  # forced: reference solution | generate: the teacher's own, kept if correct
    layers: list[int] | None = None  # None: all
    heads: list[int] | None = None  # None: all
    strip_annotations: bool = True  # GSM8K's <<48/2=24>> is calculator markup, not text the teacher would write
    max_new_tokens: int = 256  # generate mode
    shard_size: int = 16  # problems per shard file


@dataclass
class Trace:
    id: str
    question: str
    solution: str  # the text the teacher read as its solution
    layers: list[int]
    heads: list[int]
    problem_ids: np.ndarray  # [prob] int32
    problem_offsets: np.ndarray  # [prob, 2] int32, into question
    solution_ids: np.ndarray  # [sol] int32
    solution_offsets: np.ndarray  # [sol, 2] int32, into solution
    attn: np.ndarray  # [layer, head, sol, prob] float16
    mass: np.ndarray  # [layer, head, sol, 3] float16
    read_argmax: np.ndarray  # [layer, head, prob] int16
    read_sink: np.ndarray  # [layer, head] float32
    read_jsd: np.ndarray  # [layer, head] float32
    meta: dict = field(default_factory=dict)

    ARRAYS = ("problem_ids", "problem_offsets", "solution_ids", "solution_offsets", "attn", "mass",
              "read_argmax", "read_sink", "read_jsd")

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, a).nbytes for a in self.ARRAYS)

    def tokens(self, tokenizer=None, part: str = "solution") -> list[str]:
        """Token texts by offsets (what the reader sees), e.g. [' 3', ' apples']."""
        text, offsets = (self.solution, self.solution_offsets) if part == "solution" else (self.question, self.problem_offsets)
        return [text[a:b] for a, b in offsets]


def strip_annotations(solution: str) -> str:
    """GSM8K text without its <<expr=result>> calculator markup."""
    from .reference import annotations

    out, i = [], 0
    for a in annotations(solution):
        out.append(solution[i:a.start])
        i = a.end
    out.append(solution[i:])
    return "".join(out)


def _token_range(offsets: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Indices [a, b) of the tokens that start inside chars [lo, hi)."""
    inside = np.nonzero((offsets[:, 0] >= lo) & (offsets[:, 0] < hi) & (offsets[:, 1] > offsets[:, 0]))[0]
    if len(inside) == 0:
        raise MyceliumError("no tokens fall inside the text span")
    return int(inside[0]), int(inside[-1]) + 1


def _jsd_rows(p, q):
    """JS divergence (nats) between matching rows of p and q: [..., n] -> [...]."""
    import torch

    m = 0.5 * (p + q)
    kl = lambda a, b: torch.where(a > 0, a * (torch.log(a.clamp_min(1e-12)) - torch.log(b.clamp_min(1e-12))), 0).sum(-1)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


class _StopForward(Exception):
    """Raised after the last captured layer: the layers above it cannot change what was captured."""


class _Recorder:
    """Forward hooks that reduce each layer's attention as the pass runs."""

    def __init__(self, teacher: Teacher, layers: list[int], heads: list[int]):
        self.layers, self.heads = layers, heads
        self.last = max(layers)
        self.out: dict[int, dict] = {}
        self.spans = None
        self.handles = [teacher.attention_modules()[i].register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, layer: int):
        import torch

        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise MyceliumError("attention weights not returned; the teacher must use eager attention")
            p0, p1, s0, s1 = self.spans
            w = weights[0, self.heads].float()  # [head, query, key]
            gen = w[:, s0:s1, :]  # [head, sol, key]
            attn = gen[:, :, p0:p1]  # [head, sol, prob]
            mass = torch.stack([gen[:, :, :p0].sum(-1) + gen[:, :, p1:s0].sum(-1), attn.sum(-1),
                                gen[:, :, s0:].sum(-1)], -1)  # [head, sol, 3]
            read = w[:, p0:p1, p0:p1]  # [head, prob, prob], causal
            rows = read / read.sum(-1, keepdim=True).clamp_min(1e-12)
            jsd = _jsd_rows(rows[:, 1:], rows[:, :-1]).mean(-1) if rows.shape[1] > 1 else torch.zeros(len(self.heads))
            self.out[layer] = {"attn": attn.half(), "mass": mass.half(), "read_argmax": read.argmax(-1).short(),
                               "read_sink": w[:, p0:p1, 0].mean(-1), "read_jsd": jsd}
            if layer == self.last:
                raise _StopForward

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def capture(teacher: Teacher, question: str, solution: str, layers: list[int] | None = None,
            heads: list[int] | None = None, problem_id: str = "") -> Trace:
    """One teacher-forced pass over question + solution, reduced to a Trace."""
    import torch

    if not solution.strip():
        raise MyceliumError(f"{problem_id or 'problem'}: empty solution")
    layers = list(range(teacher.num_layers)) if layers is None else list(layers)
    heads = list(range(teacher.num_heads)) if heads is None else list(heads)
    chat = teacher.format(question, solution)
    enc = teacher.tokenizer(chat.text, return_offsets_mapping=True, add_special_tokens=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int32)  # [T, 2] into chat.text
    p0, p1 = _token_range(offsets, *chat.problem_chars)
    s0, s1 = _token_range(offsets, *chat.solution_chars)
    limit = getattr(teacher.model.config, "max_position_embeddings", None)
    if limit and len(ids) > limit:
        raise MyceliumError(f"{problem_id}: {len(ids)} tokens, over the teacher's {limit}")

    rec = _Recorder(teacher, layers, heads)
    rec.spans = (p0, p1, s0, s1)
    try:
        with torch.inference_mode():
            teacher.model.base_model(input_ids=torch.from_numpy(ids).long()[None].to(teacher.device))
    except _StopForward:
        pass
    finally:
        rec.remove()

    def stack(key):  # [layer, ...]
        return torch.stack([rec.out[i][key] for i in layers]).cpu().numpy()

    def rel(span, base, length):
        off = span - base
        return np.clip(off, 0, length).astype(np.int32)

    return Trace(
        id=problem_id, question=question, solution=solution, layers=layers, heads=heads,
        problem_ids=ids[p0:p1], problem_offsets=rel(offsets[p0:p1], chat.problem_chars[0], len(question)),
        solution_ids=ids[s0:s1], solution_offsets=rel(offsets[s0:s1], chat.solution_chars[0], len(solution)),
        attn=stack("attn"), mass=stack("mass"), read_argmax=stack("read_argmax"),
        read_sink=stack("read_sink").astype(np.float32), read_jsd=stack("read_jsd").astype(np.float32),
        meta={"tokens": int(len(ids)), "problem_tokens": [p0, p1], "solution_tokens": [s0, s1]},
    )


def contrast(attn: np.ndarray) -> np.ndarray:
    """Each solution row minus the problem's mean solution→problem profile: [..., sol, prob].

    Sinks (the first token, fillers) take a large share of every row whatever
    the content; subtracting the average row leaves what this row adds.
    """
    a = attn.astype(np.float32)
    return a - a.mean(axis=-2, keepdims=True)


def lines(trace: Trace) -> list[tuple[str, int, int]]:
    """(text, first token, end token) for each non-empty line of the solution."""
    out, start = [], 0
    for line in trace.solution.split("\n"):
        end = start + len(line)
        toks = np.nonzero((trace.solution_offsets[:, 0] >= start) & (trace.solution_offsets[:, 0] < end))[0]
        if line.strip() and len(toks):
            out.append((line, int(toks[0]), int(toks[-1]) + 1))
        start = end + 1
    return out


def summary(trace: Trace, top: int = 5) -> str:
    """Tokens, phases, and the problem tokens each solution line attends to most (contrast, all heads)."""
    c = contrast(trace.attn).mean(axis=(0, 1))  # [sol, prob]
    words = trace.tokens(part="problem")
    out = [f"{trace.id}: {trace.meta.get('tokens', '?')} tokens; problem {len(trace.problem_ids)} tokens, "
           f"solution {len(trace.solution_ids)} tokens; {len(trace.layers)} layers x {len(trace.heads)} heads",
           f"mass per solution token (mean over layers, heads): prompt {trace.mass[..., 0].astype(float).mean():.2f}, "
           f"problem {trace.mass[..., 1].astype(float).mean():.2f}, solution {trace.mass[..., 2].astype(float).mean():.2f}",
           ""]
    for text, a, b in lines(trace):
        score = c[a:b].sum(0)  # [prob]
        best = np.argsort(-score)[:top]
        out.append(f"{text.strip()[:70]}")
        out.append("    -> " + "  ".join(f"{words[j].strip() or repr(words[j])}({score[j]:+.2f})" for j in best))
    return "\n".join(out)
