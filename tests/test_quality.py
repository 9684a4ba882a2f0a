import pytest

from mycelium.data import load
from mycelium.quality import prepare, report, solution_numbers, table
from mycelium.store import TraceStore
from mycelium.teacher import TeacherConfig
from mycelium.trace import TraceConfig
from mycelium.tracer import run_traces


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_teacher_dir):
    out = tmp_path_factory.mktemp("run") / "traces"
    cfg = TraceConfig(teacher=TeacherConfig(model=tiny_teacher_dir), shard_size=8)
    run_traces(load("gsm8k", "train")[:8], cfg, out, progress=False)
    return list(TraceStore(out))


def test_solution_numbers_split_divisions():
    assert [(q.text, int(q.value)) for q in solution_numbers("Natalia sold 48/2 = 24 clips, $12 each.")] == [
        ("48", 48), ("2", 2), ("24", 24), ("$12", 12)]


def test_gold_structure_of_a_trace(traces):
    ex = prepare(next(t for t in traces if t.id == "gsm8k/train/0"))
    # "Natalia sold 48/2 = 24 clips ... 48+24 = 72": the two 48s come from the question's one "48".
    assert len(ex.events) == 2 and all(e["cats"] == ["all", "once", ">=10"] for e in ex.events)
    assert [ex.mentions[e["good"][0]].text for e in ex.events] == ["48", "48"]
    tokens = ex.trace.tokens()
    assert all(tokens[e["token"]].strip() == "4" for e in ex.events)  # SmolLM writes digits one at a time
    assert len(ex.gold_boundaries) == 2  # three lines: two boundaries
    assert ex.mention_matrix.sum() > 0


def test_report_runs_with_baselines(traces):
    rep = report(traces, select=3, k=2)
    assert rep["problems"] == {"select": 3, "held_out": 5}
    prov = rep["provenance"]
    for row in prov.values():
        assert row["all"] is None or 0.0 <= row["all"] <= 1.0
    assert prov["baseline: first mention"]["n"] == prov["contrast, best 2 heads"]["n"] > 0
    b = rep["boundaries"]
    assert 0 <= b["baseline: random, same count as top-k"]["f1"] <= 1
    assert set(rep["phases"]) == {"reading", "generation"}
    text = table(rep)
    assert "provenance accuracy (%)" in text and "baseline: first mention" in text and "reading vs generation" in text
