"""The main job end to end on a small configuration: every stage runs, then every cached stage is reused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from mycelium.pipeline import PRESETS, PipelineConfig, run
from mycelium.store import TraceStore


def mycelium(*args):
    return subprocess.run([sys.executable, "-m", "mycelium.cli", *args], capture_output=True, text=True)


def test_presets_are_data():
    quick, full = PRESETS["quick"], PRESETS["full"]
    assert full.fit is None and full.dev is None and full.eval_limit is None  # all of GSM8K train; whole test sets
    assert full.extra == ["asdiv"] and full.extra_limit is None and quick.extra_limit  # ASDiv fit as extra training data
    assert quick.fit and quick.dev and quick.eval_limit and quick.run != full.run


@pytest.mark.parametrize("gain", [0.05, -0.02])
def test_members_train_on_what_the_kept_model_trained_on(tmp_path, monkeypatch, gain):
    """A committee's later members get the students' graphs exactly when a round of the loop made the kept model.

    The stages are the CLI's commands; a stand-in records each and writes only what the pipeline reads next."""
    run_dir = tmp_path / "run"
    TraceStore(run_dir / "traces", config={"teacher": "stand-in"}).save_manifest()
    calls = []

    def app(args, standalone_mode):
        calls.append(args)
        if args[:2] == ["signals", "report"]:
            (run_dir / "signals").mkdir(parents=True, exist_ok=True)
            (run_dir / "signals" / "report.json").write_text("{}")
        elif args[0] == "scorer":
            folder = Path(args[args.index("--model") + 1])
            folder.mkdir(parents=True, exist_ok=True)
            accuracy = 0.10 + (gain if folder.name.endswith("-r1") else 0.0)
            (folder / "scorer.json").write_text(json.dumps({"dev_accuracy": accuracy}))

    monkeypatch.setattr("mycelium.cli.app", app)
    run(PipelineConfig(run=str(run_dir), improve_rounds=1, members=3, seed=5))
    trains = {a[a.index("--out") + 1] if "--out" in a else "first": a for a in calls if a[0] == "train"}
    students = str(run_dir / "labels" / "students-r1.jsonl")
    round_one = trains[str(run_dir / "models" / "minilm-r1")]
    assert "--students" not in trains["first"] and round_one[round_one.index("--students") + 1] == students
    members = [trains[str(run_dir / "models" / f"minilm-s{seed}")] for seed in (6, 7)]
    for seed, args in zip((6, 7), members):
        assert args[args.index("--seed") + 1] == str(seed)
        assert ("--students" in args) == (gain > 0)  # the round was kept, so its members learn from the same graphs
        assert not ("--students" in args) or args[args.index("--students") + 1] == students
    evaluated = calls[-1][calls[-1].index("--model") + 1].split(",")
    first = "minilm-r1" if gain > 0 else "minilm"
    assert [Path(m).name for m in evaluated] == [first, "minilm-s6", "minilm-s7"]


def test_augmented_copies_are_made_once_and_every_member_trains_on_them(tmp_path, monkeypatch):
    """`augment_copies` adds a `labels augment` stage, cached on the labels it was made from, and `--augmented`
    to every training; without it neither appears."""
    import hashlib

    run_dir = tmp_path / "run"
    TraceStore(run_dir / "traces", config={"teacher": "stand-in"}).save_manifest()
    calls = []

    def app(args, standalone_mode):
        calls.append(args)
        labels = run_dir / "labels"
        if args[:2] == ["signals", "report"]:
            (run_dir / "signals").mkdir(parents=True, exist_ok=True)
            (run_dir / "signals" / "report.json").write_text("{}")
        elif args[:2] == ["labels", "build"]:
            labels.mkdir(parents=True, exist_ok=True)
            (labels / "labels.jsonl").write_text('{"id": "gsm8k/train/0"}\n')
        elif args[:2] == ["labels", "augment"]:
            sha = hashlib.sha1((labels / "labels.jsonl").read_bytes()).hexdigest()
            copies, seed = int(args[args.index("--copies") + 1]), int(args[args.index("--seed") + 1])
            (labels / "augmented.json").write_text(json.dumps({"labels_sha1": sha, "copies": copies, "seed": seed}))
        elif args[0] == "scorer":
            folder = Path(args[args.index("--model") + 1])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "scorer.json").write_text(json.dumps({"dev_accuracy": 0.1}))

    monkeypatch.setattr("mycelium.cli.app", app)
    run(PipelineConfig(run=str(run_dir), members=2, seed=5, augment_copies=3))
    augments = [a for a in calls if a[:2] == ["labels", "augment"]]
    assert len(augments) == 1 and augments[0][augments[0].index("--copies") + 1] == "3"
    trains = [a for a in calls if a[0] == "train"]
    assert len(trains) == 2 and all("--augmented" in a for a in trains)
    calls.clear()
    run(PipelineConfig(run=str(run_dir), members=2, seed=5, augment_copies=3))  # made from these labels: kept
    assert not [a for a in calls if a[:2] == ["labels", "augment"]]
    run(PipelineConfig(run=str(run_dir), members=1, seed=5, augment_copies=2))  # other copies: made again
    assert [a for a in calls if a[:2] == ["labels", "augment"]]
    calls.clear()
    run(PipelineConfig(run=str(run_dir), seed=5))
    assert not [a for a in calls if a[:2] == ["labels", "augment"] or "--augmented" in a]


