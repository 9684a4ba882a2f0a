"""How good are the attention signals? Measured against GSM8K's gold structure, with baselines.

    $ mycelium signals report --run runs/default --select 50
    provenance (held-out 150 problems, 611 operand tokens)        all   once  repeat  >=10
      contrast, best 3 heads (chosen on 50 others)                0.88  0.90  0.71   0.89
      raw mean over all heads                                     0.02  ...
      baseline: first mention                                     0.36  ...

Gold comes from the reference solution, never from the signals:
- operand events: each number the solution writes that is also a quantity in
  the question; the row that *predicts* it (the token before) should attend to
  a mention with that value. Predictions are per mention (attention summed over
  the mention's tokens, argmax); "once"/"repeat" split by how many mentions
  carry the value.
- step boundaries: the first token of each solution line after the first.
- IAF-clause hits: a step's clause-expanded IAF region contains a mention of
  one of the step's operands.
Heads are chosen on the `select` problems and every reported figure comes from
the others.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import savgol_filter

from .clauses import parse, region, to_tokens
from .numbers import Quantity, find_quantities, split_division
from .signals import boundaries, boundary_f1, f1, iaf, js_divergence, jsd_curve, line_starts, normalise
from .trace import Trace, contrast, lines

CATEGORIES = ("all", "once", "repeat", ">=10")


def solution_numbers(text: str) -> list[Quantity]:
    """Numbers a solution writes; "48/2" is two numbers there, not the fraction 24."""
    out = []
    for q in find_quantities(text):
        if not q.word:
            out.extend(split_division(q) or [q])
    return out


@dataclass
class Example:
    """One trace with its gold structure, ready for scoring."""

    trace: Trace
    mentions: list[Quantity]
    mention_matrix: np.ndarray  # [prob, mention] 1 where a token belongs to a mention
    events: list[dict] = field(default_factory=list)  # row, value, correct mentions, categories
    gold_boundaries: list[int] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # line token range + acceptable mention indices


def prepare(trace: Trace) -> Example:
    mentions = find_quantities(trace.question)
    M = np.zeros((len(trace.problem_ids), len(mentions)), dtype=np.float32)
    for k, q in enumerate(mentions):
        M[to_tokens((q.start, q.end), trace.problem_offsets), k] = 1
    ex = Example(trace, mentions, M, gold_boundaries=line_starts(trace))
    for n in solution_numbers(trace.solution):
        good = [k for k, q in enumerate(mentions) if n.value in q.values() and M[:, k].any()]
        toks = to_tokens((n.start, n.end), trace.solution_offsets)
        if not good or not toks or toks[0] == 0:
            continue
        cats = ["all", "once" if len(good) == 1 else "repeat"] + ([">=10"] if abs(n.value) >= 10 else [])
        ex.events.append({"row": toks[0] - 1, "token": toks[0], "good": good, "cats": cats})
    for _, a, b in lines(trace):
        good = sorted({k for e in ex.events if a <= e["token"] < b for k in e["good"]})
        if good:
            ex.steps.append({"start": a, "end": b, "good": good})
    return ex


def mention_scores(attn: np.ndarray, ex: Example, rows: list[int]) -> np.ndarray:
    """Attention summed per mention at the given rows: [..., len(rows), mention]."""
    return attn[..., rows, :] @ ex.mention_matrix


class Tally:
    def __init__(self, shape=()):
        self.hit = {c: np.zeros(shape) for c in CATEGORIES}
        self.n = {c: 0 for c in CATEGORIES}

    def add(self, correct, cats):
        for c in cats:
            self.hit[c] = self.hit[c] + correct
            self.n[c] += 1

    def rate(self, c="all"):
        return self.hit[c] / self.n[c] if self.n[c] else self.hit[c] * np.nan

    def row(self) -> dict:
        return {c: (float(self.rate(c)) if np.ndim(self.rate(c)) == 0 else None) for c in CATEGORIES} | {
            "n": self.n["all"]}


def provenance_per_head(examples: list[Example], use_contrast: bool) -> np.ndarray:
    """Accuracy of every (layer, head) alone: [layer, head]."""
    tally = None
    for ex in examples:
        if not ex.events:
            continue
        a = ex.trace.attn.astype(np.float32)
        a = contrast(a) if use_contrast else a
        scores = mention_scores(a, ex, [e["row"] for e in ex.events])  # [layer, head, event, mention]
        pick = scores.argmax(-1)
        tally = tally or Tally(pick.shape[:2])
        for i, e in enumerate(ex.events):
            tally.add(np.isin(pick[:, :, i], e["good"]).astype(float), ["all"])
    return tally.rate() if tally else np.zeros((0, 0))


def provenance(examples: list[Example], heads, use_contrast: bool) -> Tally:
    """Accuracy of the mean over `heads` ([(layer, head)] or None for all heads)."""
    t = Tally()
    for ex in examples:
        if not ex.events:
            continue
        a = ex.trace.attn.astype(np.float32)
        a = contrast(a) if use_contrast else a
        a = a.mean(axis=(0, 1)) if heads is None else np.mean([a[l, h] for l, h in heads], axis=0)
        pick = mention_scores(a, ex, [e["row"] for e in ex.events]).argmax(-1)
        for i, e in enumerate(ex.events):
            t.add(float(pick[i] in e["good"]), e["cats"])
    return t


def provenance_baselines(examples: list[Example]) -> dict:
    first, rand = Tally(), Tally()
    for ex in examples:
        present = [k for k in range(len(ex.mentions)) if ex.mention_matrix[:, k].any()]
        for e in ex.events:
            first.add(float(present[0] in e["good"]), e["cats"])
            rand.add(len(e["good"]) / len(present), e["cats"])
    return {"first mention": first.row(), "random mention": rand.row()}


def head_curves(trace: Trace, use_contrast: bool) -> np.ndarray:
    """Smoothed JSD curve of every head: [layer, head, sol]."""
    a = trace.attn.astype(np.float32)
    a = contrast(a) if use_contrast else a
    rows = normalise(a)
    jsd = np.concatenate([np.zeros(rows.shape[:2] + (1,)), js_divergence(rows[..., :-1, :], rows[..., 1:, :])], -1)
    return savgol_filter(jsd, 5, 2, axis=-1) if jsd.shape[-1] >= 5 else jsd


def boundary_per_head(examples: list[Example], use_contrast: bool, rate: float) -> np.ndarray:
    """Boundary F1 of every (layer, head) alone with the top-k rule: [layer, head]."""
    counts = None
    for ex in examples:
        curves = head_curves(ex.trace, use_contrast)
        if counts is None:
            counts = np.zeros(curves.shape[:2] + (3,))
        for l in range(curves.shape[0]):
            for h in range(curves.shape[1]):
                counts[l, h] += boundary_f1(boundaries(curves[l, h], "topk", rate), ex.gold_boundaries)
    tp, p, g = counts[..., 0], counts[..., 1], counts[..., 2]
    prec, rec = tp / np.maximum(p, 1), tp / np.maximum(g, 1)
    return 2 * prec * rec / np.maximum(prec + rec, 1e-9)


def boundary_score(examples: list[Example], heads, use_contrast: bool, rule: str, rate: float) -> dict:
    total = np.zeros(3)
    for ex in examples:
        a = ex.trace.attn.astype(np.float32)
        a = contrast(a) if use_contrast else a
        a = a.mean(axis=(0, 1)) if heads is None else np.mean([a[l, h] for l, h in heads], axis=0)
        total += boundary_f1(boundaries(jsd_curve(a), rule, rate), ex.gold_boundaries)
    return f1(*total.astype(int)) | {"predicted": int(total[1]), "gold": int(total[2])}


def random_boundaries(examples: list[Example], rate: float, seed: int = 0, draws: int = 20) -> dict:
    rng = np.random.default_rng(seed)
    total = np.zeros(3)
    for ex in examples:
        n = len(ex.trace.solution_ids)
        k = max(1, round(rate * n))
        for _ in range(draws):
            total += boundary_f1(sorted(rng.choice(n, size=min(k, n), replace=False).tolist()), ex.gold_boundaries)
    return f1(*(total / draws).round().astype(int))


def clause_hits(examples: list[Example], heads, use_contrast: bool) -> dict:
    """Share of steps whose IAF clause region contains one of the step's operand mentions."""
    hit = rand = longest = n = 0
    for ex in examples:
        if not ex.steps:
            continue
        clauses = parse(ex.trace.question)
        a = ex.trace.attn.astype(np.float32)
        a = contrast(a) if use_contrast else a
        a = np.mean([a[l, h] for l, h in heads], axis=0) if heads else a.mean(axis=(0, 1))
        spans = [(ex.mentions[k].start, ex.mentions[k].end) for k in range(len(ex.mentions))]

        def contains(r, good):
            return r is not None and any(r[0] <= spans[k][0] and spans[k][1] <= r[1] for k in good)

        long_span = max(clauses.spans, key=lambda s: s[1] - s[0])
        for st in ex.steps:
            w = iaf(a, st["start"], st["end"])
            weights = {int(ex.trace.problem_offsets[j][0]): float(w[j]) for j in np.argsort(-w)[:8]}
            hit += contains(region(clauses, weights), st["good"])
            rand += np.mean([contains(s, st["good"]) for s in clauses.spans])
            longest += contains(long_span, st["good"])
            n += 1
    return {"IAF clause region": hit / max(n, 1), "baseline: random clause": rand / max(n, 1),
            "baseline: longest clause": longest / max(n, 1), "steps": n}


