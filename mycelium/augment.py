"""New numbers for labelled problems: the same wording, structure and labels, other quantities.

    Joy can read 8 pages of a book in 20 minutes. How many hours will it take her to read 120 pages?
    →  Joy can read 6 pages of a book in 20 minutes. How many hours will it take her to read 90 pages?
       (the reference graph, run again: 6 * 3 = 18, 90 / 18 = 5; every character span moved with the text)

A copy draws a new value for every quantity written in digits (near the old one, as round as the old one,
percentages at most 100), writes it in the old one's format ($, %, thousands commas, decimal places), moves
every character span of the labels (quantities, clauses, regions, relevance) by the change in length, and
runs the reference graph with the new values. It keeps a draw only when every step whose result was a whole
number still gives one and no result changes sign, so a copy is a problem a person could have written.

Problems whose labels use an orphan operand (a value that neither the question nor an earlier step supplies,
e.g. the 3 in "3 sets of 20 minutes") get no copies: the orphan was often derived from the old numbers.
Spelled-out numbers and fractions keep their values. Nothing here reads words; only digits change.
"""

from __future__ import annotations

import copy
import math
import random
from fractions import Fraction

import sympy

from .executor import execute
from .graph import Graph, Source
from .numbers import Quantity

ROUND = (1000, 500, 100, 50, 25, 10, 5)  # a draw is as round as the old value: a multiple of the same step


def _parts(text: str, currency: str, percent: bool) -> tuple[str, str, str] | None:
    """(prefix, digits, suffix) of a quantity's text, or None when it is not a plain numeral in digits."""
    prefix = currency if currency and text.startswith(currency) else ""
    suffix = "%" if percent and text.endswith("%") else ""
    core = text[len(prefix): len(text) - len(suffix)]
    if not core or not all(c.isdigit() or c in ",." for c in core) or core.count(".") > 1 or not core[0].isdigit():
        return None
    return prefix, core, suffix


def _write(value: Fraction, like: str) -> str:
    """`value` in the format of the numeral `like`: its decimal places and thousands commas."""
    places = len(like.split(".")[1]) if "." in like else 0
    return f"{float(value):,.{places}f}" if "," in like else f"{float(value):.{places}f}"


