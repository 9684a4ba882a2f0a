"""Evaluation: error attribution on hand-made wrong graphs, the eval command, and its report in headless Chromium."""

import json
import subprocess
import sys

import pytest
import sympy

from mycelium.data import get
from mycelium.evaluate import attribute
from mycelium.graph import Graph, Op, Operand, Source, Step
from mycelium.numbers import find_quantities
from mycelium.reference import reference_graph
from mycelium.solver import Solution

from .test_viewer import CHROMIUM, FLAGS

Q = "Ann buys 3 pens at 2 dollars and 4 pads at 5 dollars. How much does she spend?"
QS = find_quantities(Q)
EVERYWHERE = [(0, len(Q))]


def q(k):
    return Operand(Source.QUANTITY, QS[k].value, k)


def s(k):
    return Operand(Source.RESULT, sympy.Integer(0), k)


def graph(steps, goal=None):
    return Graph(Q, QS, steps, len(steps) - 1 if goal is None else goal)


REF = graph([Step(Op.MUL, [q(0), q(1)]), Step(Op.MUL, [q(2), q(3)]), Step(Op.ADD, [s(0), s(1)])])  # 6 + 20 = 26


def wrong(g, spans=EVERYWHERE):
    from mycelium.executor import execute

    return Solution(Q, execute(g).answer, g, spans)


def test_attribution_names_the_first_wrong_component():
    gold = "26"
    short = graph([Step(Op.MUL, [q(0), q(1)])])
    assert attribute(wrong(short, spans=[(0, Q.index("4 pads"))]), REF, gold) == "span"  # q2, q3 outside, unused
    # a quantity outside the spans that C3 still pointed at was not lost by C1
    assert attribute(wrong(graph(REF.steps, goal=0), spans=[(0, Q.index("4 pads"))]), REF, gold) == "goal"
    assert attribute(wrong(graph([Step(Op.MUL, [q(0), q(1)])])), REF, gold) == "grouping"
    assert attribute(wrong(graph([Step(Op.MUL, [q(0), q(1)]), Step(Op.ADD, [q(2), q(3)]), Step(Op.ADD, [s(0), s(1)])])),
                     REF, gold) == "operation"
    assert attribute(wrong(graph([Step(Op.MUL, [q(0), q(1)]), Step(Op.MUL, [q(2), q(2)]), Step(Op.ADD, [s(0), s(1)])])),
                     REF, gold) == "operand"
    assert attribute(wrong(graph([Step(Op.MUL, [q(0), q(1)]), Step(Op.MUL, [q(2), q(3)]), Step(Op.ADD, [s(0), s(0)])])),
                     REF, gold) == "wiring"
    # right graph, wrong answer step: 26 was computed, 6 was returned
    assert attribute(wrong(graph(REF.steps, goal=0)), REF, gold) == "goal"
    broken = graph([Step(Op.DIV, [q(0), Operand(Source.CONSTANT, sympy.Integer(0))])])
    assert attribute(Solution(Q, None, broken, EVERYWHERE, reason="no candidate executes (div_zero)"), REF, gold) == "executor"
    assert attribute(Solution(Q, None, None, [], reason="the question does not look like English"), REF, gold) == "refused"
    # with no reference graph, only what needs none is told apart
    assert attribute(wrong(graph(REF.steps, goal=0)), None, gold) == "goal"
    assert attribute(wrong(graph([Step(Op.MUL, [q(0), q(1)])])), None, gold) == "unattributed"


def test_gsm8k_reference_attribution_on_a_real_problem():
    p = get("gsm8k/test/0")  # s0 = sub(16, 3, 4), s1 = mul(s0, 2)
    ref = reference_graph(p)
    g = Graph(p.question, ref.quantities, [Step(Op.ADD, ref.steps[0].operands), ref.steps[1]], 1)
    from mycelium.executor import execute

    sol = Solution(p.question, execute(g).answer, g, [(0, len(p.question))])
    assert attribute(sol, ref, p.answer) == "operation"


def test_top_answers_share_the_ranking_mass_by_answer():
    from math import log

    from mycelium.evaluate import top_answers

    cands = [{"answer": sympy.Integer(6), "score": log(2), "ok": True}, {"answer": sympy.Integer(6), "score": log(1), "ok": True},
             {"answer": sympy.Integer(9), "score": log(1), "ok": True}, {"answer": None, "score": 5.0, "ok": False}]
    top = top_answers(cands, "9")
    assert [(a["answer"], a["candidates"], a["gold"]) for a in top] == [("6", 2, False), ("9", 1, True)]
    assert [round(a["share"], 6) for a in top] == [0.75, 0.25]  # the failed candidate holds no mass
    assert top_answers([], "9") == [] and len(top_answers(cands, "9", k=1)) == 1


