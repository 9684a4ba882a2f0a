import json

import pytest
import sympy

from mycelium.augment import augment
from mycelium.executor import execute
from mycelium.graph import Graph
from mycelium.numbers import find_quantities


def _row(question: str, steps: list[tuple[str, list[tuple[str, int | str]]]], regions, answer: int, rid="t/fit/0"):
    """A labels.jsonl row: steps as (op, [(source, ref or constant value)]), one region per step."""
    quantities = [q.to_json() for q in find_quantities(question)]
    values = []
    graph_steps, label_steps = [], []
    for k, (op, operands) in enumerate(steps):
        ops = []
        for source, ref in operands:
            if source == "quantity":
                q = quantities[ref]
                value = str(sympy.Rational(q["value"]) / (100 if q["percent"] else 1))
            elif source == "result":
                value = str(values[ref])
            else:
                value, ref = ref, None
            ops.append({"source": source, "value": value, "ref": ref})
        graph_steps.append({"op": op, "operands": ops, "span": None, "annotated": None})
        g = Graph.from_json({"question": question, "quantities": quantities, "steps": graph_steps})
        values.append(execute(g).values[-1])
        label_steps.append({"op": op, "region": list(regions[k]), "clauses": [k, k],
                            "region_text": question[slice(*regions[k])],
                            "operands": [dict(o, ambiguous=False) for o in ops],
                            "depends_on": [o["ref"] for o in ops if o["source"] == "result"], "bridging": False})
    graph = {"problem_id": rid, "question": question, "solution": "…", "quantities": quantities,
             "steps": graph_steps, "answer": answer}
    return {"id": rid, "question": question, "answer": str(values[answer]), "quantities": quantities,
            "clauses": [list(r) for r in regions], "steps": label_steps, "relevance": [list(r) for r in regions],
            "goal": {"step": answer, "type": "integer"}, "graph": graph}


MARY = ("Mary has a credit of $100. She paid $15 of it on Tuesday and $23 of it on Thursday. "
        "How much credit must she still pay?")


def test_a_copy_moves_every_span_and_reruns_the_graph():
    q = MARY
    regions = [(q.index("She"), q.index(" How")), (q.index("How"), len(q) - 1)]
    row = _row(q, [("add", [("quantity", 1), ("quantity", 2)]), ("sub", [("quantity", 0), ("result", 0)])],
               regions, answer=1)
    copies = augment(row, copies=3)
    assert len(copies) == 3
    assert len({c["question"] for c in copies}) == 3
    for c in copies:
        assert c["augmented_from"] == row["id"] and c["id"] != row["id"]
        # Only the digits changed: the words around them are the old ones, in order.
        assert [w for w in c["question"].split() if not w.startswith("$")] == \
               [w for w in q.split() if not w.startswith("$")]
        for m in c["quantities"]:
            assert c["question"][m["start"]:m["end"]] == m["text"] and m["text"].startswith("$")
        assert [m["text"] for m in c["quantities"]] == [m.text for m in find_quantities(c["question"])]
        for st, old in zip(c["steps"], row["steps"]):
            assert c["question"][slice(*st["region"])] == st["region_text"]
            assert st["region_text"].split()[0] == old["region_text"].split()[0]
        assert [(st["op"], [(o["source"], o["ref"]) for o in st["operands"]]) for st in c["steps"]] == \
               [(st["op"], [(o["source"], o["ref"]) for o in st["operands"]]) for st in row["steps"]]
        v = [sympy.Rational(m["value"]) for m in c["quantities"]]
        assert sympy.Rational(c["answer"]) == v[0] - v[1] - v[2]
        assert execute(Graph.from_json(c["graph"])).answer == sympy.Rational(c["answer"])
        assert sympy.Rational(c["answer"]) > 0 and sympy.Rational(c["answer"]).q == 1  # 62 was whole and positive


