"""The main job: trace → signals → labels → train → scorer → eval, on the embedded defaults, in one run folder.

    $ mycelium run --preset quick           # about 10 minutes on 2 cores
    ── trace gsm8k/dev ──────────────────
    …
    dataset                n   acc %  oracle@k %   prob/s   …
    gsm8k/test           300     3.0        19.0     33.2   …
    asdiv/dev            300     2.3        31.3     42.1   …
    mawps/test           300     0.7        25.0     43.4   …
    wrote runs/quick/eval/index.html

Every stage is the CLI command of the same name, run in-process, and every
stage is cached: traces resume (problems already traced are skipped), the
signals report and the labels are rebuilt only when what they were made from
(trace count and configuration, the report's hash) changed, training resumes from its checkpoint (and starts over when
its labels changed), the scorer is refitted unless it was fitted on these weights with these settings, and evaluation always runs, but goes on from the answers a killed evaluation saved. A killed run started again
with the same command continues where it stopped.

With `improve_rounds: N` (YAML) the run goes on with DESIGN.md §8's
self-improving loop before evaluating: `mycelium improve` harvests the
students' own graphs that reach gold on GSM8K fit, `mycelium train --students`
trains a new model on them and the teacher's labels (models/minilm-r1, …), and
the scorer measures it on GSM8K dev. The loop stops once a round gains under 1
point, and the best model on dev is evaluated. Off by default: one round on
the full preset lost about a point on dev (docs/experiments.md, "self-improving loop").

With `members: N` (YAML) N models answer as a committee (`committee.py`):
the first is trained as above, the others on the same labels with seeds
seed+1, … (models/minilm-s1, …; with the students' graphs too when a
round of the loop above made the kept model), each with its own scorer, and eval pools
their answers. Each member costs a training (about 45 minutes on 2 cores) and
a solve per question. Off by default (one model).

With `augment_copies: N` (YAML) a `labels augment` stage makes N
new-number copies of each training problem's labels (`augment.py`) and every
model trains on them beside the labels. Off by default: two copies left GSM8K
dev where it was (docs/experiments.md, stop 42).

Presets are data (`PRESETS`, or a YAML file given to `--config`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from .errors import BadInput


@dataclass
class PipelineConfig:
    run: str = "runs/main"
    teacher: str = "smollm2"
    backbone: str = "minilm"
    encoder_layers: int | None = None  # keep the backbone's first N layers (None: all); the model is models/BACKBONE-lN
    engine: str = "local"  # or ray: one teacher per core
    dev: int | None = None  # GSM8K dev problems to trace (None: all 500); they decide early stopping
    fit: int | None = None  # GSM8K fit problems to trace (None: all 6,973)
    # Extra training data (../shared/data/README.md allows ASDiv and MAWPS; only ASDiv carries equations to trace):
    # each dataset's fit split is traced too, its dev split held out for evaluation.
    extra: list[str] = field(default_factory=lambda: ["asdiv"])
    extra_limit: int | None = None  # fit problems traced of each extra dataset (None: all; ASDiv's are 1,715)
    select: int = 50  # traces the signals report chooses heads on
    regions: str = "attention"  # step regions of the labels: attention, or anchored on the step's operands
    signals_limit: int = 500  # traces the signals report reads
    epochs: int = 8
    batch_size: int = 16
    schedule: str = "constant"  # the learning rate: constant, or linear (falls to 0 at the last epoch)
    plan_loss_weight: float = 0.3  # C1's plan loss is multiplied by this (1: the plain sum)
    seed: int = 0  # the specialists' new heads and batch order: one seed, one model
    eval_datasets: list[str] = field(default_factory=lambda: ["gsm8k", "asdiv", "mawps"])
    eval_limit: int | None = None  # first N problems of each evaluation set (None: all)
    beam: int = 4
    groupings: int = 16
    scorer_limit: int | None = None  # GSM8K fit problems the scorer is fitted on (None: all 6,973)
    scorer_dev_limit: int | None = None  # GSM8K dev problems it is reported on (None: all 500)
    # The self-improving loop (DESIGN.md §8): rounds of improve → train with the students' graphs → scorer, stopped
    # once GSM8K dev gains under 1 point; 0: none. One round on the full preset: dev 14.6–15.2% → 13.4–14.0%.
    improve_rounds: int = 0
    # Models answering together (committee.py): the first as above, the others trained on the same labels with seeds
    # seed+1, seed+2, … (models/NAME-sSEED), each with its own scorer. Each costs a training and a solve per question.
    members: int = 1
    # New-number copies of each training problem (augment.py; `mycelium labels augment`), trained on beside the
    # labels; 0: none.
    augment_copies: int = 0


PRESETS = {
    "quick": PipelineConfig(run="runs/quick", dev=100, fit=400, extra_limit=100, select=30, epochs=4, eval_limit=300,
                            scorer_limit=200, scorer_dev_limit=100),
    "full": PipelineConfig(),
}


def run(cfg: PipelineConfig, root: str | None = None) -> None:
    from .backbone import model_name
    from .cli import app
    from .store import TraceStore, atomic_write

    if cfg.members < 1:
        raise BadInput(f"members is how many models answer together, at least 1 (got {cfg.members})")

    def stage(name: str, args: list[str]) -> None:
        typer.echo(f"\n── {name} " + "─" * max(0, 60 - len(name)), err=True)
        app(args + (["--data-root", root] if root and args[0] in ("trace", "labels", "scorer", "eval") else []),
            standalone_mode=False)

    run_dir = Path(cfg.run)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "pipeline.json", json.dumps(asdict(cfg), indent=1).encode())
    common = ["--run", cfg.run]
    for split, limit in (("dev", cfg.dev), ("fit", cfg.fit)):  # dev first: the signals report reads the first traces
        stage(f"trace gsm8k/{split}", ["trace", "--split", split, "--teacher", cfg.teacher, "--engine", cfg.engine,
                                       *(["--limit", str(limit)] if limit else []), *common])
    for name in cfg.extra:
        stage(f"trace {name}/fit", ["trace", "--dataset", name, "--split", "fit", "--teacher", cfg.teacher,
                                    "--engine", cfg.engine, *(["--limit", str(cfg.extra_limit)] if cfg.extra_limit else []),
                                    *common])
    store = TraceStore(run_dir / "traces")
    key, n = store.manifest["config_key"], len(store)
    report = run_dir / "signals" / "report.json"
    made_from = {"traces": min(n, cfg.signals_limit), "trace_config_key": key}
    if report.exists() and json.loads(report.read_text()).get("inputs") == made_from:
        typer.echo("\n── signals: cached (made from these traces)", err=True)
    else:
        stage("signals report", ["signals", "report", "--select", str(cfg.select), "--limit", str(cfg.signals_limit),
                                 *common])
    labels = run_dir / "labels" / "manifest.json"
    sha = hashlib.sha1(report.read_bytes()).hexdigest()
    made = json.loads(labels.read_text()) if labels.exists() else {}
    labels_from = (made.get("traced"), made.get("traces_config_key"), made.get("signals_sha1"),
                   made.get("regions", "attention"))  # labels from before the option were attention's
    if labels_from == (n, key, sha, cfg.regions):
        typer.echo("── labels: cached (made from these traces and signals)", err=True)
    else:
        stage("labels build", ["labels", "build", "--regions", cfg.regions, *common])
    augmented = []
    if cfg.augment_copies:
        made = run_dir / "labels" / "augmented.json"
        made = json.loads(made.read_text()) if made.exists() else {}
        labels_sha = hashlib.sha1((run_dir / "labels" / "labels.jsonl").read_bytes()).hexdigest()
        if (made.get("labels_sha1"), made.get("copies"), made.get("seed")) == (labels_sha, cfg.augment_copies,
                                                                               cfg.seed):
            typer.echo("── labels augment: cached (made from these labels)", err=True)
        else:
            stage("labels augment", ["labels", "augment", "--copies", str(cfg.augment_copies), "--seed",
                                     str(cfg.seed), *common])
        augmented = ["--augmented"]
    layers = ["--encoder-layers", str(cfg.encoder_layers)] if cfg.encoder_layers is not None else []  # 0: train says no

    def train_args(seed: int) -> list[str]:
        return ["train", "--backbone", cfg.backbone, *layers, "--epochs", str(cfg.epochs), "--batch-size",
                str(cfg.batch_size), "--schedule", cfg.schedule, "--plan-loss-weight", str(cfg.plan_loss_weight),
                "--seed", str(seed), *augmented, *common]

    train = train_args(cfg.seed)
    stage("train", train)
    name = model_name(cfg.backbone, cfg.encoder_layers)
    model = run_dir / "models" / name
    search = ["--beam", str(cfg.beam), "--groupings", str(cfg.groupings)]

    def scorer(name: str, folder: Path) -> float:
        """Fit (or keep) the folder's scorer; its GSM8K dev accuracy."""
        stage(name, ["scorer", "--model", str(folder), *search, "--extra", ",".join(cfg.extra) or "none",  # as training
                     "--limit", str(cfg.scorer_limit or 0),  # the command keeps a scorer fitted with these settings
                     *(["--dev-limit", str(cfg.scorer_dev_limit)] if cfg.scorer_dev_limit else [])])
        return json.loads((folder / "scorer.json").read_text())["dev_accuracy"] or 0.0

    accuracy = scorer("scorer", model)
    labelled = []  # what the kept model trained on beside the teacher's labels: its round's students' graphs, if any
    for r in range(1, cfg.improve_rounds + 1):
        students = run_dir / "labels" / f"students-r{r}.jsonl"
        stage(f"improve (round {r})", ["improve", "--model", str(model), "--out", str(students), *search,
                                       *(["--limit", str(cfg.fit)] if cfg.fit else []), *common])
        new = model.with_name(f"{name}-r{r}")
        stage(f"train (round {r})", [*train, "--students", str(students), "--out", str(new)])
        gained = scorer(f"scorer (round {r})", new) - accuracy
        typer.echo(f"\n── round {r}: GSM8K dev {accuracy:.1%} → {accuracy + gained:.1%}", err=True)
        if gained > 0:
            model, accuracy, labelled = new, accuracy + gained, ["--students", str(students)]
        if gained < 0.01:  # DESIGN.md §8: repeat until the gain is under 1%
            break
    models = [model]
    for k in range(1, cfg.members):  # trained like the kept model, on the same labels, with the next seeds
        member = model.with_name(f"{name}-s{cfg.seed + k}")
        stage(f"train (member {k + 1} of {cfg.members})", [*train_args(cfg.seed + k), *labelled, "--out", str(member)])
        scorer(f"scorer (member {k + 1} of {cfg.members})", member)
        models.append(member)
    stage("eval", ["eval", "--dataset", ",".join(cfg.eval_datasets), "--model", ",".join(map(str, models)),
                   "--out", str(run_dir / "eval"), "--beam", str(cfg.beam), "--groupings", str(cfg.groupings),
                   *(["--limit", str(cfg.eval_limit)] if cfg.eval_limit else [])])
