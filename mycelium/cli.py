"""The `mycelium` command.

    $ mycelium graph gsm8k/test/0
    Janet’s ducks lay [16]q0 eggs per day. She eats [three]q1 for breakfast …
    s0 = sub(q0, q1, q2)              16 - 3 - 4 = 9
    s1 = mul(s0, q3)                  9 * 2 = 18   <- answer

Every error a user can cause prints one line, "error: …", and exits 2.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Optional

import typer

from .errors import BadInput, MyceliumError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Answer math word problems with operation graphs distilled from teacher attention.")
data_app = typer.Typer(no_args_is_help=True, help="List, show and summarise datasets.")
app.add_typer(data_app, name="data")

SourceOpt = typer.Option("local", "--source", help="local, hub, or a path (.jsonl file or dataset folder)")
RootOpt = typer.Option(None, "--data-root", envvar="MYCELIUM_DATA", help="folder of JSON Lines datasets")
WorkersOpt = typer.Option(0, help="solver processes for many questions: 0 = one per CPU core, 1 = this process only")
DtypeOpt = typer.Option("auto", "--encoder-dtype", help="the encoder's arithmetic: auto (bfloat16 where the CPU has "
                        "it natively and it keeps batch-mates apart, else float32), bfloat16 or float32")


@data_app.command("list")
def data_list(root: Optional[str] = RootOpt):
    """Registered datasets, their splits, and the rows found locally."""
    from .config import data_root
    from .data import dataset_spec, registry, splits

    typer.echo(f"data root: {data_root(root)}")
    for name in registry():
        spec = dataset_spec(name)
        for split in splits(name):
            entry = spec["splits"].get(split, {})
            path = data_root(root) / entry["file"] if "file" in entry else None
            rows = sum(1 for line in open(path, encoding="utf-8") if line.strip()) if path and path.is_file() else None
            where = f"{rows} rows" if rows is not None else ("carved from " + spec["dev"]["from"] if split in ("dev", "fit") else "not local")
            typer.echo(f"  {name:<9} {split:<8} {where:<22} hub: {entry.get('hub', '-')}")


@data_app.command("show")
def data_show(problem_id: str, source: str = SourceOpt, root: Optional[str] = RootOpt,
              as_json: bool = typer.Option(False, "--json")):
    """One problem by id, e.g. gsm8k/test/0."""
    from .data import get

    p = get(problem_id, source, root)
    if as_json:
        typer.echo(json.dumps(p.to_json(), ensure_ascii=False, indent=2))
        return
    typer.echo(f"{p.id}\n\nquestion: {p.question}\n\nanswer:   {p.answer}")
    if p.solution:
        typer.echo(f"\nsolution:\n{p.solution}")
    if p.extra:
        typer.echo(f"\nextra: {json.dumps(p.extra, ensure_ascii=False)}")


def split_stats(problems) -> dict:
    from .numbers import find_quantities
    from .reference import annotations

    words = [len(p.question.split()) for p in problems]
    quantities = [len(find_quantities(p.question)) for p in problems]
    stats = {"problems": len(problems),
             "question words (median)": statistics.median(words) if words else 0,
             "quantities per question (mean)": round(statistics.fmean(quantities), 2) if quantities else 0}
    solved = [p for p in problems if p.solution]
    if solved and any("<<" in p.solution for p in solved):
        stats["annotated steps (mean)"] = round(statistics.fmean(len(annotations(p.solution)) for p in solved), 2)
    return stats


@data_app.command("stats")
def data_stats(dataset: str, split: Optional[str] = typer.Option(None, help="default: every split"),
               source: str = SourceOpt, root: Optional[str] = RootOpt):
    """Sizes, question lengths and quantity counts of a dataset."""
    from .data import load, splits

    for s in [split] if split else splits(dataset):
        try:
            problems = load(dataset, s, source, root)
        except MyceliumError as e:
            if split:
                raise
            typer.echo(f"{dataset}/{s}: unavailable ({e})")
            continue
        typer.echo(f"{dataset}/{s}: " + ", ".join(f"{k} {v}" for k, v in split_stats(problems).items()))


@app.command()
def graph(problem_id: Optional[str] = typer.Argument(None, help="e.g. gsm8k/test/0"),
          coverage: bool = typer.Option(False, "--coverage", help="share of a split whose graph re-executes to gold"),
          split: str = typer.Option("train", help="with --coverage: the GSM8K split"),
          as_json: bool = typer.Option(False, "--json"),
          source: str = SourceOpt, root: Optional[str] = RootOpt):
    """A problem's reference operation graph, or the coverage of reference graphs."""
    from .data import get, load
    from .executor import execute
    from .graph import render
    from .reference import coverage as measure, reference_graph

    if coverage:
        result = measure(load("gsm8k", split, source, root), progress=sys.stderr.isatty())
        typer.echo(json.dumps({"split": split, "coverage_percent": round(result.percent, 2), "ok": result.ok,
                               "total": result.total, "reasons": dict(result.reasons)}) if as_json else result.table())
        return
    if not problem_id:
        raise BadInput("give a problem id (e.g. gsm8k/test/0) or --coverage")
    g = reference_graph(get(problem_id, source, root))
    run = execute(g)
    if as_json:
        typer.echo(json.dumps({**g.to_json(), "values": [str(v) for v in run.values],
                               "error": str(run.error) if run.error else None}, ensure_ascii=False, indent=2))
        return
    typer.echo(render(g, run.values))
    typer.echo(f"\nanswer: {run.answer}" if run.ok else f"\nexecutor error: {run.error}")


RunOpt = typer.Option("runs/default", "--run", help="run folder: every stage reads and writes inside it")
trace_app = typer.Typer(help="Capture teacher attention traces (and `trace show ID` to read one).")
app.add_typer(trace_app, name="trace")


def _ints(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"expected comma-separated integers, got {text!r}") from None


