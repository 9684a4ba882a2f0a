"""The solver's flow on an untrained model: it answers from text alone, never crashes, explains no-answers."""

import json
import subprocess
import sys

import pytest
import torch

from mycelium.errors import BadInput
from mycelium.solver import Solver, groupings
from mycelium.specialists import SpecialistConfig, Specialists
from mycelium.training import save_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_model(Specialists.create(SpecialistConfig(constants=["1/100"])), folder, {})
    return folder


def test_groupings_enumerate_merges_duplicates_and_drops():
    g = groupings([(0, 5), (6, 9), (10, 20)])
    assert g[0] == [(0, 5), (6, 9), (10, 20)]
    assert [(0, 9), (10, 20)] in g and [(0, 5), (0, 5), (6, 9), (10, 20)] in g and [(6, 9), (10, 20)] in g
    assert len(g) == len({tuple(x) for x in g})


def test_solve_returns_graph_and_spans_or_a_reason(model_dir):
    solver = Solver.load(model_dir)
    q = "Tom has 3 boxes with 4 apples each. How many apples does he have?"
    s = solver.solve(q)
    assert s.answer is not None or s.reason
    if s.graph:
        assert s.graph.question == q and all(st.span for st in s.graph.steps)
    assert solver.solve(q).to_json() == s.to_json()  # deterministic
    with pytest.raises(BadInput, match="question is empty"):
        solver.solve("   ")


def test_solve_cli(model_dir, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "mycelium.cli", "solve", *a], capture_output=True, text=True)  # noqa: E731
    out = run("Tom has 3 boxes with 4 apples each. How many apples does he have?", "--model", str(model_dir), "--json")
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) >= {"answer", "graph", "spans", "reason"}
    bad = run("", "--model", str(model_dir))
    assert bad.returncode == 2 and bad.stderr.strip() == "error: question is empty"
    missing = run("x", "--model", str(tmp_path / "none"))
    assert missing.returncode == 2 and "run `mycelium train` first" in missing.stderr
    rows = tmp_path / "p.jsonl"
    rows.write_text(json.dumps({"question": "Ann has 2 cats and 3 dogs. How many pets?"}) + "\n" + json.dumps({"question": ""}) + "\n")
    batch = run("--file", str(rows), "--model", str(model_dir))
    lines = [json.loads(x) for x in batch.stdout.splitlines()]
    assert batch.returncode == 0 and len(lines) == 2 and lines[1]["reason"] == "question is empty"
