"""The trace job: problems in, trace shards out, in-process or on Ray Data.

    $ mycelium trace --dataset gsm8k --split train --limit 100
    trace: 100%|██████████| 100/100 [00:31<00:00,  3.2 problem/s]
    traced 100 problems into runs/default/traces (1.9 MB/problem, peak RSS 1.1 GB)

Both engines run `trace_problem` on each problem and hand the result to the
same `TraceStore` in the driver, so they write the same files. Re-running the
same command skips every problem already in the store (or already rejected in
generate mode) and continues.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

from .answer import answers_match
from .data import Problem
from .errors import BadInput, MyceliumError
from .numbers import find_quantities
from .store import TraceStore
from .teacher import Teacher, TeacherConfig
from .trace import Trace, TraceConfig, capture, strip_annotations


def config_dict(cfg: TraceConfig) -> dict:
    """The settings that change what a trace contains (shard size does not)."""
    d = dataclasses.asdict(cfg)
    d.pop("shard_size")
    d["teacher"].pop("threads", None)
    d["teacher"].pop("device", None)
    return d


def final_number(text: str):
    """The last number a generated solution writes: its answer."""
    numbers = [q for q in find_quantities(text) if not q.word] or find_quantities(text)
    return numbers[-1].value if numbers else None


def trace_problem(teacher: Teacher, problem: Problem, cfg: TraceConfig) -> Trace | str:
    """A trace, or the reason this problem yields none (generate mode: a wrong answer)."""
    if cfg.mode == "forced":
        if not problem.solution:
            raise BadInput(f"{problem.dataset} has no reference solutions; use --mode generate")
        solution = strip_annotations(problem.solution) if cfg.strip_annotations else problem.solution
        return capture(teacher, problem.question, solution, cfg.layers, cfg.heads, problem.id)
    if cfg.mode == "generate":
        text = teacher.generate(problem.question, cfg.max_new_tokens)
        if not answers_match(final_number(text), problem.answer):
            return "wrong answer"
        trace = capture(teacher, problem.question, text, cfg.layers, cfg.heads, problem.id)
        trace.meta["generated"] = True
        return trace
    raise BadInput(f"unknown trace mode {cfg.mode!r}; use forced or generate")


def _finish(store: TraceStore, rejected: dict, t0: float, progress_n: int, inputs: dict) -> dict:
    store.flush()
    m = store.manifest
    m.setdefault("rejected", {}).update(rejected)
    traced = len(store)
    total_bytes = sum(s["bytes"] for s in m["shards"])
    elapsed = time.monotonic() - t0
    attempted = traced + len(m["rejected"])
    m["stats"] = {
        "traced": traced, "rejected": len(m["rejected"]),
        "solve_rate": round(traced / attempted, 4) if attempted else None,
        "bytes_per_problem": round(total_bytes / traced) if traced else None,
        "last_run": {"problems": progress_n, "seconds": round(elapsed, 1),
                     "problems_per_s": round(progress_n / elapsed, 3) if elapsed and progress_n else None,
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
    }
    if progress_n:
        m.setdefault("inputs", []).append(inputs)
    store.save_manifest()
    return m["stats"]


def run_traces(problems: list[Problem], cfg: TraceConfig, out: str | Path, engine: str = "local",
               ray_address: str | None = None, progress: bool = True, inputs: dict | None = None) -> dict:
    """Trace every problem not yet in the store at `out`; return the store's stats."""
    from tqdm import tqdm

    if cfg.mode not in ("forced", "generate"):
        raise BadInput(f"unknown trace mode {cfg.mode!r}; use forced or generate")
    if not problems:
        raise BadInput("no problems to trace")
    store = TraceStore(out, config=config_dict(cfg), shard_size=cfg.shard_size)
    seen = store.done() | set(store.manifest.get("rejected", {}))
    todo = [p for p in problems if p.id not in seen]
    rejected: dict[str, str] = {}
    if engine not in ("local", "ray"):
        raise BadInput(f"unknown engine {engine!r}; use local or ray")
    results = (_local if engine == "local" else _ray)(todo, cfg, ray_address) if todo else iter(())
    t0 = time.monotonic()  # after the teacher has loaded: the rate is tracing, not start-up
    bar = tqdm(total=len(todo), desc="trace", unit="problem", disable=not progress, file=sys.stderr)
    for pid, result in results:
        if isinstance(result, str):
            rejected[pid] = result
        else:
            store.add(result)
        bar.update()
    bar.close()
    return _finish(store, rejected, t0, len(todo), inputs or {})


