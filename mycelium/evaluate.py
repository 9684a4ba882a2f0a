"""Evaluation: accuracy, oracle@k, error attribution and speed, with a page per problem.

    $ mycelium eval --dataset gsm8k --split test --model runs/main/models/minilm --out runs/main/eval
    gsm8k/test   1319 problems  accuracy 9.9%  oracle@k 21.4% (diagnostic)  131.2 problems/s
    wrote runs/main/eval/gsm8k_test.jsonl and runs/main/eval/index.html

The solver gets the question text only (`Solver.solve_batch(questions)`);
gold answers and reference graphs are read afterwards, by this module, to
grade and to explain. Two figures use gold and are diagnostics, not results:
oracle@k (gold among the answers of the candidates the solver ranked) and
the attribution of each wrong answer to the first component that went wrong,
in pipeline order:

| component | wrong when (against the reference graph, where the dataset has one) |
|---|---|
| refused  | the solver gave no answer before reading (not English, too long, …) |
| span     | a problem quantity the reference uses lies outside every span (the regions C1 chose) and the graph does not use it |
| grouping | the number of steps differs from the reference's |
| operation| the multiset of operations differs |
| operand  | the multiset of problem quantities and constants used differs |
| wiring   | which steps feed which differs |
| goal     | the graph computed gold at some step but C6 chose another |
| executor | no candidate executed |
| other    | all of the above agree with the reference, yet the answer is wrong |

Without a reference graph only refused, executor and goal can be told apart;
the rest is "unattributed".

Answers are appended to a resume file as they are graded (`mycelium eval`
keeps them in `<out>/partial/` until the report is written), so a killed
evaluation goes on where it stopped when started again with the same model
and settings. The solver hands answers over in question order a window at a
time (`SolverConfig.window` batches), so a kill loses at most that window.
"""

from __future__ import annotations

import html
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .answer import answers_match
from .data import Problem, dataset_spec
from .executor import execute
from .graph import Graph, Source, render
from .reference import AnnotationError, reference_graph
from .store import atomic_write
from .viewer import problem_html

COMPONENTS = ["span", "grouping", "operation", "operand", "wiring", "goal", "executor", "other", "refused",
              "unattributed"]


def _leaves(g: Graph) -> Counter:
    return Counter(str(o.value) for s in g.steps for o in s.operands if o.source is not Source.RESULT)


def _wiring(g: Graph) -> list:
    return [sorted(o.ref for o in s.operands if o.source is Source.RESULT) for s in g.steps]


def attribute(sol, ref: Graph | None, gold) -> str:
    """The first component that went wrong for a wrong answer (a diagnostic: it reads the reference)."""
    if sol.graph is None:
        return "refused" if sol.reason and "candidate" not in sol.reason else "executor"
    if sol.answer is None:
        return "executor"
    values = execute(sol.graph).values
    hit_elsewhere = any(answers_match(v, gold) for v in values)
    if ref is None:
        return "goal" if hit_elsewhere else "unattributed"
    used = {o.ref for s in ref.steps for o in s.operands if o.source is Source.QUANTITY and o.ref is not None}
    spans = sol.spans
    picked = {o.ref for s in sol.graph.steps for o in s.operands if o.source is Source.QUANTITY}
    for k in used - picked:  # C3 may point outside the regions: a quantity it found was not lost by C1
        q = ref.quantities[k]
        if not any(a <= q.start and q.end <= b for a, b in spans):
            return "span"
    if len(sol.graph.steps) != len(ref.steps):
        return "grouping"
    if Counter(s.op for s in sol.graph.steps) != Counter(s.op for s in ref.steps):
        return "operation"
    if _leaves(sol.graph) != _leaves(ref):
        return "operand"
    if _wiring(sol.graph) != _wiring(ref):
        return "wiring"
    if hit_elsewhere:
        return "goal"
    return "other"


@dataclass
class Result:
    dataset: str
    rows: list[dict]
    seconds: float

    @property
    def accuracy(self) -> float:
        return sum(r["correct"] for r in self.rows) / max(len(self.rows), 1)

    @property
    def oracle(self) -> float:
        return sum(r["oracle"] for r in self.rows) / max(len(self.rows), 1)

    @property
    def rate(self) -> float:
        return len(self.rows) / max(self.seconds, 1e-9)

    def attribution(self) -> Counter:
        return Counter(r["attribution"] for r in self.rows if not r["correct"])

    def summary(self) -> dict:
        wrong = max(len(self.rows) - sum(r["correct"] for r in self.rows), 1)
        return {"dataset": self.dataset, "problems": len(self.rows), "accuracy": self.accuracy,
                "oracle_at_k (diagnostic)": self.oracle, "problems_per_s": self.rate, "seconds": self.seconds,
                "attribution (share of wrong answers)": {c: n / wrong for c, n in self.attribution().most_common()}}