def test_formats_and_percentages_are_kept():
    q = "A coat costs $1,250.50 and is 20% off. What does it cost now?"
    regions = [(0, q.index(" What")), (q.index("What"), len(q) - 1)]
    row = _row(q, [("mul", [("quantity", 0), ("quantity", 1)]), ("sub", [("quantity", 0), ("result", 0)])],
               regions, answer=1)
    copies = augment(row, copies=4, seed=3)
    assert copies
    for c in copies:
        price, off = c["quantities"]
        assert price["text"].startswith("$") and "," in price["text"] and len(price["text"].split(".")[1]) == 2
        assert off["text"].endswith("%") and 0 < sympy.Rational(off["value"]) <= 100
        p, r = sympy.Rational(price["value"]), sympy.Rational(off["value"]) / 100
        assert sympy.Rational(c["answer"]) == p - p * r  # the percent operand (0.2) scaled with the 20%


def test_same_seed_same_copies_other_seed_others():
    q = MARY
    regions = [(q.index("She"), q.index(" How")), (q.index("How"), len(q) - 1)]
    row = _row(q, [("add", [("quantity", 1), ("quantity", 2)]), ("sub", [("quantity", 0), ("result", 0)])],
               regions, answer=1)
    assert augment(row, 2, seed=0) == augment(row, 2, seed=0)
    assert [c["question"] for c in augment(row, 2, seed=0)] != [c["question"] for c in augment(row, 2, seed=1)]


def test_no_copies_when_an_operand_is_an_orphan_or_nothing_is_in_digits():
    q = "Joy reads 8 pages in 20 minutes. How many pages does she read in an hour?"
    regions = [(0, q.index(" How")), (q.index("How"), len(q) - 1)]
    orphan = _row(q, [("mul", [("quantity", 0), ("constant", "3")])], regions[:1], answer=0)
    orphan["steps"][0]["operands"][1]["source"] = "orphan"  # 3 = 60 / 20: it would not follow a new 20
    assert augment(orphan, 2) == []
    words = "Tom has three apples and gets five more. How many apples does he have?"
    row = _row(words, [("add", [("quantity", 0), ("quantity", 1)])], [(0, len(words) - 1)], answer=0)
    assert augment(row, 2) == []  # spelled-out numbers keep their values, so no copy differs


def test_labels_augment_command_writes_copies_and_train_refuses_stale_ones(tmp_path):
    from tests.test_cli import assert_clean_error, mycelium

    from mycelium.cli import augmented_rows
    from mycelium.errors import BadInput

    q = MARY
    regions = [(q.index("She"), q.index(" How")), (q.index("How"), len(q) - 1)]
    steps = [("add", [("quantity", 1), ("quantity", 2)]), ("sub", [("quantity", 0), ("result", 0)])]
    rows = [_row(q, steps, regions, answer=1, rid="gsm8k/train/0"),
            _row(q, steps, regions, answer=1, rid="gsm8k/train/14")]  # a GSM8K dev problem: no copies
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = str(tmp_path)
    assert_clean_error(mycelium("train", "--run", run, "--augmented"), "run `mycelium labels augment")
    proc = mycelium("labels", "augment", "--run", run, "--copies", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2 copies of 1 of 1 training problems" in proc.stdout
    made = json.loads((labels / "augmented.json").read_text())
    assert (made["copies"], made["examples"], made["problems"]) == (2, 2, 1)
    copies = augmented_rows(run)
    assert {c["augmented_from"] for c in copies} == {"gsm8k/train/0"}
    (labels / "labels.jsonl").write_text(json.dumps(rows[0]) + "\n")  # the labels were rebuilt since
    with pytest.raises(BadInput, match="made from other labels"):
        augmented_rows(run)
    assert_clean_error(mycelium("labels", "augment", "--run", run, "--copies", "-1"), "--copies must be 0 or more")


def test_a_spelled_out_zero_beside_digits_is_left_alone():
    q = "Sam had zero debts and 40 dollars. He spent 15 dollars. How many dollars are left?"
    row = _row(q, [("sub", [("quantity", 1), ("quantity", 2)]), ("add", [("result", 0), ("quantity", 0)])],
               [(0, q.index(" He")), (q.index("He"), len(q) - 1)], answer=1)
    copies = augment(row, 2)
    assert copies and all(c["quantities"][0]["text"] == "zero" for c in copies)
    for c in copies:
        v = [sympy.Rational(m["value"]) for m in c["quantities"]]
        assert sympy.Rational(c["answer"]) == v[1] - v[2] > 0