def _token_kind(text: str) -> str:
    core = text.strip()
    if not core:
        return "artefact"  # whitespace-only pieces, e.g. SmolLM's lone ' ' before digits
    if all(unicodedata.category(ch).startswith("P") for ch in core):
        return "boundary"
    if any(ch.isdigit() for ch in core):
        return "number"
    return "word"


def phase_table(examples: list[Example], prov_heads: np.ndarray, bound_heads: np.ndarray) -> dict:
    """Reading vs generation: where attention peaks land, mean JSD, best vs worst head."""
    shares = {"reading": {}, "generation": {}}
    counts = {"reading": {}, "generation": {}}
    jsd = {"reading": [], "generation": []}
    for ex in examples:
        t = ex.trace
        kinds = np.array([_token_kind(s) for s in t.tokens(part="problem")])
        in_mention = ex.mention_matrix.any(1)
        kinds = np.where(in_mention & (kinds != "artefact"), "number", np.where(kinds == "number", "word", kinds))
        for phase, peaks in (("reading", t.read_argmax), ("generation", t.attn.argmax(-1))):
            for k in ("number", "boundary", "artefact"):
                counts[phase][k] = counts[phase].get(k, 0) + int((kinds[peaks] == k).sum())
            counts[phase]["total"] = counts[phase].get("total", 0) + peaks.size
        jsd["reading"].append(float(t.read_jsd.mean()))
        rows = normalise(t.attn.astype(np.float32))
        jsd["generation"].append(float(js_divergence(rows[..., :-1, :], rows[..., 1:, :]).mean()))
    for phase in shares:
        c = counts[phase]
        label = {"number": "peaks at numbers", "boundary": "peaks at boundary tokens (punctuation)",
                 "artefact": "peaks at tokenizer artefacts"}
        shares[phase] = {label[k]: c.get(k, 0) / max(c.get("total", 1), 1) for k in label}
        shares[phase]["mean JSD (nats)"] = float(np.mean(jsd[phase])) if jsd[phase] else None
    shares["generation"]["provenance, per head on select: best / worst"] = [float(prov_heads.max()), float(prov_heads.min())]
    shares["generation"]["boundary F1, per head on select: best / worst"] = [float(np.nanmax(bound_heads)), float(np.nanmin(bound_heads))]
    return shares