def evaluate(solver, problems: list[Problem], name: str, progress: bool = True, resume: Path | None = None,
             fingerprint: dict | None = None) -> Result:
    """Solve every problem from its question alone, then grade and attribute.

    With `resume`, each graded row is appended to that file as soon as it is
    ready, under a first line holding `fingerprint` (what made the answers: the
    model, the scorer, the solver's settings). Started again after a kill with
    the same fingerprint, it solves only the problems the file lacks; with
    another fingerprint it starts over.
    """
    done, seconds = _resumable(resume, fingerprint) if resume else ({}, {})
    todo = [p for p in problems if p.id not in done or done[p.id].get("question") != p.question]
    if resume and len(todo) < len(problems):
        print(f"eval {name}: resuming, {len(problems) - len(todo)} of {len(problems)} problems already graded in {resume}",
              file=sys.stderr)
    log = _restart_log(resume, fingerprint, done, seconds) if resume else None
    last = time.monotonic()
    try:
        for p, s in zip(todo, solver.solve_each([p.question for p in todo], f"eval {name}", progress)):
            done[p.id] = grade(p, s)
            now = time.monotonic()
            seconds[p.id], last = now - last, now  # batched: most answers come at no extra time after the first
            if log:
                log.write(json.dumps({**done[p.id], "seconds": seconds[p.id]}, ensure_ascii=False) + "\n")
                log.flush()  # a kill loses at most the row being written
    except KeyboardInterrupt:
        if log:
            print(f"\neval {name}: stopped; {len(done)} answers kept in {resume}: the same command goes on from there",
                  file=sys.stderr)
        raise
    finally:
        if log:
            log.close()
    return Result(name, [done[p.id] for p in problems], sum(seconds[p.id] for p in problems))


def grade(p: Problem, s) -> dict:
    """One problem's row: the solver's answer and graph against gold and the reference graph."""
    latex = bool(dataset_spec(p.dataset)["answer"].get("latex"))
    try:
        ref = reference_graph(p)
    except AnnotationError:
        ref = None
    correct = answers_match(s.answer, p.answer, latex)
    return {"id": p.id, "question": p.question, "gold": p.answer,
            "answer": None if s.answer is None else str(s.answer), "correct": correct,
            "oracle": any(answers_match(c["answer"], p.answer, latex) for c in s.candidates),
            "candidates": len(s.candidates), "top_answers": top_answers(s.candidates, p.answer, latex), "reason": s.reason,
            "attribution": None if correct else attribute(s, ref, p.answer),
            "spans": [list(x) for x in s.spans], "score": s.score,
            "graph": s.graph.to_json() if s.graph else None,
            "reference": ref.to_json() if ref else None}


def top_answers(candidates: list[dict], gold, latex: bool = False, k: int = 5) -> list[dict]:
    """The k answers with the most softmax mass over the executed candidates' scores (how the solver picks
    when it has a learned scorer), each with its share, its candidate count and whether it is gold (diagnostic)."""
    mass: dict = {}
    for c in candidates:
        if c.get("ok") and c.get("answer") is not None and math.isfinite(c["score"]):
            n, m = mass.get(c["answer"], (0, -math.inf))
            mass[c["answer"]] = (n + 1, float(np.logaddexp(m, c["score"])))
    if not mass:
        return []
    total = float(np.logaddexp.reduce([m for _, m in mass.values()]))
    best = sorted(mass.items(), key=lambda kv: -kv[1][1])[:k]
    return [{"answer": str(a), "share": math.exp(m - total), "candidates": n, "gold": answers_match(a, gold, latex)}
            for a, (n, m) in best]


def _resumable(path: Path, fingerprint: dict | None) -> tuple[dict, dict]:
    """Rows (and their seconds) by problem id from an earlier, killed run with the same fingerprint."""
    if not path.is_file():
        return {}, {}
    rows, seconds = {}, {}
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                row = None
            if i == 0 and row != {"fingerprint": json.loads(json.dumps(fingerprint))}:
                return {}, {}  # made by another model or other settings (or not a resume file at all)
            if i > 0 and isinstance(row, dict) and "id" in row:
                seconds[row["id"]] = row.pop("seconds", 0.0)
                rows[row["id"]] = row
    return rows, seconds


