"""The self-improving loop: student graphs that reach gold become labels rows the trainer reads."""

import copy
import json

import pytest
import sympy

from mycelium.clauses import parse
from mycelium.data import get, load
from mycelium.executor import execute
from mycelium.graph import Graph, Op, Operand, Source
from mycelium.improve import best_correct, graph_key, harvest
from mycelium.reference import reference_graph
from mycelium.solver import Solution, Solver, SolverConfig
from mycelium.specialists import Specialists, SpecialistConfig, encode

from .test_cli import assert_clean_error, mycelium
from .test_specialists import EXAMPLE


def _solution(question, *candidates):
    """A Solution whose ranked candidates are (graph, answer) pairs."""
    return Solution(question, candidates[0][1], candidates[0][0], [],
                    candidates=[{"graph": g, "answer": a, "ok": True} for g, a in candidates])


def test_harvest_keeps_new_correct_graphs_and_skips_the_teachers_own():
    p = get("gsm8k/train/0")  # Natalia's clips: 48 / 2 = 24, 48 + 24 = 72
    teacher_graph = reference_graph(p)
    other = copy.deepcopy(teacher_graph)
    swapped = copy.deepcopy(teacher_graph)
    swapped.steps[1].operands.reverse()  # 24 + 48: the same sum
    other = copy.deepcopy(teacher_graph)
    other.steps[0].op, other.steps[0].operands = Op.MUL, [other.steps[0].operands[0], Operand(Source.CONSTANT, sympy.Rational(1, 2))]
    wrong = copy.deepcopy(teacher_graph)
    wrong.answer = 0  # answers 24
    clauses = [parse(p.question)] * 3
    teacher = {p.id: EXAMPLE}
    solutions = [_solution(p.question, (wrong, sympy.Integer(24)), (swapped, sympy.Integer(72))),
                 _solution(p.question, (wrong, sympy.Integer(24)), (other, sympy.Integer(72))),
                 _solution(p.question, (wrong, sympy.Integer(24)))]
    examples, counts = harvest([p] * 3, solutions, clauses, teacher)
    assert counts == {"same graph as the teacher's": 1, "joins: another graph than the teacher's": 1,
                      "no candidate reaches gold": 1, "of which the solver's top answer": 0}
    [ex] = examples
    assert ex["origin"] == "student" and ex["steps"][0]["op"] == "mul" and ex["steps"][0]["operands"][1]["value"] == "1/2"
    assert ex["top_answer"] is False  # gold was the second candidate, not the solver's answer
    assert graph_key(ex["steps"], ex["goal"]["step"]) != graph_key(EXAMPLE["steps"], EXAMPLE["goal"]["step"])
    # with no teacher label, the same graph joins
    examples, counts = harvest([p], solutions[:1], clauses[:1], {})
    assert len(examples) == 1 and counts["joins: no teacher label"] == 1
    examples, counts = harvest([p], [_solution(p.question, (other, sympy.Integer(72)))], clauses[:1], teacher)
    assert examples[0]["top_answer"] is True and counts["of which the solver's top answer"] == 1
    assert best_correct(solutions[2].candidates, p.answer) is None


@pytest.fixture(scope="module")
def students(trained_model_dir):
    """The small trained model's graphs for Natalia's clips and Weng's babysitting."""
    solver = Solver.load(trained_model_dir, SolverConfig(keep_graphs=True))
    problems = [get("gsm8k/train/0"), get("gsm8k/train/1")]
    questions = [p.question for p in problems]
    return problems, solver.solve_batch(questions), [parse(q) for q in questions]


def test_student_examples_reexecute_to_gold_and_train(students, trained_model_dir):
    problems, solutions, clauses = students
    examples, counts = harvest(problems, solutions, clauses, {})
    assert counts["joins: no teacher label"] == len(examples) >= 1  # the small model reaches both answers somewhere
    for ex, cl in zip(examples, clauses):
        graph = Graph.from_json(ex["graph"])
        run = execute(graph)
        assert run.ok and str(run.answer) == ex["answer"]
        for st in ex["steps"]:
            if st["region"] is None:
                assert st["clauses"] is None
                continue
            first, last = st["clauses"]  # the run of clauses the plan read, exactly
            assert [cl.spans[first][0], max(b for _, b in cl.spans[first:last + 1])] == st["region"]
            assert st["region_text"] == ex["question"][slice(*st["region"])]
        assert ex["relevance"] == [list(r) for r in sorted({tuple(s["region"]) for s in ex["steps"] if s["region"]})]
    model = Specialists.create(SpecialistConfig(constants=["1/100", "2", "60"]), seed=0)
    batch = encode(model, examples + [EXAMPLE])
    y = batch["targets"]
    n = len(examples)
    assert (y["c4"][:n] == -100).all()  # no attention, no bridging flag: C4 does not learn from student graphs
    assert (y["c4"][n] >= 0).sum() == 2  # the teacher's row keeps its flags
    assert (y["c2"][:n, 0] >= 0).all() and (y["c6_goal"][:n] >= 0).all()
    assert (batch["plan_targets"]["start"][:n] != -100).any()


@pytest.mark.slow
def test_improve_then_train_with_students(tmp_path, trained_model_dir):
    run = tmp_path / "run"
    dev_id = load("gsm8k", "dev")[0].id
    assert load("gsm8k", "fit")[0].id == "gsm8k/train/0"
    (run / "labels").mkdir(parents=True)
    (run / "labels" / "labels.jsonl").write_text(
        json.dumps(EXAMPLE) + "\n" + json.dumps({**EXAMPLE, "id": dev_id}) + "\n")
    (run / "labels" / "constants.json").write_text(json.dumps(
        [{"value": "2", "uses": 9, "orphaned": 9, "orphan_share": 1.0, "kept": True}]))
    students = run / "labels" / "students.jsonl"
    assert_clean_error(mycelium("train", "--run", str(run), "--students", str(students)), "run `mycelium improve")
    proc = mycelium("improve", "--run", str(run), "--model", str(trained_model_dir), "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    assert "improve: 100%" in proc.stderr and "problem/s" in proc.stderr
    manifest = json.loads((run / "labels" / "students.json").read_text())
    assert manifest["made_from"]["problems"] == 2
    assert sum(v for k, v in manifest["counts"].items() if not k.startswith("of which")) == 2
    rows = [json.loads(x) for x in students.read_text().splitlines()]
    assert len(rows) == manifest["examples"] >= 1 and {r["origin"] for r in rows} == {"student"}
    again = mycelium("improve", "--run", str(run), "--model", str(trained_model_dir), "--limit", "2")
    assert again.returncode == 0 and "kept (--fresh" in again.stdout  # same model, labels and settings: not redone
    out = tmp_path / "r1"
    proc = mycelium("train", "--run", str(run), "--students", str(students), "--epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == 1 + len(rows) and metrics["student_rows"] == str(students)
    training = json.loads((out / "config.json").read_text())["training"]  # the model says how it was trained
    assert training["seed"] == 0 and training["epochs"] == 1 and training["n_train"] == 1 + len(rows)
    assert_clean_error(mycelium("improve", "--run", str(tmp_path / "none"), "--model", str(trained_model_dir)),
                       "run `mycelium labels build")
    assert_clean_error(mycelium("improve", "--run", str(run), "--model", str(trained_model_dir), "--limit", "0"),
                       "--limit must be at least 1")