def _local(todo: list[Problem], cfg: TraceConfig, address=None):
    teacher = Teacher.load(cfg.teacher)
    return ((p.id, trace_problem(teacher, p, cfg)) for p in todo)


# -- Ray Data ------------------------------------------------------------------
def _encode(trace: Trace) -> bytes:
    from safetensors.numpy import save

    meta = {"id": trace.id, "question": trace.question, "solution": trace.solution, "layers": trace.layers,
            "heads": trace.heads, "meta": trace.meta}
    return save({a: getattr(trace, a) for a in Trace.ARRAYS}, metadata={"trace": json.dumps(meta)})


def _decode(blob: bytes) -> Trace:
    from safetensors.numpy import load

    arrays = load(blob)
    meta = json.loads(_header(blob)["trace"])
    return Trace(id=meta["id"], question=meta["question"], solution=meta["solution"], layers=meta["layers"],
                 heads=meta["heads"], meta=meta["meta"], **arrays)


def _header(blob: bytes) -> dict:
    """The safetensors metadata: an 8-byte little-endian length, then a JSON header."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n])["__metadata__"]


class _RayTracer:
    """One teacher per Ray actor; turns a batch of problems into encoded traces."""

    def __init__(self, cfg: dict):
        self.cfg = TraceConfig(**{**cfg, "teacher": TeacherConfig(**cfg["teacher"])})
        self.teacher = Teacher.load(self.cfg.teacher)

    def __call__(self, batch: dict) -> dict:
        ids, blobs, reasons = [], [], []
        for row in batch["problem"]:
            p = Problem(**json.loads(str(row)))
            result = trace_problem(self.teacher, p, self.cfg)
            ids.append(p.id)
            blobs.append(b"" if isinstance(result, str) else _encode(result))
            reasons.append(result if isinstance(result, str) else "")
        return {"id": ids, "blob": blobs, "reason": reasons}


def _ray(todo: list[Problem], cfg: TraceConfig, address: str | None):
    try:
        import ray
    except ImportError:
        raise MyceliumError("--engine ray needs Ray: pip install 'ray[data]'") from None
    import logging

    logging.getLogger("ray").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is the one bar
    ctx.execution_options.preserve_order = True  # same shards, in the same order, as the local engine
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    cpus = int(ray.available_resources().get("CPU", 1))
    gpus = int(ray.available_resources().get("GPU", 0))
    # On CPUs, several single-threaded teachers beat one multi-threaded one (2 cores: ~17%).
    threads = cfg.teacher.threads or 1
    workers = gpus or max(1, cpus // threads)
    actor_cfg = dataclasses.asdict(cfg)
    actor_cfg["teacher"]["threads"] = None if gpus else threads
    ds = ray.data.from_items([{"problem": json.dumps(p.to_json())} for p in todo])
    pool = ray.data.ActorPoolStrategy(min_size=workers, max_size=workers)  # a fixed pool: one teacher per worker
    ds = ds.map_batches(_RayTracer, fn_constructor_kwargs={"cfg": actor_cfg}, batch_size=1, compute=pool,
                        num_gpus=1 if gpus else 0, num_cpus=None if gpus else threads)
    return ((row["id"], row["reason"] or _decode(row["blob"])) for row in ds.iter_rows())