@trace_app.callback(invoke_without_command=True)
def trace(ctx: typer.Context,
          dataset: str = typer.Option("gsm8k"), split: str = typer.Option("train"),
          limit: Optional[int] = typer.Option(None, help="first N problems of the split"),
          mode: str = typer.Option("forced", help="forced (reference solution) or generate (teacher's own, kept if correct)"),
          teacher: str = typer.Option("smollm2", help="smollm2 (embedded), a hub id, a folder, or a .gguf file"),
          dtype: str = typer.Option("float32", help="float32, bfloat16 or float16"),
          device: str = typer.Option("auto", help="auto, cpu or cuda"),
          layers: Optional[str] = typer.Option(None, help="comma-separated layer indices (default: all)"),
          heads: Optional[str] = typer.Option(None, help="comma-separated head indices (default: all)"),
          shard_size: int = typer.Option(16), max_new_tokens: int = typer.Option(256),
          trust_remote_code: bool = typer.Option(False, help="allow the teacher's own modelling code"),
          engine: str = typer.Option("local", help="local (in-process) or ray"),
          ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a local instance)"),
          run_dir: str = RunOpt, source: str = SourceOpt, root: Optional[str] = RootOpt):
    """Trace a dataset split: one teacher pass per problem, attention reduced to the problem tokens."""
    if ctx.invoked_subcommand is not None:
        return
    from pathlib import Path

    from .data import load
    from .teacher import TeacherConfig
    from .trace import TraceConfig
    from .tracer import run_traces

    if limit is not None and limit < 1:
        raise BadInput("--limit must be at least 1")
    problems = load(dataset, split, source, root)[:limit]
    cfg = TraceConfig(teacher=TeacherConfig(model=teacher, dtype=dtype, device=device, trust_remote_code=trust_remote_code),
                      mode=mode, layers=_ints(layers), heads=_ints(heads), shard_size=shard_size,
                      max_new_tokens=max_new_tokens)
    out = Path(run_dir) / "traces"
    stats = run_traces(problems, cfg, out, engine, ray_address, progress=True,
                       inputs={"dataset": dataset, "split": split, "limit": limit, "source": source})
    typer.echo(f"{stats['traced']} traces in {out} ({(stats['bytes_per_problem'] or 0) / 1e6:.2f} MB/problem"
               + (f", solve rate {stats['solve_rate']:.1%}" if mode == "generate" else "") + ")")
    typer.echo(json.dumps(stats["last_run"]))


@trace_app.command("show")
def trace_show(problem_id: str, run_dir: str = RunOpt,
               layers: Optional[str] = typer.Option(None, help="restrict to these layers (indices into the trace)"),
               heads: Optional[str] = typer.Option(None, help="restrict to these heads")):
    """A trace's summary: tokens, phases, top attended problem tokens per solution line."""
    from pathlib import Path

    from .store import TraceStore
    from .trace import summary

    t = TraceStore(Path(run_dir) / "traces").get(problem_id)
    if layers or heads:
        li = [t.layers.index(i) for i in _ints(layers)] if layers else list(range(len(t.layers)))
        hi = [t.heads.index(i) for i in _ints(heads)] if heads else list(range(len(t.heads)))
        t.attn, t.mass = t.attn[li][:, hi], t.mass[li][:, hi]
        t.layers, t.heads = [t.layers[i] for i in li], [t.heads[i] for i in hi]
    typer.echo(summary(t))


signals_app = typer.Typer(no_args_is_help=True, help="Measure attention signals against gold structure.")
app.add_typer(signals_app, name="signals")


@signals_app.command("report")
def signals_report(run_dir: str = RunOpt,
                   select: int = typer.Option(50, help="traced problems used to choose heads; the rest are held out"),
                   k: int = typer.Option(3, help="provenance heads to choose"),
                   limit: int = typer.Option(500, help="read the first N traces of the run (all are held in memory)")):
    """Boundary, provenance and clause figures with baselines; chooses heads for later stages."""
    from itertools import islice
    from pathlib import Path

    from .quality import report, table
    from .store import TraceStore, atomic_write

    store = TraceStore(Path(run_dir) / "traces")
    traces = list(islice(store, limit))
    if len(traces) < 2:
        raise BadInput(f"the report needs at least 2 traced problems; {len(traces)} in {store.root}")
    rep = report(traces, select=select, k=k)
    rep["inputs"] = {"traces": len(traces), "trace_config_key": store.manifest["config_key"]}
    out = Path(run_dir) / "signals"
    text = table(rep)
    atomic_write(out / "report.json", json.dumps(rep, indent=1).encode())
    atomic_write(out / "report.txt", text.encode())
    typer.echo(text)
    typer.echo(f"\nwrote {out / 'report.json'} and {out / 'report.txt'}")


@app.command()
def show(problem_id: str, run_dir: str = RunOpt, out: Optional[str] = typer.Option(None, help="HTML file to write")):
    """Write the span viewer page for one traced problem."""
    from pathlib import Path

    from .store import TraceStore, atomic_write
    from .viewer import Reading, page

    trace = TraceStore(Path(run_dir) / "traces").get(problem_id)
    rep_path = Path(run_dir) / "signals" / "report.json"
    reading = Reading.from_report(json.loads(rep_path.read_text())) if rep_path.exists() else Reading()
    path = Path(out) if out else Path(run_dir) / "show" / (problem_id.replace("/", "_") + ".html")
    atomic_write(path, page(trace, reading).encode())
    typer.echo(f"wrote {path}")


labels_app = typer.Typer(no_args_is_help=True, help="Build execution-validated training labels from traces.")
app.add_typer(labels_app, name="labels")


