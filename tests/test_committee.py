"""The committee: members' answers pooled by their own normalised scorer mass."""

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sympy

from mycelium.committee import Committee, pool
from mycelium.errors import BadInput
from mycelium.solver import Solution, Solver, SolverConfig


def _member(scored: list[tuple[int, float]], offset: float = 0.0) -> Solution:
    """A member's Solution: its candidates (answer, score) best first, scores shifted by `offset`."""
    cands = [{"answer": sympy.Integer(a), "score": s + offset, "ok": True} for a, s in scored]
    cands.append({"answer": None, "score": -math.inf, "ok": False})  # one that does not execute
    return Solution("q", cands[0]["answer"], None, [(0, 1)], cands[0]["score"], cands)


def test_the_answer_with_the_most_mass_over_the_members_wins_even_if_no_member_put_it_first():
    # Member 0 is split between 1 and 2 and puts 1 first; member 1 puts 3 first and 2 second.
    a = _member([(1, math.log(0.4)), (2, math.log(0.35)), (3, math.log(0.25))])
    b = _member([(3, math.log(0.45)), (2, math.log(0.4)), (1, math.log(0.15))], offset=50.0)  # its scale: no say
    out = pool([a, b])
    assert out.answer == 2 and out.reason is None  # 0.375 against 0.35 (3) and 0.275 (1)
    assert out.score == pytest.approx(math.log(0.375))
    share = {}
    for c in out.candidates:
        if c["ok"]:
            share[c["answer"]] = np.logaddexp(share.get(c["answer"], -math.inf), c["score"])
    assert {k: round(math.exp(v), 6) for k, v in share.items()} == {2: 0.375, 3: 0.35, 1: 0.275}
    assert [c["answer"] for c in out.candidates[:2]] == [2, 2] and {c["model"] for c in out.candidates} == {0, 1}
    assert sum(not c["ok"] for c in out.candidates) == 2  # the candidates that do not execute are kept, last
    assert out.spans == [(0, 1)]  # no graph kept: the chosen member's spans


def test_members_that_all_refuse_give_the_first_ones_reason():
    refused = [Solution("q", None, None, [], reason="not English"), Solution("q", None, None, [], reason="other")]
    assert pool(refused).reason == "not English" and pool(refused).answer is None


def test_a_committee_needs_two_models(trained_model_dir):
    with pytest.raises(BadInput):
        Committee([Solver.load(trained_model_dir)])


@pytest.fixture(scope="module")
def twin(trained_model_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("twin") / "model"
    shutil.copytree(trained_model_dir, other)
    return other


def test_a_committee_of_one_model_twice_answers_as_the_model_does(trained_model_dir, twin):
    questions = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
                 "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?", "Bonjour tout le monde, comment allez-vous aujourd'hui mes amis?"]
    alone = Solver.load(trained_model_dir, SolverConfig(workers=1)).solve_batch(questions)
    with Committee.load([trained_model_dir, twin], SolverConfig(workers=1)) as committee:
        pooled = list(committee.solve_each(questions, progress=False))
        assert committee.settings()["committee"] == 2 and committee.settings()["keep_graphs"]
        one = committee.solve(questions[1])
    assert [s.answer for s in pooled] == [s.answer for s in alone]
    assert pooled[2].answer is None and pooled[2].reason == alone[2].reason  # refused by both: the reason
    for s in pooled[:2]:
        if s.answer is not None:  # the graph and text of the answer's best candidate
            assert s.graph is not None and s.spans and all(st.span in s.spans for st in s.graph.steps if st.span)
    assert one.answer == pooled[1].answer


@pytest.mark.slow
def test_eval_with_a_committee_and_bad_model_lists(trained_model_dir, twin, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "mycelium.cli", "eval", "--limit", "2", "--workers", "1",
                               "--out", str(tmp_path / "eval"), *args], capture_output=True, text=True)
    proc = run("--model", f"{trained_model_dir},{twin}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gsm8k/test" in proc.stdout and (tmp_path / "eval" / "gsm8k_test.jsonl").is_file()
    for bad in (f"{trained_model_dir},{trained_model_dir}", f"{trained_model_dir},{tmp_path / 'none'}", ","):
        proc = run("--model", bad)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.strip(), bad