def draw(value: Fraction, like: str, percent: bool, rng: random.Random) -> Fraction | None:
    """A new value near `value`: half to one and a half times it (counts up to 12: 2 to twice theirs), as round as it
    in its last written place; None when nothing else can be drawn."""
    places = len(like.split(".")[1]) if "." in like else 0
    unit = Fraction(1, 10 ** places)
    steps = value / unit  # the value in its last written place
    if steps <= 0 or steps.denominator != 1:
        return None
    if value == 1:  # "1 bag" would become "5 bag"
        return value
    steps = int(steps)
    step = next((r for r in ROUND if steps >= 2 * r and steps % r == 0), 1)
    lo, hi = (2, max(4, 2 * steps)) if steps <= 12 else (math.ceil(steps / 2), steps * 3 // 2)
    if percent:
        hi = min(hi, int(100 / unit))
    choices = [k for k in range(math.ceil(lo / step), hi // step + 1) if k * step != steps]
    return Fraction(rng.choice(choices) * step) * unit if choices else None


def _results(graph: Graph) -> list | None:
    run = execute(graph)
    return None if run.error else run.values


def _plausible(old: list, new: list) -> bool:
    """Whole results stay whole, signs stay, and nothing is zero that was not."""
    for a, b in zip(old, new):
        if not (b.is_Rational and a.is_Rational):
            return False
        if a.q == 1 and b.q != 1:
            return False
        if (a > 0) != (b > 0) or (a < 0) != (b < 0):
            return False
    return True


def _shift(pos: int, edits: list[tuple[int, int, int]]) -> int:
    """A character offset after the edits (start, end, change in length) that end at or before it."""
    return pos + sum(d for s, e, d in edits if e <= pos)


def augment(row: dict, copies: int, seed: int = 0, tries: int = 50) -> list[dict]:
    """Up to `copies` new-number versions of one labelled example (labels.jsonl row); [] when none can be made."""
    if any(o["source"] == "orphan" for st in row.get("steps", []) for o in st["operands"]) or not row.get("graph"):
        return []
    quantities = row["quantities"]
    parts = [None if q["word"] else _parts(q["text"], q["currency"], q["percent"]) for q in quantities]
    values = sorted({Fraction(q["value"]) for q, p in zip(quantities, parts) if p})
    old_graph = Graph.from_json(row["graph"])
    if not values or [q.text for q in old_graph.quantities] != [q["text"] for q in quantities]:
        return []
    old = _results(old_graph)
    if old is None:
        return []
    like = {Fraction(q["value"]): p[1] for q, p in zip(quantities, parts) if p}  # value → its digits as written
    percent = {Fraction(q["value"]) for q, p in zip(quantities, parts) if p and q["percent"]}
    rng = random.Random(f"{row['id']}|{seed}")
    out, seen = [], set()
    for _ in range(tries):
        if len(out) == copies:
            break
        new = {v: draw(v, like[v], v in percent, rng) for v in values}
        if any(n is None for n in new.values()) or all(n == v for v, n in new.items()) or tuple(new.values()) in seen:
            continue
        made = _rewrite(row, parts, new, old_graph)
        if made is None:
            continue
        graph, example = made
        results = _results(graph)
        if results is None or not _plausible(old, results):
            continue
        seen.add(tuple(new.values()))
        if len(example.get("steps", [])) == len(results):  # the labels' copies of earlier results, for a reader
            for st in example["steps"]:
                for o in st["operands"]:
                    if o["source"] == "result" and o["ref"] is not None and o["ref"] < len(results):
                        o["value"] = str(results[o["ref"]])
        answer = results[graph.answer] if graph.answer is not None else results[-1]
        example["answer"] = str(answer)
        example["graph"] = graph.to_json()
        example["augmented_from"] = row["id"]
        example["id"] = f"{row['id']}#n{seed}.{len(out)}"
        out.append(example)
    return out


def _rewrite(row: dict, parts: list, new: dict, old_graph: Graph):
    """The row with its digits replaced and its spans moved, and its reference graph on the new values."""
    question = row["question"]
    edits, pieces, last = [], [], 0
    texts = []
    for q, p in zip(row["quantities"], parts):
        if not p:
            texts.append(q["text"])
            continue
        prefix, core, suffix = p
        text = prefix + _write(new[Fraction(q["value"])], core) + suffix
        texts.append(text)
        pieces += [question[last:q["start"]], text]
        edits.append((q["start"], q["end"], len(text) - (q["end"] - q["start"])))
        last = q["end"]
    text = "".join(pieces) + question[last:]
    ex = copy.deepcopy(row)
    ex["question"] = text
    span = lambda ab: None if ab is None else [_shift(ab[0], edits), _shift(ab[1], edits)]  # noqa: E731
    for q, t in zip(ex["quantities"], texts):
        q["start"], q["end"] = _shift(q["start"], edits), _shift(q["start"], edits) + len(t)
        q["text"] = t
        if t != text[q["start"]:q["end"]]:
            return None
    for q, p in zip(ex["quantities"], parts):
        if p:
            q["value"] = str(sympy.Rational(new[Fraction(q["value"])]))
    ex["clauses"] = [span(c) for c in ex.get("clauses", [])]
    ex["relevance"] = [span(r) for r in ex.get("relevance", [])]
    scale = {i: sympy.Rational(ex["quantities"][i]["value"]) / sympy.Rational(q["value"]) if p else sympy.Integer(1)
             for i, (q, p) in enumerate(zip(row["quantities"], parts))}  # drawn values are never 0
    for st in ex.get("steps", []):
        st["region"] = span(st.get("region"))
        if st["region"]:
            st["region_text"] = text[st["region"][0]:st["region"][1]]
        for o in st["operands"]:
            if o["source"] == "quantity" and o["ref"] is not None:
                o["value"] = str(sympy.Rational(o["value"]) * scale[o["ref"]])
    graph = copy.deepcopy(old_graph)
    graph.question = text
    graph.solution = None  # the old solution's numbers no longer hold
    graph.quantities = [Quantity.from_json(q) for q in ex["quantities"]]
    for st in graph.steps:
        st.annotated = None
        st.span = None
        for o in st.operands:
            if o.source is Source.QUANTITY and o.ref is not None:
                o.value = o.value * scale[o.ref]  # 20% used as 0.2 scales with the 20
            o.alternatives = []
    return graph, ex