class _Solver:
    """Answers gold for every other problem (by its place in GSM8K test) and is killed (KeyboardInterrupt) after `stop`."""

    def __init__(self, stop=None):
        self.stop, self.asked = stop, []

    def solve_each(self, questions, desc="", progress=True):
        from mycelium.data import load

        gold = {p.question: (k, p.answer) for k, p in enumerate(load("gsm8k", "test")[:5])}
        for n, text in enumerate(questions):
            if n == self.stop:
                raise KeyboardInterrupt
            self.asked.append(text)
            k, answer = gold[text]
            yield Solution(text, sympy.Integer(answer) if k % 2 else None, None, [], reason=None if k % 2 else "no")


def test_a_killed_evaluation_resumes_where_it_stopped(tmp_path):
    from mycelium.data import load
    from mycelium.evaluate import evaluate

    problems, log = load("gsm8k", "test")[:5], tmp_path / "partial" / "gsm8k_test.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(_Solver(stop=3), problems, "gsm8k/test", False, log, {"model": "a"})
    kept = log.read_text().splitlines()
    assert json.loads(kept[0]) == {"fingerprint": {"model": "a"}} and len(kept) == 4  # header + 3 graded rows
    log.write_text(log.read_text() + '{"id": "gsm8k/te')  # a kill in the middle of a line
    again = _Solver()
    result = evaluate(again, problems, "gsm8k/test", False, log, {"model": "a"})
    assert again.asked == [p.question for p in problems[3:]]  # only what the killed run had not graded
    assert [r["id"] for r in result.rows] == [p.id for p in problems] and result.seconds > 0
    assert [r["correct"] for r in result.rows] == [False, True, False, True, False]  # order kept across the two runs
    fresh = evaluate(_Solver(), problems, "gsm8k/test", False, tmp_path / "clean.jsonl", {"model": "a"})
    assert result.rows == fresh.rows  # the same report as one uninterrupted run
    other = _Solver()
    evaluate(other, problems, "gsm8k/test", False, log, {"model": "b"})  # another model: nothing is reused
    assert len(other.asked) == 5


@pytest.fixture(scope="module")
def report(trained_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    proc = subprocess.run([sys.executable, "-m", "mycelium.cli", "eval", "--dataset", "gsm8k,asdiv,mawps",
                           "--limit", "6", "--model", str(trained_model_dir), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc.stdout


@pytest.mark.slow
def test_eval_writes_rows_summary_and_pages(report):
    out, stdout = report
    assert "gsm8k/test" in stdout and "asdiv/dev" in stdout and "oracle@k" in stdout and "index.html" in stdout
    rows = [json.loads(x) for x in (out / "gsm8k_test.jsonl").read_text().split("\n") if x]
    assert len(rows) == 6 and {"id", "answer", "gold", "correct", "oracle", "attribution", "graph", "reference"} <= set(rows[0])
    assert all(r["correct"] or r["attribution"] for r in rows)
    assert all(r["reference"] for r in rows)  # GSM8K has reference graphs; ASDiv has them from its formulas
    assert all(0 < sum(a["share"] for a in r["top_answers"]) <= 1 + 1e-9 for r in rows if r["answer"] is not None)
    assert any(json.loads(x)["reference"] for x in (out / "asdiv_dev.jsonl").read_text().split("\n") if x)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["dataset"] for s in summary] == ["gsm8k/test", "asdiv/dev", "mawps/test"]  # ASDiv: its held-out part
    assert (out / "pages" / "gsm8k_test_0.html").is_file() and (out / "pages" / "mawps_test_5.html").is_file()
    assert not (out / "partial").exists()  # the resume files go once the report holds every answer


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by `make test`")
def test_eval_report_renders_in_headless_chromium(report, tmp_path):
    out, _ = report
    user = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user}", "--dump-dom", (out / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'id="summary"' in dom and 'id="problems"' in dom and "pages/gsm8k_test_0.html" in dom
    assert "18 of 18 shown" in dom  # 6 problems from each of 3 sets
    wrong = sum(not json.loads(x)["correct"] for x in (out / "asdiv_dev.jsonl").read_text().split("\n") if x)
    url = (out / "index.html").as_uri() + "#set=asdiv/dev&verdict="
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user}", "--dump-dom", url + "correct"],
                         capture_output=True, text=True, timeout=120).stdout
    assert f"{6 - wrong} of 18 shown" in dom  # a link opens the report filtered
    page = out / "pages" / "gsm8k_test_0.html"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    for element in ('id="verdict"', 'id="problem"', 'id="graph"', "Reference graph", 'id="answers"'):
        assert element in dom, element
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user}", f"--screenshot={shot}", "--window-size=1100,900",
                    page.as_uri()], capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.std() > 0.05  # not blank