def _restart_log(path: Path, fingerprint: dict | None, done: dict, seconds: dict):
    """The resume file rewritten whole (header and the rows kept, no cut line), then open to append."""
    lines = [json.dumps({"fingerprint": fingerprint})] + [
        json.dumps({**row, "seconds": seconds[i]}, ensure_ascii=False) for i, row in done.items()]
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return open(path, "a", encoding="utf-8")


def table(results: list[Result]) -> str:
    comps = [c for c in COMPONENTS if any(r.attribution()[c] for r in results)]
    head = f"{'dataset':<18}{'n':>6}{'acc %':>8}{'oracle@k %':>12}{'prob/s':>9}   " + "".join(f"{c[:9]:>10}" for c in comps)
    lines = [head, "-" * len(head)]
    for r in results:
        wrong = max(sum(r.attribution().values()), 1)
        lines.append(f"{r.dataset:<18}{len(r.rows):>6}{100 * r.accuracy:>8.1f}{100 * r.oracle:>12.1f}{r.rate:>9.1f}   "
                     + "".join(f"{100 * r.attribution()[c] / wrong:>10.1f}" for c in comps))
    lines.append("oracle@k: gold among the ranked candidates' answers (diagnostic, reads gold); "
                 "attribution columns: % of wrong answers (diagnostic, reads the reference graph)")
    return "\n".join(lines)


_STYLE = """body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; line-height: 1.55; color: #222; }
.box { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em; background: #fafafa; }
.region { border-radius: 3px; padding: 1px 0; } pre { white-space: pre-wrap; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
.ok { color: #2e7d32; } .bad { color: #c62828; }
.bar, .seg { display: inline-block; height: 0.9em; vertical-align: middle; }
.stack { white-space: nowrap; } .key { width: 0.9em; margin: 0 0.2em 0 0.8em; } .legend { font-size: 0.9em; }"""


def _page(row: dict) -> str:
    g = Graph.from_json(row["graph"]) if row["graph"] else None
    found = [{"step": k, "region": st.span} for k, st in enumerate(g.steps)] if g else []
    graph_text = render(g, execute(g).values) if g else "(no graph)"
    ref = render(Graph.from_json(row["reference"])) if row["reference"] else "(no reference graph in this dataset)"
    verdict = "correct" if row["correct"] else f"wrong — first wrong component: {row['attribution']}"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(row['id'])}</title>
