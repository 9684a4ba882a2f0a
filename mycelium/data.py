"""Datasets: one loader, one `Problem` record, whatever the source.

    >>> p = load("gsm8k", "test")[0]
    >>> p.id, p.answer
    ('gsm8k/test/0', '18')
    >>> p.question[:27]
    'Janet’s ducks lay 16 eggs p'
    >>> len(load("gsm8k", "dev")), len(load("gsm8k", "fit"))
    (500, 6973)

Datasets are declared in datasets.yaml (fields, answer format, files, hub
ids). A source is "local" (JSON Lines under the data root: ../shared/data,
$MYCELIUM_DATA, or --data-root), "hub" (the registered Hugging Face id through
`datasets`), or a path: a .jsonl file, a folder written by
`Dataset.save_to_disk`, or a folder of data files `datasets` can read.

Ids are "<dataset>/<split>/<row>", where row counts lines of the underlying
file (bad lines included), so an id never moves when a bad line is fixed.
The dev/fit splits keep the ids of the split they were carved from.
"""

from __future__ import annotations

import functools
import json
import random
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from .config import data_root
from .errors import BadInput, MissingFile, UnknownName


@dataclass(frozen=True)
class Problem:
    id: str
    dataset: str
    split: str
    question: str
    answer: str  # gold answer as text: "18", "\\frac{1}{2}", "9 (apples)"
    solution: str | None = None  # reference solution, where the dataset has one
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_question(self.question)

    def to_json(self) -> dict:
        return {"id": self.id, "dataset": self.dataset, "split": self.split, "question": self.question,
                "answer": self.answer, "solution": self.solution, "extra": self.extra}


def check_question(question: Any) -> str:
    """The question as text, or BadInput saying why it cannot be one."""
    if not isinstance(question, str):
        raise BadInput(f"question must be text, got {type(question).__name__}")
    if not question.strip():
        raise BadInput("question is empty")
    return question


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    return yaml.safe_load(resources.files("mycelium").joinpath("datasets.yaml").read_text())


def dataset_spec(name: str) -> dict:
    spec = registry().get(name)
    if spec is None:
        raise UnknownName(f"unknown dataset {name!r}; known: {', '.join(registry())}")
    return spec


def splits(name: str) -> list[str]:
    spec = dataset_spec(name)
    return list(spec["splits"]) + (["dev", "fit"] if "dev" in spec else [])


def held_out_split(name: str) -> str:
    """The split a dataset's reported figures come from: "test", or "dev" where test is carved into fit (training
    data) and dev (held out), as ASDiv's is."""
    spec = dataset_spec(name)
    return "dev" if spec.get("dev", {}).get("from") == "test" else "test"


def evaluation_sets(source: str = "local", root: str | None = None) -> list[Problem]:
    """Every registered dataset's held-out split that can be read here (a test set not shipped is skipped):
    what training data must not overlap."""
    problems = []
    for name in registry():
        if "test" not in dataset_spec(name)["splits"]:
            continue
        try:
            problems += load(name, held_out_split(name), source, root)
        except (MissingFile, UnknownName):
            continue
    return problems