def top_heads(score: np.ndarray, k: int) -> list[tuple[int, int]]:
    flat = np.argsort(-np.nan_to_num(score, nan=-1).ravel())[:k]
    return [tuple(int(x) for x in np.unravel_index(i, score.shape)) for i in flat]


def report(traces: list[Trace], select: int = 50, k: int = 3) -> dict:
    """The full quality report: heads chosen on the first `select` traces, figures on the rest."""
    examples = [prepare(t) for t in sorted(traces, key=lambda t: t.id)]
    if len(examples) < 2:
        raise ValueError("the report needs at least 2 traced problems")
    select = min(select, len(examples) // 2) or 1
    chosen, held = examples[:select], examples[select:]
    layers, heads = chosen[0].trace.layers, chosen[0].trace.heads

    prov_c = provenance_per_head(chosen, True)
    prov_r = provenance_per_head(chosen, False)
    best_c, best_r = top_heads(prov_c, k), top_heads(prov_r, k)
    gold_rate = sum(len(e.gold_boundaries) for e in chosen) / max(sum(len(e.trace.solution_ids) for e in chosen), 1)
    bound_c = boundary_per_head(chosen, True, gold_rate)
    bound_r = boundary_per_head(chosen, False, gold_rate)
    bhead_c, bhead_r = top_heads(bound_c, 1), top_heads(bound_r, 1)
    boundary_contrast = bool(np.nanmax(bound_c) >= np.nanmax(bound_r))  # decided on select, like the heads
    layer0 = [(0, h) for h in range(len(heads))]

    name = lambda hs: [f"L{layers[l]}H{heads[h]}" for l, h in hs]  # noqa: E731
    out = {
        "problems": {"select": len(chosen), "held_out": len(held)},
        "heads": {"provenance (contrast)": name(best_c), "provenance (raw)": name(best_r),
                  "boundary (contrast)": name(bhead_c), "boundary (raw)": name(bhead_r)},
        "heads_index": {"provenance": best_c, "provenance_contrast": True,
                        "boundary": bhead_c if boundary_contrast else bhead_r, "boundary_contrast": boundary_contrast},
        "provenance": {
            f"contrast, best {k} heads": provenance(held, best_c, True).row(),
            f"raw, best {k} heads": provenance(held, best_r, False).row(),
            "contrast, mean over all heads": provenance(held, None, True).row(),
            "raw, mean over all heads": provenance(held, None, False).row(),
            **{f"baseline: {n}": r for n, r in provenance_baselines(held).items()},
        },
        "boundaries": {
            "contrast, best head, top-k": boundary_score(held, bhead_c, True, "topk", gold_rate),
            "raw, best head, top-k": boundary_score(held, bhead_r, False, "topk", gold_rate),
            "raw, layer 0 mean, top-k": boundary_score(held, layer0, False, "topk", gold_rate),
            "raw, all heads, default peaks": boundary_score(held, None, False, "peaks", gold_rate),
            "contrast, all heads, default peaks": boundary_score(held, None, True, "peaks", gold_rate),
            "baseline: random, same count as top-k": random_boundaries(held, gold_rate),
            "top-k rate (boundaries per token, from select)": gold_rate,
        },
        "clauses": clause_hits(held, best_c, True),
        "phases": phase_table(held, prov_c, np.fmax(bound_c, bound_r)),
    }
    return out


def table(rep: dict) -> str:
    """The report as aligned text."""
    pct = lambda x: "  -  " if x is None else f"{100 * x:5.1f}"  # noqa: E731
    n = rep["problems"]
    lines_ = [f"heads chosen on {n['select']} problems; every figure below on {n['held_out']} held-out problems", ""]
    prov = rep["provenance"]
    lines_.append(f"{'provenance accuracy (%)':<44}{'all':>7}{'once':>7}{'repeat':>7}{'>=10':>7}{'n':>7}")
    for name, r in prov.items():
        lines_.append(f"  {name:<42}" + "".join(f"{pct(r[c]):>7}" for c in CATEGORIES) + f"{r['n']:>7}")
    lines_ += ["", f"{'step boundaries, ±2 tokens (%)':<44}{'P':>7}{'R':>7}{'F1':>7}"]
    for name, r in rep["boundaries"].items():
        if isinstance(r, dict):
            lines_.append(f"  {name:<42}{pct(r['precision']):>7}{pct(r['recall']):>7}{pct(r['f1']):>7}")
    c = rep["clauses"]
    lines_ += ["", f"IAF-clause hit rate over {c['steps']} steps (%)"]
    lines_ += [f"  {k:<42}{pct(v):>7}" for k, v in c.items() if k != "steps"]
    lines_ += ["", f"{'reading vs generation phase':<44}{'reading':>10}{'generation':>12}"]
    ph = rep["phases"]
    for k in ph["reading"]:
        r, g = ph["reading"][k], ph["generation"][k]
        fmt = (lambda v: f"{v:.3f}") if "JSD" in k else pct
        lines_.append(f"  {k:<42}{fmt(r):>10}{fmt(g):>12}")
    for k in ("provenance, per head on select: best / worst", "boundary F1, per head on select: best / worst"):
        b, w = ph["generation"][k]
        lines_.append(f"  {k:<42}{'':>10}{pct(b) + ' / ' + pct(w).strip():>12}")
    lines_ += ["", "heads: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in rep["heads"].items())]
    return "\n".join(lines_)