<style>{_STYLE}</style></head><body>
<p><a href="../index.html">← all problems</a></p>
<h1 id="title">{html.escape(row['id'])}</h1>
<p id="verdict" class="{'ok' if row['correct'] else 'bad'}">answer {html.escape(str(row['answer']))}, gold {html.escape(str(row['gold']))}: {html.escape(verdict)}
{('<br>reason: ' + html.escape(row['reason'])) if row['reason'] else ''}</p>
<h2>Problem, with each predicted step's span</h2><div class="box" id="problem">{problem_html(row['question'], found)}</div>
<h2>Predicted graph</h2><pre class="box" id="graph">{html.escape(graph_text)}</pre>
<h2>Reference graph (from the dataset's solution; never shown to the solver)</h2><pre class="box">{html.escape(ref)}</pre>
<h2>The answers the solver weighed</h2>
<p>{row['candidates']} candidates ranked; gold among them: {'yes' if row['oracle'] else 'no'} (diagnostic).
Each answer's share is its part of the ranking's softmax mass, summed over the candidates that reach it.</p>
{_answers_table(row.get('top_answers') or [])}
</body></html>"""


def _bar(share: float, colour: str = "#5c8dd6") -> str:
    return f'<span class="bar" style="width:{200 * share:.0f}px;background:{colour}"></span>'


def _answers_table(top: list[dict]) -> str:
    if not top:
        return "<p>(no candidate executed)</p>"
    rows = "".join(f'<tr class="{"ok" if a["gold"] else ""}"><td>{html.escape(a["answer"])}</td>'
                   f'<td>{_bar(a["share"])} {100 * a["share"]:.1f}%</td><td>{a["candidates"]}</td>'
                   f'<td>{"gold" if a["gold"] else ""}</td></tr>' for a in top)
    return (f'<table id="answers"><tr><th>answer</th><th>share</th><th>candidates</th>'
            f'<th>gold (diagnostic)</th></tr>{rows}</table>')


# One colour per component, the same on every report: the eye learns them.
_COMPONENT_COLOURS = dict(zip(COMPONENTS, ["#e6a23c", "#d9534f", "#8e6cc0", "#4aa3df", "#5cb85c", "#20a39e",
                                           "#555555", "#999999", "#c0c0c0", "#dddddd"]))


def _summary_html(results: list[Result]) -> str:
    """Accuracy per dataset, and its wrong answers as one bar split by first wrong component."""
    rows = []
    for r in results:
        wrong = max(sum(r.attribution().values()), 1)
        parts = "".join(f'<span class="seg" style="width:{300 * n / wrong:.1f}px;background:{_COMPONENT_COLOURS[c]}" '
                        f'title="{c}: {100 * n / wrong:.1f}%"></span>' for c, n in r.attribution().most_common())
        rows.append(f"<tr><td>{html.escape(r.dataset)}</td><td>{len(r.rows)}</td><td><b>{100 * r.accuracy:.1f}%</b></td>"
                    f"<td>{100 * r.oracle:.1f}%</td><td>{r.rate:.1f}</td><td class=\"stack\">{parts}</td></tr>")
    used = [c for c in COMPONENTS if any(r.attribution()[c] for r in results)]
    legend = " ".join(f'<span class="seg key" style="background:{_COMPONENT_COLOURS[c]}"></span>{c}' for c in used)
    return (f'<table id="summary"><tr><th>dataset</th><th>n</th><th>accuracy</th><th>oracle@k (diagnostic)</th>'
            f'<th>problems/s</th><th>wrong answers by first wrong component (diagnostic)</th></tr>{"".join(rows)}</table>'
            f'<p class="legend">{legend}</p>')


def _slug(problem_id: str) -> str:
    return problem_id.replace("/", "_")


def _select(name: str, values: list[str]) -> str:
    options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
    return f'<label>{name} <select id="{name}"><option value="">all</option>{options}</select></label>'


# Thousands of rows: a person wants "the grouping errors on ASDiv", not a scroll.
_FILTER_JS = """
const rows = [...document.querySelectorAll('#problems tr[data-set]')];
function filter() {
  const set = document.getElementById('set').value, verdict = document.getElementById('verdict').value;
  let n = 0;
  for (const r of rows) {
    const show = (!set || r.dataset.set === set) && (!verdict || r.dataset.verdict === verdict);
    r.style.display = show ? '' : 'none'; n += show;
  }
  document.getElementById('shown').textContent = n + ' of ' + rows.length + ' shown';
}
document.getElementById('set').onchange = document.getElementById('verdict').onchange = filter;
// index.html#verdict=grouping&set=asdiv/dev opens filtered: a link to a set of errors
for (const [k, v] of new URLSearchParams(location.hash.slice(1))) {
  const el = document.getElementById(k);
  if (el) el.value = v;
}
filter();
"""


def write(results: list[Result], out: Path) -> Path:
    """Per-problem JSON Lines, a summary, and an HTML report (index + one page per problem)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pages").mkdir(exist_ok=True)
    index_rows = []
    for r in results:
        atomic_write(out / f"{_slug(r.dataset)}.jsonl",
                     "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in r.rows).encode())
        for x in r.rows:
            atomic_write(out / "pages" / f"{_slug(x['id'])}.html", _page(x).encode())
            verdict = "correct" if x["correct"] else str(x["attribution"])
            index_rows.append(
                f'<tr class="{"ok" if x["correct"] else "bad"}" data-set="{html.escape(r.dataset)}" '
                f'data-verdict="{html.escape(verdict)}"><td><a href="pages/{_slug(x["id"])}.html">{html.escape(x["id"])}</a></td>'
                f'<td>{html.escape(str(x["answer"]))}</td><td>{html.escape(str(x["gold"]))}</td>'
                f'<td>{"✓" if x["correct"] else html.escape(str(x["attribution"]))}</td></tr>')
    summary = [r.summary() for r in results]
    atomic_write(out / "summary.json", json.dumps(summary, indent=1).encode())
    index = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Mycelium evaluation</title>
<style>{_STYLE}</style></head><body><h1 id="title">Mycelium evaluation</h1>
{_summary_html(results)}
<details><summary>as text</summary><pre class="box">{html.escape(table(results))}</pre></details>
<h2>Problems</h2>
<p id="filters">{_select("set", [r.dataset for r in results])} {_select("verdict", ["correct", *COMPONENTS])}
<span id="shown"></span></p>
<table id="problems"><tr><th>problem</th><th>answer</th><th>gold</th><th>verdict / first wrong component</th></tr>
{''.join(index_rows)}</table>
<script>{_FILTER_JS}</script></body></html>"""
    atomic_write(out / "index.html", index.encode())
    return out / "index.html"
