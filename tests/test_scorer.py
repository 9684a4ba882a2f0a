"""The learned scorer: features of real candidate graphs, a listwise fit that finds the signal, JSON round trip."""

import numpy as np
import sympy

from mycelium.executor import execute
from mycelium.graph import Graph, Op, Operand, Source, Step
from mycelium.numbers import find_quantities
from mycelium.scorer import FEATURES, Scorer, by_answer, cross_validate, features, fit, labelled, provenance, top1

Q = "Ann buys 3 pens at 2 dollars each. How much does she spend?"
QS = find_quantities(Q)


def candidate(steps, answer, plan=-1.0, steps_lp=-2.0, plausible=True):
    g = Graph(Q, QS, steps, len(steps) - 1)
    run = execute(g)
    assert run.answer == answer
    return {"graph": g, "answer": run.answer, "values": run.values, "plausible": plausible,
            "parts": {"plan": plan, "steps": steps_lp, "goal": -0.1, "wiring": 0.0, "n": len(steps)}}


def test_features_read_the_graph_and_the_other_candidates():
    q0, q1 = (Operand(Source.QUANTITY, x.value, k) for k, x in enumerate(QS))
    right = candidate([Step(Op.MUL, [q0, q1])], 6)
    copy = candidate([Step(Op.ADD, [q0, Operand(Source.CONSTANT, sympy.Integer(0))])], 3, plan=-0.5)
    again = candidate([Step(Op.MUL, [q1, q0])], 6, plan=-3.0)
    f = features([right, copy, again], len(QS))
    col = {name: f[:, k] for k, name in enumerate(FEATURES)}
    assert f.shape == (3, len(FEATURES))
    assert col["share of question quantities used"].tolist() == [1.0, 0.5, 1.0]
    assert col["constants used"].tolist() == [0, 1, 0] and col["answer is a question quantity"].tolist() == [0, 1, 0]
    assert np.allclose(col["candidates with this answer (log)"], np.log([2, 1, 2]))


def test_features_read_the_values_along_the_way():
    q0, q1 = (Operand(Source.QUANTITY, x.value, k) for k, x in enumerate(QS))  # 3 pens, 2 dollars
    r = lambda k: Operand(Source.RESULT, sympy.Integer(0), k)
    right = candidate([Step(Op.MUL, [q0, q1])], 6)
    odd = candidate([Step(Op.SUB, [q1, q0]), Step(Op.DIV, [r(0), q1]), Step(Op.SUB, [q0, q0])], 0)  # -1, -1/2, 0
    col = {name: features([right, odd], len(QS))[:, k] for k, name in enumerate(FEATURES)}
    assert col["steps with a fractional value"].tolist() == [0, 1]
    assert col["steps with a negative value"].tolist() == [0, 2] and col["steps with value zero"].tolist() == [0, 1]
    assert col["subtractions"].tolist() == [0, 2] and col["divisions"].tolist() == [0, 1]
    assert col["distinct operations"].tolist() == [1, 2]
    assert col["question quantities read more than once"].tolist() == [0, 3]
    assert col["answer below every question quantity"].tolist() == [0, 1]
    assert np.allclose(col["log10 |answer| minus log10 largest question quantity"], [np.log10(7 / 4), -np.log10(4)])
    assert np.allclose(col["log10 largest |step value|"], [np.log10(7), np.log10(2)])
    assert col["steps repeating an earlier value"].tolist() == [0, 0]
    assert col["log10 denominator of the answer"].tolist() == [0, 0]


def test_fit_learns_which_feature_marks_gold_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(200):  # gold is the candidate that uses every quantity; log probs are noise
        f = rng.normal(size=(8, len(FEATURES)))
        y = np.zeros(8, dtype=bool)
        y[rng.integers(8)] = True
        f[:, FEATURES.index("share of question quantities used")] = np.where(y, 1.0, 0.5)
        groups.append((f, y, list(range(8))))
    scorer = fit(groups)
    assert top1(groups, scorer) > 0.95 and cross_validate(groups, folds=4) > 0.9
    assert top1(groups, fit([])) < 0.5  # nothing to learn from: every candidate ties, the first is taken
    col = FEATURES.index("share of question quantities used")
    inverted = [(np.where(np.arange(f.shape[1]) == col, 1.5 - f, f), y, a) for f, y, a in groups[40:]]  # gold at 0.5
    assert cross_validate(groups[:40], folds=4) > 0.5 > 0.1 > cross_validate(groups[:40], folds=4, extra=inverted)
    parts, both = [fit(groups, seed=s) for s in (3, 4)], fit(groups, seed=3, seeds=2)  # an ensemble is one wider MLP
    assert len(both.hidden_bias) == 32 and top1(groups, both) > 0.95
    assert np.allclose(both(groups[0][0]), (parts[0](groups[0][0]) + parts[1](groups[0][0])) / 2, atol=1e-5)
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    scorer.fitted_on = provenance(tmp_path, split="fit", limit=200, beam=4, groupings=16)
    scorer.save(tmp_path / "scorer.json")
    again = Scorer.load(tmp_path / "scorer.json")
    assert np.allclose(again(groups[0][0]), scorer(groups[0][0]))
    assert again.fitted_on == provenance(tmp_path, split="fit", limit=200, beam=4, groupings=16)
    (tmp_path / "model.safetensors").write_bytes(b"retrained")
    assert again.fitted_on != provenance(tmp_path, split="fit", limit=200, beam=4, groupings=16)  # stale: refit
    assert Scorer.load(tmp_path / "none.json") is None
    (tmp_path / "old.json").write_text('{"weights": [0.5], "mean": [0], "std": [1], "features": ["steps"]}')
    assert Scorer.load(tmp_path / "old.json") is None  # an older format falls back to log-probability ranking


def test_labelled_marks_gold_and_keeps_a_problem_with_no_executing_candidate():
    f = [0.0] * len(FEATURES)
    feats, gold, answers = labelled([{"ok": True, "answer": sympy.Integer(6), "features": f},
                                     {"ok": False, "answer": None, "features": f},
                                     {"ok": True, "answer": sympy.Integer(5), "features": f}], "6")
    assert feats.shape == (2, len(FEATURES)) and gold.tolist() == [True, False] and answers == [6, 5]
    feats, gold, answers = labelled([{"ok": False, "answer": None}], "6")
    assert feats.shape == (0, len(FEATURES)) and len(gold) == 0
    assert top1([(feats, gold, answers)], fit([])) == 0.0  # counted, and wrong


def test_the_answer_with_the_most_mass_wins_over_the_best_candidate():
    six, five = sympy.Integer(6), sympy.Integer(5)
    # e**2 alone against e**1.5 + e**1.5 (log-sum-exp 2.19): two candidates agreeing on 5 outweigh the best one
    assert by_answer(np.array([2.0, 1.5, 1.5]), [six, five, five]).tolist() == [1, 2, 0]
    assert by_answer(np.array([2.0, 0.5, 0.5]), [six, five, five]).tolist() == [0, 1, 2]
    assert by_answer(np.array([1.0, 3.0, 2.0]), [six, five, sympy.Integer(4)]).tolist() == [1, 2, 0]
    f = np.zeros((3, len(FEATURES)))
    assert top1([(f, np.array([False, True, True]), [six, five, five])], fit([])) == 1.0  # a tie of scores: 5 has more mass