@pytest.mark.slow
def test_run_end_to_end_then_cached(tmp_path, tiny_teacher_dir):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump({"run": str(tmp_path / "run"), "teacher": tiny_teacher_dir, "dev": 4, "fit": 8, "extra_limit": 2,
                                   "select": 2, "signals_limit": 12, "epochs": 1, "eval_limit": 4, "scorer_limit": 8, "scorer_dev_limit": 4,
                                   "eval_datasets": ["gsm8k", "asdiv"], "seed": 3, "schedule": "linear", "plan_loss_weight": 0.5,
                                   "improve_rounds": 1, "encoder_layers": 2, "members": 2}))
    first = mycelium("run", "--config", str(cfg))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "acc %" in first.stdout and "eval/index.html" in first.stdout
    run = tmp_path / "run"
    for path in ("traces/manifest.json", "signals/report.json", "labels/labels.jsonl", "models/minilm-l2/model.safetensors", "models/minilm-l2/scorer.json",
                 "eval/gsm8k_test.jsonl", "eval/index.html", "pipeline.json",
                 "labels/students-r1.jsonl", "labels/students-r1.json", "models/minilm-l2-r1/scorer.json",
                 "models/minilm-l2-s4/model.safetensors", "models/minilm-l2-s4/scorer.json"):
        assert (run / path).exists(), path
    assert json.loads((run / "traces" / "manifest.json").read_text())["stats"]["traced"] == 14  # GSM8K 12, ASDiv fit 2
    assert {"gsm8k", "asdiv"} == {json.loads(x)["id"].split("/")[0] for x in (run / "labels" / "labels.jsonl").read_text().split("\n") if x}
    with safe_open(str(run / "models" / "minilm-l2" / "checkpoint.safetensors"), framework="pt") as f:
        fingerprint = json.loads(f.metadata()["state"])["fingerprint"]
    assert fingerprint["train"]["seed"] == 3 and fingerprint["train"]["schedule"] == "linear"
    assert fingerprint["train"]["plan_loss_weight"] == 0.5  # the config reached training
    assert fingerprint["model"]["specialists"]["encoder_layers"] == 2  # and the cut backbone: MiniLM's first 2 layers
    assert "fitted on 8 GSM8K fit problems and 8 asdiv fit problems" in first.stdout  # the scorer, on training's extra too
    assert "round 1: GSM8K dev" in first.stderr  # the self-improving loop ran one round and measured it
    with safe_open(str(run / "models" / "minilm-l2-s4" / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["state"])["fingerprint"]["train"]["seed"] == 4  # the second member: seed + 1
    assert "[2 models]" in first.stderr  # and the two answered the evaluation as a committee
    again = mycelium("run", "--config", str(cfg))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "harvested by this model with these settings: kept" in again.stdout
    assert "signals: cached" in again.stderr and "labels: cached" in again.stderr and "fitted on this model with these settings: kept" in again.stdout
    assert again.stdout.count("14 traces in") == 3  # every trace stage found everything traced
    assert json.loads((run / "traces" / "manifest.json").read_text())["stats"]["last_run"]["problems"] == 0
    refit = mycelium("scorer", "--model", str(run / "models" / "minilm-l2"), "--limit", "8", "--dev-limit", "4", "--refit")
    assert refit.returncode == 0 and "fitted on 8 GSM8K fit" in refit.stdout, refit.stderr[-3000:]
    scorer = run / "models" / "minilm-l2" / "scorer.json"
    assert "plan_step_bonus" not in json.loads(scorer.read_text())["fitted_on"]  # the default leaves older scorers valid
    bonus = mycelium("scorer", "--model", str(run / "models" / "minilm-l2"), "--limit", "8", "--dev-limit", "4",
                     "--plan-step-bonus", "0.5")  # other candidates: not the scorer fitted without the prior
    assert bonus.returncode == 0 and "kept (--refit" not in bonus.stdout, bonus.stderr[-3000:]
    assert json.loads(scorer.read_text())["fitted_on"]["plan_step_bonus"] == 0.5
    cfg.write_text(cfg.read_text().replace("scorer_limit: 8", "scorer_limit: 6"))
    other = mycelium("run", "--config", str(cfg))  # a scorer fitted with other settings is not reused
    assert other.returncode == 0 and "kept (--refit" not in other.stdout and "fitted on 6 GSM8K fit" in other.stdout


def test_run_bad_input(tmp_path):
    assert mycelium("run", "--preset", "huge").returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    out = mycelium("run", "--config", str(bad))
    assert out.returncode == 2 and "not valid YAML" in out.stderr
    bad.write_text("colour: blue\n")
    out = mycelium("run", "--config", str(bad))
    assert out.returncode == 2 and "unknown PipelineConfig setting" in out.stderr
    bad.write_text(f"run: {tmp_path / 'run'}\nmembers: 0\n")
    out = mycelium("run", "--config", str(bad))
    assert out.returncode == 2 and "members is how many models answer together" in out.stderr
    assert not (tmp_path / "run").exists()  # refused before any stage ran