@labels_app.command("build")
def labels_build(run_dir: str = RunOpt, source: str = SourceOpt, root: Optional[str] = RootOpt,
                 min_uses: int = typer.Option(5, help="uses a value needs before it can be a domain constant"),
                 regions: str = typer.Option("attention", help="step regions: attention (the IAF map's run of clauses) "
                                             "or anchored (widened to the clauses of the step's quantity operands)")):
    """Labels for every traced problem; the domain-constant table from GSM8K fit."""
    import hashlib
    from pathlib import Path

    from .data import load
    from .errors import MissingFile
    from .labels import REGIONS, build, constant_table, mark_bridging
    from .store import TraceStore, atomic_write
    from .viewer import Reading

    if regions not in REGIONS:
        raise BadInput(f"unknown regions {regions!r}; use one of {', '.join(REGIONS)}")
    run = Path(run_dir)
    if not (run / "traces" / "manifest.json").exists():
        raise MissingFile(f"no traces in {run / 'traces'}: run `mycelium trace --run {run_dir}` first")
    rep_path = run / "signals" / "report.json"
    if not rep_path.exists():
        raise MissingFile(f"no signals in {run / 'signals'}: run `mycelium signals report --run {run_dir}` first")
    store = TraceStore(run / "traces")
    if not len(store):
        raise BadInput(f"{run / 'traces'} holds no traces")
    table = constant_table(load("gsm8k", "fit", source, root), min_uses)
    constants = {r["value"] for r in table if r["kept"]}
    # GSM8K, and any other dataset the run traced (ids are dataset/split/row), e.g. ASDiv fit as extra training data
    traced = {tuple(i.split("/")[:2]) for i in store.done()} | {("gsm8k", "train"), ("gsm8k", "test")}
    problems = {p.id: p for name, split in sorted(traced) for p in load(name, split, source, root)}
    reading = Reading.from_report(json.loads(rep_path.read_text()))
    examples, dropped = build(problems, store, reading, constants, progress=sys.stderr.isatty(), regions=regions)
    threshold = mark_bridging(examples)
    out = run / "labels"
    atomic_write(out / "labels.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode())
    atomic_write(out / "constants.json", json.dumps(table, indent=1).encode())
    total = len(examples) + sum(dropped.values())
    manifest = {"traces_config_key": store.manifest["config_key"], "examples": len(examples), "traced": total,
                "coverage_percent": round(100 * len(examples) / max(total, 1), 2), "dropped": dict(dropped),
                "bridging_threshold_problem_mass": threshold, "constants": sorted(constants),
                "signals_sha1": hashlib.sha1(rep_path.read_bytes()).hexdigest(), "regions": regions}
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    typer.echo(f"{len(examples)}/{total} traced problems labelled ({manifest['coverage_percent']}%), "
               f"dropped: {dict(dropped) or 'none'}")
    typer.echo("domain constants (orphaned in > 80% of uses): " + ", ".join(
        f"{r['value']} ({r['orphaned']}/{r['uses']})" for r in table if r["kept"]))
    typer.echo(f"wrote {out / 'labels.jsonl'}")


@labels_app.command("templates")
def labels_templates(run_dir: str = RunOpt, clusters: int = typer.Option(8, help="the taxonomy level C2 uses"),
                     seed: int = typer.Option(0)):
    """Operation templates by Information Bottleneck clustering (annealed β); adds a template to every step."""
    from pathlib import Path

    import numpy as np

    from .executor import execute
    from .graph import Graph
    from .store import atomic_write
    from .templates import RESULT_TYPES, anneal, purity, result_type, smooth_labels, step_embeddings

    path = Path(run_dir) / "labels" / "labels.jsonl"
    rows = labelled_rows(run_dir)
    x, where = step_embeddings(rows)
    y = np.array([result_type(execute(Graph.from_json(rows[i]["graph"])).values[k]) for i, k in where])
    fit = anneal(smooth_labels(x, y, len(RESULT_TYPES)), np.geomspace(0.05, 200, 50), seed=seed)
    assign = np.unique(fit.assign(clusters), return_inverse=True)[1]  # templates numbered 0..n-1
    ops = [rows[i]["steps"][k]["op"] for i, k in where]
    table = purity(assign, ops)
    for t in table:
        members = [j for j in np.nonzero(assign == t["template"])[0][:3]]
        t["examples"] = [rows[where[j][0]]["question"][slice(*(rows[where[j][0]]["steps"][where[j][1]]["region"] or (0, 80)))]
                         for j in members]
        t["result types"] = {RESULT_TYPES[c]: int(n) for c, n in zip(*np.unique(y[assign == t["template"]], return_counts=True))}
    for j, (i, k) in enumerate(where):
        rows[i]["steps"][k]["template"] = int(assign[j])
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    report = {"splits": fit.splits, "level": int(len(np.unique(assign))), "templates": table, "steps": len(where)}
    atomic_write(path.parent / "templates.json", json.dumps(report, indent=1, ensure_ascii=False).encode())
    typer.echo("β at which templates split: " + ", ".join(f"{s['beta']:.3g} → {s['clusters']}" for s in fit.splits))
    for t in table:
        typer.echo(f"  template {t['template']}: {t['size']} steps, {t['purity']:.0%} {t['majority']}, "
                   f"e.g. “{t['examples'][0][:60]}”")
    typer.echo(f"wrote {path.parent / 'templates.json'}")


@labels_app.command("augment")
def labels_augment(run_dir: str = RunOpt, source: str = SourceOpt, root: Optional[str] = RootOpt,
                   copies: int = typer.Option(2, help="new-number copies of each training problem (0: none)"),
                   seed: int = typer.Option(0, help="the draw; another seed gives other numbers")):
    """New-number copies of the training problems' labels (augment.py): RUN/labels/augmented.jsonl.

    GSM8K dev and test problems get none; `mycelium train --augmented` trains on the copies beside the labels."""
    import hashlib
    from pathlib import Path

    from tqdm import tqdm

    from .augment import augment
    from .data import load
    from .store import atomic_write

    if copies < 0:
        raise BadInput(f"--copies must be 0 or more (got {copies})")
    rows = labelled_rows(run_dir)
    held = {p.id for split in ("dev", "test") for p in load("gsm8k", split, source, root)}
    made = []
    for row in tqdm(rows, desc="augment", unit="problem", disable=not sys.stderr.isatty()):
        if row["id"] not in held:
            made += augment(row, copies, seed)
    out = Path(run_dir) / "labels"
    atomic_write(out / "augmented.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in made).encode())
    manifest = {"labels_sha1": hashlib.sha1((out / "labels.jsonl").read_bytes()).hexdigest(), "copies": copies,
                "seed": seed, "examples": len(made), "problems": len({e["augmented_from"] for e in made}),
                "of": sum(r["id"] not in held for r in rows)}
    atomic_write(out / "augmented.json", json.dumps(manifest, indent=1).encode())
    typer.echo(f"{manifest['examples']} copies of {manifest['problems']} of {manifest['of']} training problems "
               f"(the others use an orphan operand, or no number in digits, or no draw kept whole results whole)")
    typer.echo(f"wrote {out / 'augmented.jsonl'}")


def augmented_rows(run_dir: str) -> list[dict]:
    """RUN/labels/augmented.jsonl, checked to be made from the run's current labels."""
    import hashlib
    from pathlib import Path

    from .errors import MissingFile

    out = Path(run_dir) / "labels"
    if not (out / "augmented.json").exists():
        raise MissingFile(f"no augmented labels in {out}: run `mycelium labels augment --run {run_dir}` first")
    made = json.loads((out / "augmented.json").read_text())
    if made["labels_sha1"] != hashlib.sha1((out / "labels.jsonl").read_bytes()).hexdigest():
        raise BadInput(f"{out / 'augmented.jsonl'} was made from other labels: run `mycelium labels augment` again")
    return read_rows(out / "augmented.jsonl")


def operand_constants(run, min_uses: int) -> list[str]:
    """C3's constant vocabulary: the domain constants (> 80% orphaned) and the values solutions often use
    without the problem or an earlier step supplying them (2 for "half", 60 for minutes per hour, …)."""
    table = json.loads((run / "labels" / "constants.json").read_text())
    return [r["value"] for r in table if r["kept"] or r["orphaned"] >= min_uses]


def read_rows(path) -> list[dict]:
    """A JSON Lines file's rows; split on newlines only, not `splitlines`: U+2028 may sit in a question."""
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def labelled_rows(run_dir: str, students: str | None = None) -> list[dict]:
    """The run's labels (labels/labels.jsonl), and the student graphs of `mycelium improve` when a file is given."""
    from pathlib import Path

    from .errors import MissingFile

    path = Path(run_dir) / "labels" / "labels.jsonl"
    if not path.exists():
        raise MissingFile(f"no labels in {path.parent}: run `mycelium labels build --run {run_dir}` first")
    rows = read_rows(path)
    if not rows:
        raise BadInput(f"{path} holds no examples")
    if students:
        if not Path(students).exists():
            raise MissingFile(f"no student graphs at {students}: run `mycelium improve --run {run_dir}` first")
        rows += read_rows(Path(students))
    return rows


@app.command("train")
def train_cmd(run_dir: str = RunOpt,
              specialist: str = typer.Option("all", help="C1..C6 (comma-separated) or all"),
              backbone: str = typer.Option("minilm", help="minilm (embedded), a hub id, or a folder"),
              encoder_layers: Optional[int] = typer.Option(None, help="keep the backbone's first N layers (default: "
                                                           "all); the model folder is then BACKBONE-lN"),
              epochs: int = typer.Option(8), batch_size: int = typer.Option(16), seed: int = typer.Option(0),
              patience: int = typer.Option(2, help="stop after this many epochs without a better dev score; raise it "
                                           "with --epochs to continue a run that stopped early"),
              schedule: str = typer.Option("constant", help="the learning rate: constant, or linear (falls to 0 at "
                                           "the last epoch; then raising --epochs starts the run over)"),
              plan_loss_weight: float = typer.Option(0.3, help="C1's plan loss is multiplied by this (1: the plain sum)"),
              device: str = typer.Option("cpu", help="cpu, or cuda where there is a GPU"),
              limit: Optional[int] = typer.Option(None, help="train on the first N training examples"),
              c2_labels: str = typer.Option("ops", help="C2's label set: ops, or templates (labels templates)"),
              constant_uses: int = typer.Option(20, help="C3's constant vocabulary: the table's domain constants "
                                                "plus values orphaned at least this often"),
              students: Optional[str] = typer.Option(None, help="also train on these student graphs (a file written "
                                                     "by `mycelium improve`, e.g. RUN/labels/students.jsonl)"),
              augmented: bool = typer.Option(False, "--augmented", help="also train on the new-number copies of "
                                             "`mycelium labels augment` (RUN/labels/augmented.jsonl)"),
              out_dir: Optional[str] = typer.Option(None, "--out", help="model folder (default: RUN/models/BACKBONE)"),
              step_reader: bool = typer.Option(False, help="each step reads the whole question (a cross-attention) "
                                               "before the step heads; off: measured worse on GSM8K dev"),
              c3_used: bool = typer.Option(True, "--c3-used/--no-c3-used", help="C3 reads which candidates the "
                                           "graph's earlier steps read"),
              plan_used: bool = typer.Option(True, "--plan-used/--no-plan-used", help="C1's plan reads which clauses "
                                             "the plan's earlier steps read"),
              any_order: bool = typer.Option(True, "--any-order/--labelled-order", help="C3's loss takes the operands "
                                             "of a sum or product in any order"),
              ema: float = typer.Option(0.999, help="dev, early stopping and the saved model use a moving average "
                                        "of the weights with this decay per step; 0: the last step's weights"),
              token_dropout: float = typer.Option(0.0, help="replace each training question's word tokens (not "
                                                  "its quantities) by the mask token with this probability")):
    """Train the specialists on the run's labels; GSM8K dev examples decide early stopping."""
    from pathlib import Path

    from .backbone import model_name
    from .config import torch_device
    from .contamination import Overlap, leave_out
    from .data import evaluation_sets, load
    from .errors import MissingFile
    from .specialists import HEADS, SpecialistConfig, Specialists
    from .store import atomic_write
    from .training import TrainConfig, train

    run = Path(run_dir)
    rows = labelled_rows(run_dir, students) + (augmented_rows(run_dir) if augmented else [])
    heads = HEADS if specialist == "all" else tuple(h.strip().lower() for h in specialist.split(","))
    if not set(heads) <= set(HEADS):
        raise BadInput(f"unknown specialist in {specialist!r}; use C1..C6 or all")
    dev_ids = {p.id for p in load("gsm8k", "dev")}
    test_ids = {p.id for p in load("gsm8k", "test")}
    dev = [r for r in rows if r["id"] in dev_ids]
    held = dev_ids | test_ids  # a new-number copy of a held-out problem is held out with it
    train_set = [r for r in rows if r["id"] not in held and r.get("augmented_from") not in held]
    held_out = Overlap(p.question for p in evaluation_sets())  # e.g. ASDiv fit repeats MAWPS test problems
    train_set, contaminated = leave_out(train_set, held_out)
    train_set = train_set[:limit]
    if contaminated:
        typer.echo(f"left out {len(contaminated)} training examples that share {held_out.n} words with an evaluation "
                   f"question (e.g. {contaminated[0]})")
    if constant_uses < 1:
        raise BadInput(f"--constant-uses must be at least 1 (got {constant_uses})")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, patience=patience, schedule=schedule,
                      plan_loss_weight=plan_loss_weight, device=torch_device(device),
                      c3_any_order=any_order, ema=ema, token_dropout=token_dropout)  # checked before the model loads
    constants = operand_constants(run, constant_uses)
    n_templates = 0
    if c2_labels == "templates":
        tpath = run / "labels" / "templates.json"
        if not tpath.exists():
            raise MissingFile(f"no templates in {tpath.parent}: run `mycelium labels templates --run {run_dir}` first")
        n_templates = json.loads(tpath.read_text())["level"]
    elif c2_labels != "ops":
        raise BadInput(f"unknown C2 label set {c2_labels!r}; use ops or templates")
    model = Specialists.create(SpecialistConfig(backbone=backbone, constants=constants, c2_labels=c2_labels,
                                                n_templates=n_templates, encoder_layers=encoder_layers,
                                                step_reader=step_reader, c3_used=c3_used,
                                                plan_used=plan_used), seed=seed)
    out = Path(out_dir) if out_dir else run / "models" / model_name(backbone, encoder_layers)
    state = train(model, train_set, dev, cfg, out, heads)
    best = max(state["history"], key=lambda h: h["score"])
    atomic_write(out / "metrics.json", json.dumps({"best": best, "history": state["history"],
                                                   "train_examples": len(train_set), "dev_examples": len(dev),
                                                   "student_rows": students, "augmented": augmented,
                                                   "left_out_contaminated": contaminated},
                                                  indent=1).encode())
    typer.echo(f"trained on {len(train_set)} examples; best dev epoch {best['epoch']}: " + "  ".join(
        f"{k} {v:.3f}" for k, v in best.items() if k.startswith("c")))
    typer.echo(f"wrote {out}")


@app.command()
def improve(run_dir: str = RunOpt,
            model: Optional[str] = typer.Option(None, "--model", help="the students (default: RUN/models/minilm)"),
            limit: Optional[int] = typer.Option(None, help="the first N GSM8K fit problems (default all)"),
            beam: int = typer.Option(4, help="alternatives kept per step decision"),
            groupings: int = typer.Option(16, help="candidate groupings (step plans) per problem"),
            batch_size: int = typer.Option(32, "--batch-size", help="questions per encoder pass"),
            workers: int = WorkersOpt, dtype: str = DtypeOpt,
            out_file: Optional[str] = typer.Option(None, "--out", help="JSON Lines to write (default: "
                                                   "RUN/labels/students.jsonl; its manifest beside it, .json)"),
            fresh: bool = typer.Option(False, help="harvest again even when the file was made by this model with "
                                       "these settings"),
            source: str = SourceOpt, root: Optional[str] = RootOpt):
    """The self-improving loop's harvest: student graphs that reach gold on GSM8K fit -> labels/students.jsonl.

    Then `mycelium train --students FILE --out DIR` trains on the teacher's labels and these together."""
    import hashlib
    from pathlib import Path

    from .clauses import parse_many
    from .data import load
    from .errors import MissingFile
    from .improve import harvest
    from .store import atomic_write

    if limit is not None and limit < 1:
        raise BadInput(f"--limit must be at least 1 (got {limit})")
    run = Path(run_dir)
    model = model or str(run / "models" / "minilm")
    path = run / "labels" / "labels.jsonl"
    if not path.exists():
        raise MissingFile(f"no labels in {run / 'labels'}: run `mycelium labels build --run {run_dir}` first")
    _require_model(model)
    out = Path(out_file) if out_file else run / "labels" / "students.jsonl"
    problems = load("gsm8k", "fit", source, root)[:limit]  # never dev (early stopping, tuning) nor test
    from .solver import encoder_dtype

    made_from = {"problems": len(problems), "beam": beam, "groupings": groupings, "encoder_dtype": encoder_dtype(dtype),
                 "model_sha1": hashlib.sha1((Path(model) / "model.safetensors").read_bytes()).hexdigest(),
                 "labels_sha1": hashlib.sha1(path.read_bytes()).hexdigest()}
    meta = out.with_suffix(".json")
    if out.exists() and meta.exists() and json.loads(meta.read_text()).get("made_from") == made_from and not fresh:
        typer.echo(f"{out} was harvested by this model with these settings: kept (--fresh to harvest again)")
        return
    solver = _solver(model, beam, groupings, batch_size, keep_graphs=True, workers=workers, encoder_dtype=dtype)
    teacher = {r["id"]: r for r in read_rows(path)}
    questions = [p.question for p in problems]
    examples, counts = harvest(problems, solver.solve_each(questions, "improve"), parse_many(questions), teacher)
    atomic_write(out, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode())
    manifest = {"examples": len(examples), "counts": dict(counts), "model": model, "made_from": made_from}
    atomic_write(meta, json.dumps(manifest, indent=1).encode())
    for k, v in counts.most_common():
        typer.echo(f"{k}: {v} ({v / len(problems):.1%})")
    typer.echo(f"{len(examples)} student graphs join the training set; wrote {out}")


def _require_model(model: str) -> None:
    from pathlib import Path

    from .errors import MissingFile

    if not (Path(model) / "model.safetensors").exists():
        raise MissingFile(f"no trained specialists in {model}: run `mycelium train` first (or pass --model)")


def _solver(model: str | list[str], beam: int, groupings: int, batch_size: int, plan: str = "learned", **more):
    """A solver for --model (one folder, or a committee of several), or for the folders `_models` already read."""
    from .solver import Solver, SolverConfig

    if plan not in ("learned", "enumerate"):
        raise BadInput(f"--plan is learned or enumerate, not {plan!r}")
    config = SolverConfig(beam=beam, groupings=groupings, batch_size=batch_size, plan=plan, **more)  # checks the numbers
    folders = _models(model) if isinstance(model, str) else model
    for folder in folders:
        _require_model(folder)
    if len(folders) > 1:
        from .committee import Committee

        return Committee.load(folders, config)
    return Solver.load(folders[0], config)


def _models(model: str) -> list[str]:
    """--model's folders: one, or several (comma-separated) answering as a committee."""
    folders = [m.strip() for m in model.split(",") if m.strip()]
    if not folders:
        raise BadInput("--model names no model folder")
    if len(set(folders)) < len(folders):
        raise BadInput(f"--model names a folder twice: {model}")
    return folders


ModelOpt = typer.Option("runs/default/models/minilm", "--model", help="a folder written by `mycelium train`; several, "
                        "comma-separated, answer as a committee (the answer with the most scorer mass over them)")
BeamOpt = typer.Option(4, help="alternatives kept per step decision")
GroupingsOpt = typer.Option(16, help="candidate groupings (step plans) per problem")
PlanOpt = typer.Option("learned", help="step regions from C1's learned plan, or 'enumerate'd from C1's spans")
BatchOpt = typer.Option(32, "--batch-size", help="questions per encoder pass")
StepBonusOpt = typer.Option(0.0, "--plan-step-bonus", help="added to C1's plan log prob per step when plans of "
                            "different lengths compete for the candidates (a length prior; 0: none)")


@app.command()
def solve(text: Optional[str] = typer.Argument(None, help="the problem text"),
          model: str = ModelOpt,
          file: Optional[str] = typer.Option(None, "--file", help="JSON Lines with a 'question' per row"),
          out_file: Optional[str] = typer.Option(None, "--out", help="with --file: write the answers here (resumes if killed), not to stdout"),
          as_json: bool = typer.Option(False, "--json"),
          beam: int = BeamOpt, groupings: int = GroupingsOpt, batch_size: int = BatchOpt, plan: str = PlanOpt,
          step_bonus: float = StepBonusOpt, workers: int = WorkersOpt, dtype: str = DtypeOpt):
    """Answer from the question text alone: answer, operation graph, source spans."""
    from pathlib import Path

    from .data import check_question
    from .graph import render

    if text is None and not file:
        raise BadInput("give the problem text, or --file problems.jsonl")
    if out_file and not file:
        raise BadInput("--out goes with --file (one question prints its answer)")
    if text is not None:
        check_question(text)  # before the model loads: bad input fails fast
    if file and not Path(file).exists():
        raise BadInput(f"no such file: {file}")
    solver = _solver(model, beam, groupings, batch_size, plan, plan_step_bonus=step_bonus, workers=workers,
                     encoder_dtype=dtype)
    if file:
        from .data import read_jsonl

        rows = [r for _, r, err in read_jsonl(Path(file)) if not err and isinstance(r, dict)]
        questions = [r.get("question") for r in rows]
        done = _answered(Path(out_file), questions) if out_file else 0
        sink = open(out_file, "a", encoding="utf-8") if out_file else None
        try:
            for q, out in zip(questions[done:], solver.solve_each(questions[done:])):
                line = json.dumps({"question": q, **out.to_json()}, ensure_ascii=False)
                if sink:
                    sink.write(line + "\n")
                    sink.flush()  # a kill loses at most the line being written
                else:
                    typer.echo(line)
        finally:
            if sink:
                sink.close()
        if out_file:
            typer.echo(f"wrote {len(questions)} answers to {out_file}", err=True)
        return
    out = solver.solve(text)
    if as_json:
        typer.echo(json.dumps(out.to_json(), ensure_ascii=False, indent=2))
        return
    if out.graph:
        from .executor import execute

        typer.echo(render(out.graph, execute(out.graph).values))
        typer.echo("\nspans: " + " | ".join(f"“{text[a:b]}”" for a, b in out.spans))
    typer.echo(f"\nanswer: {out.answer}" if out.answer is not None else f"\nno answer: {out.reason}")


def _answered(path, questions: list) -> int:
    """How many of `questions`, from the first, an earlier run already answered in `path`; the file is
    cut back to exactly those lines (a kill can leave half a line)."""
    from .store import atomic_write

    if not path.is_file():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if len(kept) >= len(questions) or not isinstance(row, dict) or row.get("question") != questions[len(kept)]:
            break
        kept.append(line)
    if not kept and path.stat().st_size:
        raise BadInput(f"{path} holds answers to other questions: remove it or choose another --out")
    atomic_write(path, "".join(x + "\n" for x in kept).encode())
    if kept:
        typer.echo(f"resuming: {len(kept)} of {len(questions)} questions already answered in {path}", err=True)
    return len(kept)


@app.command("eval")
def eval_cmd(dataset: str = typer.Option("gsm8k", help="comma-separated: gsm8k, svamp, gsm_hard, asdiv, mawps, math500"),
             split: str = typer.Option("test", help="test: each dataset's held-out split (ASDiv's is dev: the "
                                       "rest of it is training data); or dev, fit, ..."), model: str = ModelOpt,
             out: Optional[str] = typer.Option(None, help="report folder (default: <model>/../../eval)"),
             limit: Optional[int] = typer.Option(None, help="first N problems of each dataset"),
             beam: int = BeamOpt, groupings: int = GroupingsOpt, batch_size: int = BatchOpt, workers: int = WorkersOpt,
             dtype: str = DtypeOpt, threshold: float = typer.Option(0.5, help="C1 relevance a clause needs to be a span"),
             wiring_weight: float = typer.Option(1.0, help="weight of C5's wiring score"),
             plan: str = PlanOpt, plan_weight: float = typer.Option(1.0, help="weight of C1's plan score"),
             step_bonus: float = StepBonusOpt,
             scorer: bool = typer.Option(True, "--scorer/--no-scorer", help="rank with the model's scorer.json if any"),
             source: str = SourceOpt, root: Optional[str] = RootOpt,
             fresh: bool = typer.Option(False, help="solve everything again, ignoring the answers of a killed run")):
    """Accuracy, oracle@k (diagnostic), error attribution and problems/s; JSON Lines + HTML report.

    Answers are saved as they come (in <out>/partial/); a killed evaluation
    started again with the same model and settings goes on where it stopped."""
    import hashlib
    from pathlib import Path

    from .data import held_out_split, load, splits
    from .evaluate import evaluate, table, write
    from .scorer import provenance

    names = [d.strip() for d in dataset.split(",") if d.strip()]
    if not names:
        raise BadInput("--dataset names no dataset")
    if limit is not None and limit < 1:
        raise BadInput(f"--limit is a number of problems, at least 1 (got {limit})")
    known = sorted({s for n in names for s in splits(n)})
    if split not in known:
        raise BadInput(f"unknown split {split!r}; the splits of {', '.join(names)}: {', '.join(known)}")
    # "test" means each dataset's held-out split: ASDiv's is dev, the rest of its test split being training data
    which = {n: split if split in splits(n) and split != "test" else held_out_split(n) for n in names}
    folders = _models(model)
    folder = Path(out) if out else Path(folders[0]).parent.parent / "eval"
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"--out is the report's folder, and {folder} is a file")
    problems = {n: load(n, which[n], source, root)[:limit] for n in names}
    solver = _solver(folders, beam, groupings, batch_size, plan, threshold=threshold, wiring_weight=wiring_weight,
                     plan_weight=plan_weight, plan_step_bonus=step_bonus, scorer=scorer, workers=workers,
                     encoder_dtype=dtype)

    def made(member_folder: str, member) -> dict:
        """What made a member's answers: its weights, its scorer, the solver's settings."""
        scorer_file = Path(member_folder) / "scorer.json"
        return provenance(Path(member_folder), solver=solver.settings(),
                          scorer=hashlib.sha1(scorer_file.read_bytes()).hexdigest() if member.scorer else None)

    made_by = (made(folders[0], solver) if len(folders) == 1 else  # one model: as before, so its partial answers resume
               {"committee": [made(m, member) for m, member in zip(folders, solver.solvers)]})
    partial = {n: folder / "partial" / f"{n}_{which[n]}.jsonl" for n in names}
    for path in partial.values() if fresh else ():
        path.unlink(missing_ok=True)
    results = [evaluate(solver, ps, f"{n}/{which[n]}", progress=True, resume=partial[n],
                        fingerprint={**made_by, "dataset": f"{n}/{which[n]}", "source": source})
               for n, ps in problems.items()]
    index = write(results, folder)
    for path in partial.values():  # the report holds every answer now
        path.unlink(missing_ok=True)
    if (folder / "partial").is_dir() and not any((folder / "partial").iterdir()):
        (folder / "partial").rmdir()
    typer.echo(table(results))
    typer.echo(f"wrote {index}")