def last_boxed(latex: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}), braces matched."""
    start = max(latex.rfind("\\boxed{"), latex.rfind("\\fbox{"))
    if start < 0:
        return None
    i = latex.index("{", start) + 1
    depth, j = 1, i
    while j < len(latex):
        depth += {"{": 1, "}": -1}.get(latex[j], 0)
        if depth == 0:
            return latex[i:j].strip()
        j += 1
    return None


def gold_answer(value: Any, fmt: str) -> str | None:
    if value is None:
        return None
    if fmt == "hashes":
        tail = str(value).rsplit("####", 1)
        return tail[1].strip() if len(tail) == 2 else None
    if fmt == "boxed":
        return last_boxed(str(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def to_problem(row: dict, name: str, split: str, index: int) -> Problem:
    """One raw row as a Problem, or BadInput naming the missing or bad field."""
    spec = dataset_spec(name)
    if not isinstance(row, dict):
        raise BadInput("row is not a JSON object")
    parts = []
    for f in spec["question"]:
        if f not in row:
            raise BadInput(f"missing field {f!r}")
        parts.append(check_question(row[f]).strip())
    question = " ".join(parts)
    ans = spec["answer"]
    answer = gold_answer(row.get(ans["field"]), ans["format"])
    if not answer:
        raise BadInput(f"no gold answer in field {ans['field']!r}")
    sol_field = spec.get("solution")
    return Problem(
        id=f"{name}/{split}/{index}", dataset=name, split=split, question=question, answer=answer,
        solution=row.get(sol_field) if sol_field else None,
        extra={f: row[f] for f in spec.get("extra", []) if f in row},
    )


def read_jsonl(path: Path, warn=None) -> Iterable[tuple[int, dict | None, str | None]]:
    """(line index, row, error) for every line; a malformed line yields its error, not an exception."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    if not path.is_file():
        raise MissingFile(f"dataset file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line), None
            except json.JSONDecodeError as e:
                yield i, None, f"malformed JSON ({e.msg})"


def _rows_from_hub(spec: dict, split: str, where: str) -> list[dict]:
    import datasets  # heavy; only the hub path needs it

    path = Path(where)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[spec.get("hub_split", split)]
        else:
            config = spec.get("config") if where == spec.get("hub") else None  # a local copy has no hub config
            ds = datasets.load_dataset(where, config, split=spec.get("hub_split", split) if config else split)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise MissingFile(f"could not load {where!r} with `datasets`: {str(e).splitlines()[0]}") from None
    return [dict(r) for r in ds]


@functools.lru_cache(maxsize=32)
def _load(name: str, split: str, source: str, root: str | None) -> tuple[Problem, ...]:
    spec = dataset_spec(name)
    if split in ("dev", "fit") and "dev" in spec:
        from .config import DataConfig

        cfg = DataConfig()
        base = _load(name, spec["dev"]["from"], source, root)
        order = list(range(len(base)))
        random.Random(cfg.seed).shuffle(order)
        dev = set(order[: cfg.dev_size])
        keep = [p for i, p in enumerate(base) if (i in dev) == (split == "dev")]
        return tuple(Problem(p.id, p.dataset, split, p.question, p.answer, p.solution, p.extra) for p in keep)
    split_spec = spec["splits"].get(split)
    if split_spec is None:
        raise UnknownName(f"dataset {name!r} has no split {split!r}; known: {', '.join(splits(name))}")

    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
    if source == "local":
        path = data_root(root) / split_spec["file"]
        rows, label = read_jsonl(path), str(path)
    elif source == "hub":
        if "hub" not in split_spec:
            raise UnknownName(f"dataset {name!r} split {split!r} has no registered hub id; pass --source PATH")
        rows, label = ((i, r, None) for i, r in enumerate(_rows_from_hub(split_spec, split, split_spec["hub"]))), split_spec["hub"]
    else:
        path = Path(source)
        if path.suffix == ".jsonl":
            rows, label = read_jsonl(path), str(path)
        elif path.exists():
            rows, label = ((i, r, None) for i, r in enumerate(_rows_from_hub(split_spec, split, source))), source
        else:
            raise MissingFile(f"dataset source not found: {source}")

    problems = []
    for i, row, error in rows:
        try:
            if error:
                raise BadInput(error)
            problems.append(to_problem(row, name, split, i))
        except BadInput as e:
            warn(f"{label}:{i + 1}: skipped: {e}")
    return tuple(problems)


def load(name: str, split: str, source: str = "local", root: str | None = None) -> list[Problem]:
    """All problems of one dataset split. Bad rows are reported (file:line) and skipped."""
    return list(_load(name, split, source, str(data_root(root))))


def get(problem_id: str, source: str = "local", root: str | None = None) -> Problem:
    """One problem by id, e.g. "gsm8k/test/0"."""
    parts = problem_id.split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        raise BadInput(f"bad problem id {problem_id!r}; expected <dataset>/<split>/<row>, e.g. gsm8k/test/0")
    name, split = parts[0], parts[1]
    for p in _load(name, split, source, str(data_root(root))):
        if p.id == problem_id:
            return p
    raise BadInput(f"no problem {problem_id!r} (row missing or skipped)")
