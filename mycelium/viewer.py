"""The span viewer: one self-contained HTML page per traced problem.

    $ mycelium show gsm8k/train/0 --run runs/default
    wrote runs/default/show/gsm8k_train_0.html

The page shows the problem with each step's clause-expanded IAF region in the
step's own colour, the solution with the JSD step boundaries marked (gold line
starts too, dashed, for comparison), and the JSD curve as an embedded PNG. If
`mycelium signals report` has chosen heads for this run, the page reads IAF
through its provenance heads and boundaries through its boundary head;
otherwise through the contrast mean of all heads.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import numpy as np

from .clauses import parse, region
from .signals import boundaries, iaf, jsd_curve, line_starts, read
from .trace import Trace

COLOURS = ["#ffd54f", "#81d4fa", "#a5d6a7", "#f48fb1", "#ce93d8", "#ffab91", "#b0bec5", "#e6ee9c", "#80cbc4", "#bcaaa4"]


@dataclass
class Reading:
    """Which heads to read, and how: chosen by `mycelium signals report`, or defaults."""

    iaf_heads: list | None = None  # None: all heads
    boundary_heads: list | None = None
    boundary_contrast: bool = True
    rate: float = 0.08  # top-k boundaries per solution token

    @classmethod
    def from_report(cls, rep: dict) -> "Reading":
        h = rep["heads_index"]
        return cls([tuple(x) for x in h["provenance"]], [tuple(x) for x in h["boundary"]], h["boundary_contrast"],
                   rep["boundaries"]["top-k rate (boundaries per token, from select)"])


def steps(trace: Trace, reading: Reading | None = None) -> tuple[np.ndarray, list[int], list[dict]]:
    """(JSD curve, predicted boundaries, steps) where each step has its token range, IAF and problem region."""
    r = reading or Reading()
    a = read(trace, r.iaf_heads, contrast=True)  # [sol, prob]
    curve = jsd_curve(read(trace, r.boundary_heads, contrast=r.boundary_contrast))
    rate = r.rate
    cuts = boundaries(curve, "topk", rate)
    clauses = parse(trace.question)
    edges = [0] + cuts + [len(trace.solution_ids)]
    out = []
    for k, (s, e) in enumerate(zip(edges[:-1], edges[1:])):
        if e <= s:
            continue
        w = iaf(a, s, e)
        weights = {int(trace.problem_offsets[j][0]): float(w[j]) for j in np.argsort(-w)[:8]}
        out.append({"step": k, "start": s, "end": e, "region": region(clauses, weights), "iaf": w})
    return curve, cuts, out


def curve_png(curve: np.ndarray, cuts: list[int], gold: list[int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 2.4), dpi=100)
    ax.plot(curve, color="#37474f", lw=1.5, label="JSD (smoothed)")
    for c in cuts:
        ax.axvline(c, color="#e53935", lw=1.2)
    for g in gold:
        ax.axvline(g, color="#1e88e5", lw=1, ls="--")
    ax.set_xlabel("solution token")
    ax.set_ylabel("JSD")
    ax.plot([], [], color="#e53935", label="predicted boundary")
    ax.plot([], [], color="#1e88e5", ls="--", label="gold line start")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def problem_html(question: str, found: list[dict]) -> str:
    owner = [None] * len(question)
    for st in found:
        if st["region"]:
            a, b = st["region"]
            for i in range(a, b):
                owner[i] = owner[i] if owner[i] is not None else st["step"]
    out, i = [], 0
    while i < len(question):
        j = i
        while j < len(question) and owner[j] == owner[i]:
            j += 1
        text = html.escape(question[i:j])
        if owner[i] is None:
            out.append(text)
        else:
            k = owner[i]
            out.append(f'<span class="region" data-step="{k}" style="background:{COLOURS[k % len(COLOURS)]}" '
                       f'title="step {k}">{text}</span>')
        i = j
    return "".join(out)


def _solution_html(trace: Trace, found: list[dict], cuts: list[int], gold: list[int]) -> str:
    out = []
    step_of = {}
    for st in found:
        for t in range(st["start"], st["end"]):
            step_of[t] = st["step"]
    cutset, goldset = set(cuts), set(gold)
    prev_end = 0
    for t, (a, b) in enumerate(trace.solution_offsets):
        out.append(html.escape(trace.solution[prev_end:a]).replace("\n", "<br>"))
        if t in cutset:
            out.append('<span class="boundary" title="JSD boundary">│</span>')
        if t in goldset:
            out.append('<span class="gold" title="gold line start">¦</span>')
        k = step_of.get(t, 0)
        out.append(f'<span class="tok" data-step="{k}" style="border-bottom:3px solid {COLOURS[k % len(COLOURS)]}">'
                   f"{html.escape(trace.solution[a:b]).replace(chr(10), '<br>')}</span>")
        prev_end = b
    out.append(html.escape(trace.solution[prev_end:]).replace("\n", "<br>"))
    return "".join(out)


def page(trace: Trace, reading: Reading | None = None, title: str | None = None) -> str:
    """The whole HTML page as a string."""
    reading = reading or Reading()
    curve, cuts, found = steps(trace, reading)
    gold = line_starts(trace)
    png = base64.b64encode(curve_png(curve, cuts, gold)).decode()
    legend = "".join(
        f'<li><span class="swatch" style="background:{COLOURS[s["step"] % len(COLOURS)]}"></span> step {s["step"]}: '
        f'tokens {s["start"]}–{s["end"]}; region: '
        f'“{html.escape(trace.question[s["region"][0]:s["region"][1]]) if s["region"] else "—"}”</li>'
        for s in found)
    name = lambda hs: ", ".join(f"L{trace.layers[l]}H{trace.heads[h]}" for l, h in hs) if hs else "all heads"  # noqa: E731
    read_with = (f"IAF: contrast, {name(reading.iaf_heads)}; boundaries: "
                 f"{'contrast' if reading.boundary_contrast else 'raw'}, {name(reading.boundary_heads)}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or trace.id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; line-height: 1.6; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.05em; margin-top: 1.6em; }}
.box {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em; background: #fafafa; }}
.region {{ border-radius: 3px; padding: 1px 0; }}
.boundary {{ color: #e53935; font-weight: bold; padding: 0 1px; }}
.gold {{ color: #1e88e5; padding: 0 1px; }}
.swatch {{ display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; vertical-align: middle; }}
ul {{ padding-left: 1.2em; }} img {{ max-width: 100%; }}
</style></head><body>
<h1 id="title">{html.escape(trace.id)}</h1>
<p>Attention read through {html.escape(read_with)}; {len(cuts)} JSD boundaries, {len(gold)} gold line starts.</p>
<h2>Problem, with each step's IAF clause region</h2>
<div class="box" id="problem">{problem_html(trace.question, found)}</div>
<h2>Solution, with JSD boundaries (<span class="boundary">│</span>) and gold line starts (<span class="gold">¦</span>)</h2>
<div class="box" id="solution">{_solution_html(trace, found, cuts, gold)}</div>
<h2>Steps</h2><ul id="steps">{legend}</ul>
<h2>JSD curve</h2><img id="jsd" alt="JSD curve" src="data:image/png;base64,{png}">
</body></html>
"""
