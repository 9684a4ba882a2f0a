"""The CLI as a user runs it: real processes, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from mycelium.data import load


def mycelium(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mycelium.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def assert_clean_error(proc, message):
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_graph_renders_first_test_problem():
    proc = mycelium("graph", "gsm8k/test/0")
    assert proc.returncode == 0, proc.stderr
    assert "s0 = sub(q0, q1, q2)" in proc.stdout and "answer: 18" in proc.stdout


def test_graph_json():
    out = json.loads(mycelium("graph", "gsm8k/test/0", "--json").stdout)
    assert out["values"] == ["9", "18"] and out["answer"] == 1


@pytest.mark.slow
def test_graph_coverage_prints_a_percentage():
    proc = mycelium("graph", "--coverage")
    assert proc.returncode == 0
    first = proc.stdout.splitlines()[0]
    assert first.startswith("coverage: ") and "%" in first
    assert float(first.split()[1].rstrip("%")) >= 96.0


def test_data_commands():
    assert "gsm8k     train    7473 rows" in mycelium("data", "list").stdout
    show = mycelium("data", "show", "asdiv/test/0")
    assert show.returncode == 0 and "answer:   9 (apples)" in show.stdout
    stats = mycelium("data", "stats", "gsm8k", "--split", "test")
    assert "gsm8k/test: problems 1319" in stats.stdout


def test_quantities_command():
    proc = mycelium("quantities", "She eats three eggs and sells 1,200.")
    assert "She eats [three]q0 eggs and sells [1,200]q1." in proc.stdout


def test_unknown_dataset():
    assert_clean_error(mycelium("data", "stats", "nope"), "unknown dataset 'nope'")


def test_bad_problem_id():
    assert_clean_error(mycelium("graph", "gsm8k-0"), "bad problem id")


def test_empty_question():
    assert_clean_error(mycelium("quantities", "   "), "question is empty")


def test_missing_file(tmp_path):
    assert_clean_error(mycelium("data", "stats", "gsm8k", "--split", "test", "--source", str(tmp_path / "x.jsonl")),
                       "not found")
    assert_clean_error(mycelium("data", "stats", "svamp", "--split", "test", "--data-root", str(tmp_path)),
                       "svamp/test.jsonl")


def test_eval_bad_arguments(tmp_path):
    (tmp_path / "file").write_text("")
    model = ("--model", str(tmp_path / "no-model"))  # each is caught before a model is looked for
    assert_clean_error(mycelium("eval", "--dataset", ",", *model), "names no dataset")
    assert_clean_error(mycelium("eval", "--limit", "0", *model), "at least 1")
    assert_clean_error(mycelium("eval", "--split", "nope", *model), "unknown split 'nope'")
    assert_clean_error(mycelium("eval", "--dataset", "mawps", "--split", "dev", *model), "the splits of mawps: test")
    assert_clean_error(mycelium("eval", "--out", str(tmp_path / "file"), *model), "is a file")
    assert_clean_error(mycelium("eval", "--groupings", "0", "--limit", "2", *model), "groupings must be at least 1")
    assert_clean_error(mycelium("solve", "x", "--batch-size", "0", *model), "batch-size must be at least 1")
    assert_clean_error(mycelium("solve", "x", "--beam", "-1", *model), "beam must be at least 1")
    assert_clean_error(mycelium("eval", "--workers", "-1", "--limit", "2", *model), "workers must be 0 (one per core) or more")


def test_scorer_bad_arguments(tmp_path):
    # Each is refused before anything is solved or written: a bad setting must never replace a fitted scorer.
    model = ("--model", str(tmp_path / "no-model"))
    assert_clean_error(mycelium("scorer", *model), "no trained specialists")
    assert_clean_error(mycelium("scorer", "--split", "dev", "--folds", "1", *model), "--folds must be at least 2")
    assert_clean_error(mycelium("scorer", "--split", "test", *model), "reported numbers only")
    assert_clean_error(mycelium("scorer", "--seeds", "0", *model), "--seeds must be at least 1")
    assert_clean_error(mycelium("scorer", "--limit", "-5", *model), "--limit is 0 (all)")
    assert_clean_error(mycelium("scorer", "--extra", "asdiv,nosuch", *model), "unknown dataset 'nosuch'")
    assert_clean_error(mycelium("scorer", "--extra", "gsm8k", *model), "other than GSM8K")


def test_malformed_row_warns_and_loads_the_rest(write_jsonl):
    path = write_jsonl("rows.jsonl", ['{"question": "Ann has 4 pens. How many?", "answer": "#### 4"}', "{oops"])
    proc = mycelium("data", "stats", "gsm8k", "--split", "test", "--source", str(path))
    assert proc.returncode == 0 and "problems 1" in proc.stdout
    assert f"{path}:2: skipped: malformed JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_trace_and_show(tmp_path, tiny_teacher_dir):
    run = str(tmp_path / "run")
    proc = mycelium("trace", "--limit", "2", "--teacher", tiny_teacher_dir, "--run", run)
    assert proc.returncode == 0, proc.stderr
    assert "2 traces in" in proc.stdout and "problems_per_s" in proc.stdout
    assert "trace: 100%" in proc.stderr and "problem/s" in proc.stderr  # progress bar with a rate
    show = mycelium("trace", "show", "gsm8k/train/1", "--run", run)
    assert show.returncode == 0 and "Weng earns 12/60 = $0.2 per minute." in show.stdout


def test_trace_bad_inputs(tmp_path):
    assert_clean_error(mycelium("trace", "--limit", "1", "--teacher", str(tmp_path / "x.gguf"), "--run", str(tmp_path)),
                       "teacher GGUF file not found")
    assert_clean_error(mycelium("trace", "show", "gsm8k/train/0", "--run", str(tmp_path / "none")), "run `mycelium trace` first")
    assert_clean_error(mycelium("trace", "--limit", "0", "--run", str(tmp_path)), "--limit must be at least 1")
    assert_clean_error(mycelium("trace", "--limit", "1", "--device", "tpu", "--run", str(tmp_path)), "unknown device 'tpu'")


def test_signals_report_and_show(tmp_path, tiny_teacher_dir):
    run = str(tmp_path / "run")
    assert mycelium("trace", "--limit", "4", "--teacher", tiny_teacher_dir, "--run", run).returncode == 0
    rep = mycelium("signals", "report", "--run", run, "--select", "2")
    assert rep.returncode == 0, rep.stderr
    assert "provenance accuracy (%)" in rep.stdout and "baseline: random, same count as top-k" in rep.stdout
    saved = json.loads((tmp_path / "run" / "signals" / "report.json").read_text())
    assert saved["problems"] == {"select": 2, "held_out": 2} and saved["inputs"]["traces"] == 4
    show = mycelium("show", "gsm8k/train/0", "--run", run)
    assert show.returncode == 0 and (tmp_path / "run" / "show" / "gsm8k_train_0.html").is_file()
    assert_clean_error(mycelium("show", "gsm8k/train/99", "--run", run), "no trace for 'gsm8k/train/99'")


def test_labels_build(tmp_path, tiny_teacher_dir):
    run = str(tmp_path / "run")
    assert_clean_error(mycelium("labels", "build", "--run", run), "run `mycelium trace")
    assert mycelium("trace", "--limit", "4", "--teacher", tiny_teacher_dir, "--run", run).returncode == 0
    assert_clean_error(mycelium("labels", "build", "--run", run), "run `mycelium signals report")
    assert mycelium("signals", "report", "--run", run, "--select", "2").returncode == 0
    proc = mycelium("labels", "build", "--run", run)
    assert proc.returncode == 0, proc.stderr
    assert "4/4 traced problems labelled (100.0%)" in proc.stdout and "1/100" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "labels" / "labels.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["gsm8k/train/0", "gsm8k/train/1", "gsm8k/train/2", "gsm8k/train/3"]
    # Extra training data in the same run: ASDiv's fit split, whose problems keep their ASDiv ids.
    assert mycelium("trace", "--dataset", "asdiv", "--split", "fit", "--limit", "3", "--teacher", tiny_teacher_dir,
                    "--run", run).returncode == 0
    proc = mycelium("labels", "build", "--run", run)
    assert proc.returncode == 0 and "problem not in the dataset" not in proc.stdout, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "labels" / "labels.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows if r["id"].startswith("asdiv/")] == [p.id for p in load("asdiv", "fit")[:3]]


@pytest.mark.slow
def test_labels_templates_then_train_on_templates(tmp_path, tiny_teacher_dir):
    run = str(tmp_path / "run")
    assert mycelium("trace", "--limit", "6", "--teacher", tiny_teacher_dir, "--run", run).returncode == 0
    assert mycelium("signals", "report", "--run", run, "--select", "2").returncode == 0
    assert mycelium("labels", "build", "--run", run).returncode == 0
    proc = mycelium("labels", "templates", "--run", run, "--clusters", "2")
    assert proc.returncode == 0, proc.stderr
    assert "β at which templates split" in proc.stdout
    saved = json.loads((tmp_path / "run" / "labels" / "templates.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "labels" / "labels.jsonl").read_text().splitlines()]
    assert {s["template"] for r in rows for s in r["steps"]} == set(range(saved["level"]))
    assert all(0 < t["purity"] <= 1 for t in saved["templates"])
