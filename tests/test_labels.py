import pytest

from mycelium.clauses import parse
from mycelium.data import get, load
from mycelium.labels import anchor_run, build_example, constant_table, mark_bridging
from mycelium.trace import capture, strip_annotations
from mycelium.viewer import Reading

# Provenance heads as `mycelium signals report` chose them on 50 GSM8K dev problems (SmolLM2-135M).
READING = Reading(iaf_heads=[(23, 7), (23, 2), (23, 1)], boundary_heads=[(8, 5)], boundary_contrast=False, rate=0.06)


@pytest.fixture(scope="module")
def labelled(smollm2):
    out = {}
    for pid in ("gsm8k/train/0", "gsm8k/train/48", "gsm8k/test/0"):
        p = get(pid)
        trace = capture(smollm2, p.question, strip_annotations(p.solution), problem_id=pid)
        out[pid] = build_example(p, trace, READING, constants={"1/100", "365", "0"})
    return out


@pytest.mark.slow
def test_labels_of_natalias_clips(labelled):
    ex = labelled["gsm8k/train/0"]
    s0, s1 = ex["steps"]
    assert (s0["op"], s1["op"]) == ("div", "add")
    assert [(o["source"], o["value"]) for o in s0["operands"]] == [("quantity", "48"), ("orphan", "2")]
    assert [(o["source"], o["ref"]) for o in s1["operands"]] == [("quantity", 0), ("result", 0)]
    assert (s0["depends_on"], s1["depends_on"]) == ([], [0])
    assert ex["goal"] == {"step": 1, "type": "integer"}
    clauses = [ex["question"][a:b] for a, b in parse(ex["question"]).spans]
    for s in (s0, s1):  # regions are whole clauses (or adjacent clauses merged), never fragments
        assert s["region_text"].startswith(tuple(c.split()[0] for c in clauses))
        assert any(c in s["region_text"] for c in clauses)
    assert all(0 < s["problem_mass"] < 1 for s in (s0, s1))


@pytest.mark.slow
def test_attention_settles_repeated_mentions(labelled):
    ex = labelled["gsm8k/train/48"]  # "six more digits" and "six times as many": 24/6 uses one of them
    (divisor,) = [o for o in ex["steps"][0]["operands"] if o["value"] == "6"]
    assert divisor["ambiguous"] and divisor["source"] == "quantity" and divisor["ref"] in (0, 1)
    assert [q["text"] for q in ex["quantities"][:2]] == ["six", "six"]


@pytest.mark.slow
def test_word_numerals_are_operands(labelled):
    ex = labelled["gsm8k/test/0"]
    assert [ex["quantities"][o["ref"]]["text"] for o in ex["steps"][0]["operands"]] == ["16", "three", "four"]
    threshold = mark_bridging(list(labelled.values()))
    assert all("bridging" in s for e in labelled.values() for s in e["steps"]) and threshold > 0


def test_constant_table_from_orphan_rates():
    table = constant_table(load("gsm8k", "train")[:3000])
    kept = {r["value"] for r in table if r["kept"]}
    assert "1/100" in kept  # percent arithmetic: orphaned almost always
    assert "2" not in kept  # "half"/"twice" use 2 as an orphan, but the problem supplies a 2 often too
    row = next(r for r in table if r["value"] == "60")
    assert 0 < row["orphan_share"] < 0.8 and not row["kept"]


def test_anchor_run_widens_to_the_operands_within_the_width():
    assert anchor_run((2, 2), [0]) == (0, 2)  # attention read clause 2; the step used a quantity of clause 0
    assert anchor_run((2, 3), []) == (2, 3)  # no quantity operands: attention's run
    assert anchor_run(None, [1, 2]) == (1, 2)  # attention found no clause: the operands' run
    assert anchor_run((7, 7), [0, 1], width=4) == (0, 1)  # too wide together: the operands' own run
    assert anchor_run((7, 7), [0, 5], width=4) == (7, 7)  # the operands alone too wide: attention's run
    assert anchor_run(None, [0, 5], width=4) is None


@pytest.mark.slow
def test_anchored_regions_hold_the_steps_quantities(smollm2):
    p = get("gsm8k/test/0")
    trace = capture(smollm2, p.question, strip_annotations(p.solution), problem_id=p.id)
    ex = build_example(p, trace, READING, constants={"1/100", "365", "0"}, regions="anchored")
    for st in ex["steps"]:
        a, b = st["region"]
        for o in st["operands"]:
            if o["source"] == "quantity":
                q = ex["quantities"][o["ref"]]
                assert a <= q["start"] and q["end"] <= b, (st["region_text"], q["text"])
    with pytest.raises(ValueError, match="unknown regions"):
        build_example(p, trace, READING, constants=set(), regions="everything")
