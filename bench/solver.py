"""Solver throughput and accuracy against the teacher answering with chain-of-thought, on the same problems.

    $ python bench/solver.py --model runs/main/models/minilm --cot-limit 8 --stages 640
    system                                   problems   problems/s  accuracy  s/problem
    solver minilm (6 layers, 16 plans)           1319       117.41     15.5%     0.0085
    teacher CoT (smollm2, greedy)                   8         0.39      0.0%     2.5918
    solver minilm (6 layers, 16 plans) / CoT throughput ratio: 304×   (same first 8 problems: solver 0.0%, CoT 0.0%)
    ...
    ms per problem on one core (first 640, batches of 64, no pipeline)
    system                                   before encoder  encoder   after   total
    solver minilm (6 layers, 16 plans)                  2.9      6.0     6.6    15.5

Stop 30's model (C3 reads what the graph's earlier steps read; `decode` step by step). The machine's speed
wanders by 10-20% between runs: stop 29's model, benched right after on the same code, gave 93.2 problems/s
(18.6 ms on one core), where stop 29 had measured 100.9 (15.3 ms), on the same machine as stop 28's 103.4
problems/s (13.0%).

The whole of GSM8K test on stop 28's 2-core AMD EPYC with AVX-512 bfloat16, where `--encoder-dtype auto`
takes bfloat16 (the batch-invariance probe holds there). The same model and machine before stop 28's two
changes (batches cut at rounded token lengths; spaCy's products in torch): 82.4 problems/s, 4.9 / 9.2 /
7.4 ms, the same answers. Stop 27's collector pause took it from 69.8 to 81.4. On stop 26's Intel Xeon
with AMX, `auto` chose float32 (66.6 problems/s); bfloat16 by name gave 108.9 there, where its rows are
not batch-invariant.
`--model A,B` puts several models side by side.

The solver runs on every problem in batches (one encoder pass per batch); the
teacher generates a greedy chain-of-thought (batched, left-padded) for the
first --cot-limit of the same problems, and its last written number is its
answer. Both are timed after loading, on this machine's cores. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mycelium.answer import answers_match  # noqa: E402
from mycelium.data import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/main/models/minilm",
                    help="a model folder, or several comma-separated: each is timed on the same problems, side by side")
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="problems for the solver (default: the whole split)")
    ap.add_argument("--cot-limit", type=int, default=100, help="of the same problems, how many the teacher answers")
    ap.add_argument("--cot-batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--teacher", default="smollm2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="solver processes: 0 = one per CPU core, 1 = in-process")
    ap.add_argument("--encoder-dtype", default="auto", help="auto (bfloat16 where the CPU has it), bfloat16 or float32")
    ap.add_argument("--groupings", type=int, default=None, help="plans per problem (default: the solver's, 16)")
    ap.add_argument("--stages", type=int, default=0, help="also time each stage (before the encoder, the encoder, "
                    "after it) per problem on one core, over the first N problems")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.cot_limit < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--limit and --cot-limit must be at least 1: the ratio needs problems on both sides")

    import torch
    from tqdm import tqdm

    from mycelium.errors import MyceliumError
    from mycelium.teacher import Teacher, TeacherConfig
    from mycelium.tracer import final_number

    try:
        problems = load(args.dataset, args.split)[: args.limit]
        folders = [m.strip() for m in args.model.split(",") if m.strip()]
        for folder in folders:
            if not (Path(folder) / "model.safetensors").is_file():
                ap.error(f"no trained specialists in {folder}: run `mycelium train` first (or pass --model)")
        # Each model on the same problems in turn, warm before its clock starts, with the cores to itself.
        solved = [solver_run(folder, problems, args) for folder in folders]
        stages = [stage_times(folder, problems[: args.stages], args) for folder in folders] if args.stages else []
    except MyceliumError as e:
        ap.error(str(e))

    cot = problems[: args.cot_limit]
    teacher = Teacher.load(TeacherConfig(model=args.teacher, threads=torch.get_num_threads()))
    t0 = time.monotonic()
    texts = []
    for i in tqdm(range(0, len(cot), args.cot_batch), desc="teacher CoT", unit="batch"):
        texts += teacher.generate_batch([p.question for p in cot[i:i + args.cot_batch]], args.max_new_tokens)
    cot_s = time.monotonic() - t0
    cot_ok = [answers_match(final_number(t), p.answer) for t, p in zip(texts, cot)]

    cot_row = (f"teacher CoT ({args.teacher}, greedy)", len(cot), len(cot) / cot_s, sum(cot_ok) / max(len(cot), 1))
    rows = [(name, len(problems), len(problems) / secs, sum(ok) / len(problems)) for name, secs, ok, _ in solved]
    print(f"\n{'system':<40}{'problems':>9}{'problems/s':>13}{'accuracy':>10}{'s/problem':>11}")
    for name, n, rate, acc in rows + [cot_row]:
        print(f"{name:<40}{n:>9}{rate:>13.2f}{100 * acc:>9.1f}%{1 / rate:>11.4f}")
    same = [sum(ok[: len(cot)]) / max(len(cot), 1) for _, _, ok, _ in solved]
    for row, acc in zip(rows, same):
        print(f"{row[0]} / CoT throughput ratio: {row[2] / cot_row[2]:.0f}×   (same first {len(cot)} problems: solver "
              f"{100 * acc:.1f}%, CoT {100 * cot_row[3]:.1f}%)")
    print(f"solver processes: {solved[0][3]}   teacher threads: {torch.get_num_threads()}")
    if stages:
        print(f"\nms per problem on one core (first {args.stages}, batches of {args.batch_size}, no pipeline)")
        print(f"{'system':<40}{'before encoder':>15}{'encoder':>9}{'after':>8}{'total':>8}")
        for row, times in zip(rows, stages):
            print(f"{row[0]:<40}" + "".join(f"{1000 * t:>{w}.1f}" for t, w in zip(times + [sum(times)], (15, 9, 8, 8))))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": [dict(zip(("system", "problems", "problems_per_s", "accuracy"), r))
                                                       for r in rows + [cot_row]],
                                              "ratio": rows[0][2] / cot_row[2],  # the first model's
                                              "ratios": {r[0]: r[2] / cot_row[2] for r in rows},
                                              "solver_accuracy_on_cot_problems": same[0],
                                              "solver_processes": solved[0][3],
                                              "stage_seconds_per_problem": {r[0]: dict(zip(("before", "encoder", "after"), t))
                                                                            for r, t in zip(rows, stages)},
                                              "examples": [{"id": p.id, "cot": t} for p, t in zip(cot[:5], texts)]},
                                             indent=1))


def load_solver(folder: str, args, workers: int):
    from mycelium.solver import Solver, SolverConfig

    return Solver.load(folder, SolverConfig(batch_size=args.batch_size, workers=workers, encoder_dtype=args.encoder_dtype,
                                            **({"groupings": args.groupings} if args.groupings else {})))


def stage_times(folder: str, problems, args) -> list[float]:
    """Seconds per problem, on one core, in the solver's three stages: before the encoder (refusals, quantities,
    tokens, spaCy's clauses), the encoder (and C1's relevance), and after it (plans, heads, decoding, execution,
    ranking). The stages run one after the other here, not pipelined, so each is timed alone."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        solver = load_solver(folder, args, workers=1)
        questions = [p.question for p in problems]
        solver.solve_batch(questions[: args.batch_size])  # warm-up
        # batched as `solve_each` batches them (by length within windows), not in arrival order
        chunks = [[questions[i] for i in c] for c in solver.batches(questions, solver.config.window * args.batch_size)]
        times = [0.0, 0.0, 0.0]
        for chunk in chunks:
            t0 = time.perf_counter()
            batch = solver._prepare(chunk)
            t1 = time.perf_counter()
            batch = solver._encode(batch)
            t2 = time.perf_counter()
            solver._finish(batch)
            t3 = time.perf_counter()
            for k, t in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                times[k] += t
        return [t / max(len(questions), 1) for t in times]
    finally:
        torch.set_num_threads(threads)


def solver_run(folder: str, problems, args) -> tuple[str, float, list[bool], int]:
    """One model over the problems: its row name, seconds, right or wrong per problem, and solver processes."""
    solver = load_solver(folder, args, args.workers)
    solver.solve_batch([problems[0].question])  # warm-up: spaCy, fastText, first-call allocations
    solver.start()  # the worker processes load the model and warm up before the clock starts
    t0 = time.monotonic()
    sols = list(solver.solve_each([p.question for p in problems], f"solver {Path(folder).name}"))
    secs = time.monotonic() - t0
    workers = solver.workers
    solver.close()  # the next model, then the teacher, get the cores to themselves
    layers = solver.model.encoder.config.num_hidden_layers
    name = f"solver {Path(folder).name} ({layers} layers, {solver.config.groupings} plans)"
    return name, secs, [answers_match(s.answer, p.answer) for s, p in zip(sols, problems)], workers


if __name__ == "__main__":
    main()