@app.command("scorer")
def scorer_cmd(model: str = ModelOpt,
               split: str = typer.Option("fit", help="GSM8K split to fit on (dev: then the held-out figure is cross-validated)"),
               limit: int = typer.Option(0, help="first N problems of that split, and of each extra fit split (0: all)"),
               extra: str = typer.Option("asdiv", help="also fit on these datasets' fit splits (comma-separated; none: "
                                         "GSM8K only), less any problem that shares a 13-word run with an evaluation set"),
               seeds: int = typer.Option(5, help="MLPs fitted with seeds 0..N-1 and averaged (one fit moves a point "
                                         "or two with its seed)"),
               dev_limit: Optional[int] = typer.Option(None, help="first N GSM8K dev problems to report on (default all)"),
               folds: int = typer.Option(5, help="cross-validation folds when fitting on dev"),
               beam: int = BeamOpt, groupings: int = GroupingsOpt, step_bonus: float = StepBonusOpt,
               batch_size: int = BatchOpt, workers: int = WorkersOpt,
               dtype: str = DtypeOpt, source: str = SourceOpt, root: Optional[str] = RootOpt,
               refit: bool = typer.Option(False, help="fit again even when scorer.json was fitted on this model with these settings")):
    """Fit the learned ranking of candidate graphs (scorer.json beside the model) and report it on GSM8K dev."""
    from pathlib import Path

    from .answer import answers_match
    from .contamination import Overlap
    from .data import evaluation_sets, load, splits
    from .scorer import Scorer, cross_validate, fit, labelled, provenance, top1
    from .solver import encoder_dtype

    extras = [] if extra.strip().lower() in ("", "none") else [x.strip().lower() for x in extra.split(",")]
    for name in extras:
        if name == "gsm8k" or "fit" not in splits(name):  # an unknown name is refused by `splits`
            raise BadInput(f"--extra takes datasets with a fit split other than GSM8K (e.g. asdiv), not {name!r}")
    if limit < 0 or (dev_limit is not None and dev_limit < 1):
        raise BadInput("--limit is 0 (all) or a number of problems; --dev-limit at least 1")
    if seeds < 1:
        raise BadInput(f"--seeds must be at least 1 (got {seeds})")
    if split not in ("fit", "dev"):  # train holds dev, which the scorer is reported on; test is for reported numbers only
        raise BadInput(f"--split is fit or dev (the scorer is reported on dev; test is for reported numbers only), not {split!r}")
    if split == "dev" and folds < 2:
        raise BadInput(f"--folds must be at least 2 to hold anything out (got {folds})")
    _require_model(model)
    limit = limit or None  # 0: all
    path = Path(model) / "scorer.json"
    wanted = provenance(Path(model), split=split, limit=limit, beam=beam, groupings=groupings, seeds=seeds,
                        encoder_dtype=encoder_dtype(dtype),  # its features come from the encoder's states
                        **({"extra": extras} if extras else {}),  # none: as before the option, so older scorers are kept
                        **({"plan_step_bonus": step_bonus} if step_bonus else {}))  # likewise
    fitted = Scorer.load(path)
    if fitted is not None and fitted.fitted_on == wanted and fitted.dev_accuracy is not None and not refit:
        typer.echo(f"{path} is fitted on this model with these settings: kept (--refit to fit again)")
        return
    solver = _solver(model, beam, groupings, batch_size, scorer=False, keep_features=True, plan_step_bonus=step_bonus,
                     workers=workers, encoder_dtype=dtype)

    def candidates(name: str, n: Optional[int], dataset: str = "gsm8k", held: Overlap | None = None) -> tuple[list, float]:
        """Per problem: ([candidate, feature], [candidate] reaches gold); and the log-probability ranking's accuracy.
        `held`: problems that overlap it are left out."""
        problems = [p for p in load(dataset, name, source, root) if held is None or not held.hits(p.question)][:n]
        if not problems:
            raise BadInput(f"no problems in {dataset}/{name}")
        groups, first = [], 0
        for p, sol in zip(problems, solver.solve_each([p.question for p in problems], f"solve {dataset}/{name}")):
            groups.append(labelled(sol.candidates, p.answer))  # streamed: candidates are not kept
            first += answers_match(sol.answer, p.answer)
        return groups, first / len(problems)

    train, train_first = candidates(split, limit)
    # Fitted on GSM8K alone, the scorer learns GSM8K's lengths and favours two-step graphs for one-step questions.
    held = Overlap(p.question for p in evaluation_sets(source, root)) if extras else None  # ASDiv fit repeats MAWPS test
    more = {name: candidates("fit", limit, name, held)[0] for name in extras}
    more_groups = [g for groups in more.values() for g in groups]
    scorer = fit(train + more_groups, seeds=seeds)
    scorer.fitted_on = wanted
    typer.echo(f"fitted on {len(train)} GSM8K {split} problems" + "".join(
        f" and {len(groups)} {name} fit problems" for name, groups in more.items()) + " (gold among the candidates for "
        f"{sum(bool(y.any()) for _, y, _ in train + more_groups)})")
    if split == "dev":
        dev, first = train, train_first
        held_out = cross_validate(dev, folds, extra=more_groups, seeds=seeds)
        how = f"{folds}-fold cross-validated"
    else:
        dev, first = candidates("dev", dev_limit)
        held_out = top1(dev, scorer)
        how = "held out"
    typer.echo(f"GSM8K dev ({len(dev)}, {how}): {first:.1%} (log-probability ranking) → {held_out:.1%} (scorer)")
    scorer.dev_accuracy = held_out
    scorer.save(path)
    typer.echo(f"wrote {path}")


