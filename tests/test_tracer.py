"""The trace job and store: resume, kill -9 mid-write, corrupt shards, Ray."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mycelium.data import load
from mycelium.store import StoreError, TraceStore
from mycelium.teacher import TeacherConfig
from mycelium.trace import TraceConfig
from mycelium.tracer import run_traces

PROBLEMS = load("gsm8k", "train")[:7]


@pytest.fixture
def cfg(tiny_teacher_dir):
    return TraceConfig(teacher=TeacherConfig(model=tiny_teacher_dir), shard_size=3)


def test_writes_shards_and_manifest(tmp_path, cfg):
    stats = run_traces(PROBLEMS, cfg, tmp_path, progress=False)
    assert stats["traced"] == 7 and stats["bytes_per_problem"] > 0 and stats["last_run"]["peak_rss_mb"] > 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.safetensors", "shard-00001.safetensors",
                                                       "shard-00002.safetensors"]
    store = TraceStore(tmp_path)
    assert [t.id for t in store] == [p.id for p in PROBLEMS]
    t = store.get("gsm8k/train/0")
    assert t.question == PROBLEMS[0].question and "<<" not in t.solution and t.attn.shape[:2] == (2, 2)


def test_rerun_resumes_and_skips_finished(tmp_path, cfg):
    run_traces(PROBLEMS[:4], cfg, tmp_path, progress=False)
    before = {f: f.stat().st_mtime_ns for f in tmp_path.glob("shard-*")}
    stats = run_traces(PROBLEMS, cfg, tmp_path, progress=False)
    assert stats["traced"] == 7 and stats["last_run"]["problems"] == 3
    assert all(f.stat().st_mtime_ns == m for f, m in before.items())  # finished shards untouched
    assert sorted(t.id for t in TraceStore(tmp_path)) == sorted(p.id for p in PROBLEMS)


def test_other_config_is_refused(tmp_path, cfg):
    run_traces(PROBLEMS[:1], cfg, tmp_path, progress=False)
    cfg.layers = [0]
    with pytest.raises(StoreError, match="another configuration"):
        run_traces(PROBLEMS[:1], cfg, tmp_path, progress=False)


def test_corrupt_and_foreign_shards_name_the_file(tmp_path, cfg):
    run_traces(PROBLEMS[:4], cfg, tmp_path, progress=False)
    shard = tmp_path / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(StoreError, match="shard-00001.safetensors: corrupt trace shard"):
        list(TraceStore(tmp_path))
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3)}, str(shard), metadata={"format": "pt"})
    with pytest.raises(StoreError, match="shard-00001.safetensors: not a Mycelium trace shard"):
        list(TraceStore(tmp_path))
    (tmp_path / "manifest.json").write_text('{"schema": "something/else"}')
    with pytest.raises(StoreError, match="not a Mycelium trace manifest"):
        TraceStore(tmp_path)


def test_generate_mode_keeps_only_correct_solutions(tmp_path, cfg, monkeypatch):
    from mycelium.teacher import Teacher

    # Stand-in for the teacher's sampling: right on even rows, wrong on odd ones.
    answers = {p.question: (p.solution if i % 2 == 0 else "The answer is 123456.") for i, p in enumerate(PROBLEMS)}
    monkeypatch.setattr(Teacher, "generate", lambda self, q, n=256: answers[q])
    cfg.mode = "generate"
    stats = run_traces(PROBLEMS, cfg, tmp_path, progress=False)
    assert stats["traced"] == 4 and stats["rejected"] == 3 and stats["solve_rate"] == pytest.approx(4 / 7, abs=1e-3)
    assert TraceStore(tmp_path).get("gsm8k/train/0").meta["generated"]
    again = run_traces(PROBLEMS, cfg, tmp_path, progress=False)  # rejected ones are not retried
    assert again["last_run"]["problems"] == 0


KILL_SCRIPT = """
import sys, time
import mycelium.store as store
from mycelium.data import load
from mycelium.teacher import TeacherConfig
from mycelium.trace import TraceConfig
from mycelium.tracer import run_traces

real = store._fsync
calls = []
def slow_fsync(fh):  # the second shard hangs after its bytes are written, before its rename
    real(fh)
    calls.append(fh)
    if len(calls) == 3:  # shard 0, manifest, then shard 1
        print("IN-WRITE", flush=True)
        time.sleep(60)
store._fsync = slow_fsync
cfg = TraceConfig(teacher=TeacherConfig(model=sys.argv[1]), shard_size=2)
run_traces(load("gsm8k", "train")[:7], cfg, sys.argv[2], progress=False)
"""


@pytest.mark.slow
def test_kill_9_in_mid_write_loses_only_that_shard(tmp_path, cfg, tiny_teacher_dir):
    out = tmp_path / "traces"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, tiny_teacher_dir, str(out)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "IN-WRITE"
    assert list(out.glob(".tmp-*"))  # the shard being written exists only under its temporary name
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".tmp-")) == [
        "manifest.json", "shard-00000.safetensors"]
    store = TraceStore(out)  # opening sweeps the leftover
    assert not list(out.glob(".tmp-*"))
    assert [t.id for t in store] == ["gsm8k/train/0", "gsm8k/train/1"]
    stats = run_traces(PROBLEMS, cfg, out, progress=False)
    assert stats["traced"] == 7 and stats["last_run"]["problems"] == 5
    ids = [t.id for t in TraceStore(out)]
    assert sorted(ids) == sorted(p.id for p in PROBLEMS) and len(ids) == len(set(ids))


@pytest.mark.slow
def test_ray_engine_writes_the_same_files(tmp_path, cfg):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_traces(PROBLEMS[:4], cfg, tmp_path / "ray", engine="ray", progress=False)
    finally:
        ray.shutdown()
    run_traces(PROBLEMS[:4], cfg, tmp_path / "local", progress=False)
    a, b = {t.id: t for t in TraceStore(tmp_path / "ray")}, {t.id: t for t in TraceStore(tmp_path / "local")}
    assert a.keys() == b.keys()
    for k in a:
        for name in ("attn", "mass", "problem_offsets", "solution_offsets", "read_argmax"):
            assert np.array_equal(getattr(a[k], name), getattr(b[k], name)), (k, name)
    ma = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert [s["ids"] for s in ma["shards"]] == [s["ids"] for s in mb["shards"]]