@app.command()
def quantities(text: str = typer.Argument(..., help="problem text")):
    """The quantities the lexer finds in a text, with their spans and values."""
    from .data import check_question
    from .graph import Graph, marked_question
    from .numbers import find_quantities

    qs = find_quantities(check_question(text))
    typer.echo(marked_question(Graph(text, qs, [])))
    for i, q in enumerate(qs):
        typer.echo(f"  q{i}  {q.text!r:<16} value {q.value}  chars {q.start}-{q.end}" + ("  percent" if q.percent else ""))


@app.command()
def run(preset: str = typer.Option("quick", help="quick (about 10 minutes on 2 cores) or full (all of GSM8K train)"),
        config: Optional[str] = typer.Option(None, help="a YAML file of pipeline settings (overrides the preset)"),
        run_dir: Optional[str] = typer.Option(None, "--run", help="run folder (default: the preset's)"),
        engine: Optional[str] = typer.Option(None, help="local or ray (tracing)"),
        root: Optional[str] = RootOpt):
    """The main job: trace, signals, labels, train and eval on the embedded defaults; every stage cached."""
    import dataclasses

    from .config import load_config
    from .pipeline import PRESETS, PipelineConfig, run as run_pipeline

    if preset not in PRESETS:
        raise BadInput(f"unknown preset {preset!r}; use {' or '.join(PRESETS)}")
    cfg = PRESETS[preset]
    if config:
        cfg = load_config(PipelineConfig, config, base=cfg)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("run", run_dir), ("engine", engine)) if v})
    run_pipeline(cfg, root)


def main() -> None:
    try:
        app()
    except MyceliumError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
