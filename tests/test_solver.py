"""The solver: beam decoding, answers on real problems from a small trained model, gold independence, bad input."""

import json
import math
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import sympy
import torch

from mycelium.data import get
from mycelium.errors import BadInput
from mycelium.evaluate import evaluate
from mycelium.numbers import find_quantities
from mycelium.solver import Solver, SolverConfig, _collector_paused, _language_model, decode, detect_language, groupings, plans, value_type
from mycelium.specialists import SpecialistConfig, Specialists, encode

from .test_specialists import EXAMPLE, SECOND


@pytest.fixture(scope="module")
def model_dir(trained_model_dir):
    return trained_model_dir


@pytest.fixture(scope="module")
def solver(model_dir):
    return Solver.load(model_dir)


def test_groupings_enumerate_merges_duplicates_and_drops():
    g = groupings([(0, 5), (6, 9), (10, 20)])
    assert g[0] == [(0, 5), (6, 9), (10, 20)]
    assert [(0, 9), (10, 20)] in g and [(0, 5), (0, 5), (6, 9), (10, 20)] in g and [(6, 9), (10, 20)] in g
    assert [(6, 9), (10, 20), (0, 5)] in g  # the first clause read last (an "altogether" step)
    assert len(g) == len({tuple(x) for x in g})


def test_solver_config_refuses_settings_that_cannot_run():
    for bad in ({"beam": 0}, {"groupings": -1}, {"batch_size": 0}, {"window": 0}, {"time_budget_s": 0},
                {"encoder_dtype": "int8"}, {"workers": -1}, {"plan_step_bonus": float("nan")}, {"plan_step_bonus": 1e9}):
        with pytest.raises(BadInput, match="must be"):
            SolverConfig(**bad)
    assert SolverConfig(beam=1, groupings=1, batch_size=1).beam == 1


def test_language_is_read_without_the_numbers():
    # A long repeating decimal reads as Cebuano to fastText; cut out, the words alone are plainly English.
    q = "There is 0.16666666666666666 of a cup of oil in Scarlett's measuring cup. If Scarlett adds 0.6666666666666666 of a cup more, how much oil will be in the measuring cup?"
    assert detect_language(q)[0] != "en"  # what the quantities alone do to it
    lang, prob = detect_language(q, find_quantities(q))
    assert lang == "en" and prob > 0.5
    for text, want in [("Juan tiene 3 manzanas y compra 4 más. ¿Cuántas manzanas tiene ahora?", "es"),
                       ("Anna hat 3 Äpfel und kauft 4 weitere. Wie viele Äpfel hat sie jetzt?", "de")]:
        assert detect_language(text, find_quantities(text))[0] == want
    assert _language_model() is _language_model()  # loaded once: loading it takes longer than solving a question


def test_decode_takes_the_best_choices_and_respects_arity_and_padding():
    Q, S, C = 3, 2, 1  # candidates: q0 q1 q2 | s0 s1 | c0 | other | end
    n = Q + S + C + 2
    lp = lambda hot: np.log(np.where(np.arange(n) == hot, 0.9, 0.1 / (n - 1)))  # noqa: E731
    op_logits = torch.tensor(np.log([[0.1, 0.1, 0.7, 0.05, 0.05], [0.8, 0.05, 0.05, 0.05, 0.05]]))[None]  # mul, add
    by_operand = torch.zeros(1, n, 4, 5)  # [row, cand, slot, op]: the operands say nothing yet
    c3 = torch.tensor(np.stack([np.stack([lp(0), lp(1), lp(n - 1), lp(n - 1)]),  # s0 = mul(q0, q1), then end
                                np.stack([lp(Q + 0), lp(2), lp(Q + S), lp(n - 1)])]))[None]  # s1 = add(s0, q2, c0)
    allowed = torch.zeros(1, S, n, dtype=torch.bool)
    allowed[0, :, :Q] = allowed[0, :, Q + S:Q + S + C] = True
    allowed[0, 1, Q] = True  # step 1 may read step 0
    two = torch.tensor([2])
    best = decode(op_logits, by_operand, c3, allowed, two, beam=3)[0]
    assert best[0][1] == [(2, [0, 1]), (0, [Q + 0, 2, Q + S])]
    assert all(len(picks) >= 2 for _, steps in best for _, picks in steps)
    assert [b[0] for b in best] == sorted((b[0] for b in best), reverse=True)
    # C2 reads the operands: the constant in slot 2 of step 1 turns add into div
    by_operand[0, Q + S, 2, 3] = 5.0
    assert decode(op_logits, by_operand, c3, allowed, two, beam=3)[0][0][1] == [(2, [0, 1]), (3, [Q + 0, 2, Q + S])]
    # a mention the row does not own is never picked, nor a later step, nor "another constant"
    allowed[0, :, 2] = False
    for _, steps in decode(op_logits, by_operand, c3, allowed, two, beam=4)[0]:
        for s, (_, picks) in enumerate(steps):
            assert 2 not in picks and all(not (Q + s <= c < Q + S) for c in picks) and Q + S + C not in picks
    # rows of a batch are independent; a row with fewer steps stops at its own count
    rows = decode(op_logits.expand(2, -1, -1), by_operand.expand(2, -1, -1, -1), c3.expand(2, -1, -1, -1),
                  allowed.expand(2, -1, -1), torch.tensor([2, 1]), beam=4)
    assert rows[0] == decode(op_logits, by_operand, c3, allowed, two, beam=4)[0]
    assert all(len(steps) == 1 for _, steps in rows[1]) and rows[1][0][1] == [(2, [0, 1])]


def test_decode_reads_the_operands_picked_before_each_slot():
    """C3's pair term renormalises each slot given the tuple's earlier picks, as `c3_given` does in training."""
    Q, S, C = 3, 1, 1  # candidates: q0 q1 q2 | s0 | c0 | other | end
    n = Q + S + C + 2
    op_logits = torch.zeros(1, S, 5)
    by_operand = torch.zeros(1, n, 4, 5)
    logits = torch.full((1, S, 4, n), -4.0)
    logits[0, 0, 0, 1] = 3.0  # slot 0: q1
    logits[0, 0, 1, 2], logits[0, 0, 1, 0] = 2.0, 1.0  # slot 1 alone: q2, then q0
    logits[0, 0, 2:, n - 1] = 5.0  # then "no more"
    c3 = torch.log_softmax(logits, -1)
    allowed = torch.zeros(1, S, n, dtype=torch.bool)
    allowed[0, :, :Q] = True
    one = torch.tensor([1])
    alone = decode(op_logits, by_operand, c3, allowed, one, beam=2)
    assert alone[0][0][1][0][1] == [1, 2]
    assert decode(op_logits, by_operand, c3, allowed, one, beam=2, pair=torch.zeros(1, n, n)) == alone
    pair = torch.zeros(1, n, n)
    pair[0, 1, 0] = 3.0  # after q1, q0
    paired = decode(op_logits, by_operand, c3, allowed, one, beam=2, pair=pair)
    assert paired[0][0][1][0][1] == [1, 0]
    given = torch.log_softmax(logits[0, 0, 1] + pair[0, 1], -1)  # the tuple's score: slot 1 given q1, then "no more"
    expected = c3[0, 0, 0, 1] + given[0] + torch.log_softmax(logits[0, 0, 2] + pair[0, 1] + pair[0, 0], -1)[n - 1]
    op = torch.log_softmax(op_logits[0, 0], -1).max()
    assert paired[0][0][0] == pytest.approx(float(expected + op), abs=1e-5)


def test_decode_reads_what_the_graphs_earlier_steps_read():
    """C3's used term: each partial graph's next step is scored given the candidates its earlier steps read."""
    Q, S, C = 3, 2, 1  # candidates: q0 q1 q2 | s0 s1 | c0 | other | end
    n = Q + S + C + 2
    op_logits = torch.zeros(1, S, 5)
    by_operand = torch.zeros(1, n, 4, 5)
    logits = torch.full((1, S, 4, n), -4.0)
    logits[0, 0, 0, 0], logits[0, 0, 1, 1] = 3.0, 3.0  # step 0: q0, q1
    logits[0, 1, 0, 0], logits[0, 1, 0, 2] = 3.0, 2.0  # step 1, slot 0: q0, else q2
    logits[0, 1, 1, Q] = 3.0  # then s0
    logits[0, :, 2:, n - 1] = 5.0
    c3 = torch.log_softmax(logits, -1)
    allowed = torch.zeros(1, S, n, dtype=torch.bool)
    allowed[0, :, :Q] = True
    allowed[0, 1, Q] = True
    two = torch.tensor([2])
    alone = decode(op_logits, by_operand, c3, allowed, two, beam=2)
    assert [picks for _, picks in alone[0][0][1]] == [[0, 1], [0, Q]]
    used = torch.zeros(n, 4, 2)  # [cand, slot, read once / twice before]
    assert decode(op_logits, by_operand, c3, allowed, two, beam=2, used=used) == alone
    used[:Q, :, 0] = -5.0  # a mention read before is seldom read again
    again = decode(op_logits, by_operand, c3, allowed, two, beam=2, used=used)
    assert [picks for _, picks in again[0][0][1]] == [[0, 1], [2, Q]]
    reads = torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0, 0])  # step 0 read q0 and q1
    step1 = torch.log_softmax(logits[0, 1] + (reads > 0).float()[None] * used[:, :, 0].T, -1)  # [slot, cand]
    expected = sum(c3[0, 0, k, c] for k, c in enumerate([0, 1, n - 1])) + step1[0, 2] + step1[1, Q] + step1[2, n - 1]
    op = 2 * torch.log_softmax(op_logits[0, 0], -1).max()
    assert again[0][0][0] == pytest.approx(float(expected + op), abs=1e-5)


def test_the_plan_beam_scores_a_plan_as_training_does():
    """Each plan the solver's beam returns has the log probability that the teacher-forced plan head gives the
    same steps: the beam's contexts, offsets and widths are the ones training sees."""
    m = Specialists.create(SpecialistConfig(constants=["1/100", "365"]), seed=0).eval()
    with torch.no_grad():  # a new model's read term adds zero: make it count, and strongly
        m.plan_used.copy_(torch.tensor([[2.0, -1.0], [1.5, -0.5]]))
    ex = {**EXAMPLE, "clauses": [[0, 48], [50, 93], [95, 154]]}
    clauses = [tuple(c) for c in ex["clauses"]]
    tok = m.tokenizer([ex["question"]], return_offsets_mapping=True, return_tensors="pt")
    with torch.no_grad():
        hidden = m.read(tok["input_ids"], tok["attention_mask"])
        found = plans(m, hidden, tok["attention_mask"], tok["offset_mapping"], [clauses], beam=12, top=12)[0]
    assert len(found) == 12 and any(r is None for _, regions in found for r in regions)
    assert any(sum(r is not None for r in regions) >= 2 for _, regions in found)  # a step after a read region
    read = [[r for r in regions if r] for _, regions in found]
    assert any(a[0] < b[1] and b[0] < a[1] for rs in read for i, a in enumerate(rs) for b in rs[i + 1:])  # a re-read
    for lp, regions in found:
        steps = []
        for r in regions:
            run = None if r is None else [next(k for k, c in enumerate(clauses) if c[0] == r[0]),
                                          next(k for k, c in enumerate(clauses) if c[1] == r[1])]
            steps.append({"op": "add", "region": None if r is None else list(r), "clauses": run, "depends_on": [],
                          "operands": []})
        batch = encode(m, [{**ex, "steps": steps}])
        with torch.no_grad():
            out = m(batch)
        y = batch["plan_targets"]
        start = torch.log_softmax(out["plan_start"][0], -1).gather(1, y["start"][0, :, None])[:, 0]  # [step + 1]
        total = float(start.sum())
        for s in range(len(steps)):
            if y["end"][0, s] >= 0:
                total += float(torch.log_softmax(out["plan_end"][0, s], -1)[y["end"][0, s]])
        assert total == pytest.approx(lp, abs=1e-3), regions


def test_the_plan_step_bonus_is_a_length_prior_over_c1s_own_log_probs():
    """A per-step bonus lets longer plans into the top, ranks by log prob + bonus × steps, and returns C1's own
    log probs."""
    m = Specialists.create(SpecialistConfig(constants=["1/100", "365"]), seed=0).eval()
    clauses = [(0, 48), (50, 93), (95, 154)]
    tok = m.tokenizer([EXAMPLE["question"]], return_offsets_mapping=True, return_tensors="pt")
    with torch.no_grad():
        hidden = m.read(tok["input_ids"], tok["attention_mask"])
        search = lambda bonus: plans(m, hidden, tok["attention_mask"], tok["offset_mapping"], [clauses], beam=8,  # noqa: E731
                                     top=8, step_bonus=bonus)[0]
        plain, long = search(0.0), search(3.0)
    ranked = [lp + 3.0 * len(regions) for lp, regions in long]
    assert ranked == sorted(ranked, reverse=True)
    steps = lambda found: sum(len(regions) for _, regions in found) / len(found)  # noqa: E731
    assert steps(long) > steps(plain)
    own = {tuple(regions): lp for lp, regions in plain}
    for lp, regions in long:  # a plan found by both searches has the same log prob in both
        assert tuple(regions) not in own or own[tuple(regions)] == pytest.approx(lp, abs=1e-5)


def test_value_type():
    assert [value_type(sympy.Rational(x)) for x in ("4", "5/2", "1/3", "-7")] == ["integer", "decimal", "fraction", "integer"]


@pytest.mark.slow
def test_solves_the_real_problems_it_learned(solver):
    solved = 0
    for ex in (EXAMPLE, SECOND):
        s = solver.solve(ex["question"])
        gold = sympy.Rational(ex["answer"])
        # the search reaches the learned graph; ranking puts it first at least once (two examples are a small model)
        assert any(c["answer"] == gold for c in s.candidates), [c["answer"] for c in s.candidates[:10]]
        solved += s.answer == gold
        # the spans are the regions the chosen graph's steps read (an implicit step reads none)
        assert s.spans and s.spans == sorted({st.span for st in s.graph.steps if st.span})
        assert len(s.candidates) > 1 and s.candidates[0]["ok"]
    assert solved >= 1
    assert solver.solve(EXAMPLE["question"]).to_json() == solver.solve(EXAMPLE["question"]).to_json()  # deterministic


@pytest.mark.slow
def test_bfloat16_encoder_reaches_the_same_graphs(model_dir):
    fast = Solver.load(model_dir, SolverConfig(encoder_dtype="bfloat16"))
    solver = Solver.load(model_dir, SolverConfig(encoder_dtype="float32"))
    assert fast.bfloat16 and not solver.bfloat16 and fast.settings()["encoder_dtype"] == "bfloat16"
    assert Solver(solver.model).settings()["encoder_dtype"] in ("bfloat16", "float32")  # "auto" as this CPU resolves it
    for ex in (EXAMPLE, SECOND):
        want = {str(c["answer"]) for c in solver.solve(ex["question"]).candidates}
        got = fast.solve(ex["question"])
        assert str(sympy.Rational(ex["answer"])) in {str(c["answer"]) for c in got.candidates}
        assert len(want & {str(c["answer"]) for c in got.candidates}) >= len(want) // 2  # a little rounding, same search


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_an_answer_does_not_depend_on_its_batch_mates(model_dir, dtype):
    """Solved alone or among questions of other lengths, a question gets the same answer, graph and candidates,
    so a resumed evaluation (which batches what is left) writes the same answers as an uninterrupted one. In
    bfloat16 ("auto" where the CPU has it) this holds because the solver pads to a multiple of 16 tokens:
    without that, scores here moved by up to 22; with it, by 1e-5 (float32's summation order in the heads)."""
    from mycelium.data import load

    questions = [p.question for p in load("gsm8k", "dev")[:12]]
    solver = Solver.load(model_dir, SolverConfig(encoder_dtype=dtype, batch_size=6))
    together = solver.solve_batch(questions)
    assert len({len(solver.model.tokenizer(q)["input_ids"]) for q in questions}) > 6  # many lengths: real padding
    for q, batched in zip(questions, together):
        alone = solver.solve(q)
        assert (alone.answer, alone.graph.to_json()) == (batched.answer, batched.graph.to_json())
        a, b = (sorted((str(c["answer"]), c["score"]) for c in s.candidates) for s in (alone, batched))
        assert [x for x, _ in a] == [x for x, _ in b]
        assert np.allclose([x for _, x in a], [x for _, x in b], rtol=0, atol=1e-4)


def test_auto_takes_bfloat16_only_where_rows_keep_apart(monkeypatch):
    """On an AMX Xeon a bfloat16 layer sums a row in another order when the batch has more rows, so "auto"
    asks for bfloat16 only where a probe finds each row's bits alone; asked for by name, it is used anyway."""
    import torch.nn.functional as F

    import mycelium.solver as solver_module
    from mycelium.solver import _rows_independent, bfloat16_rows_independent, encoder_dtype

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    for holds, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(solver_module, "bfloat16_rows_independent", lambda: holds)
        assert encoder_dtype("auto") == want and encoder_dtype("bfloat16") == "bfloat16"
    monkeypatch.undo()
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, b: linear(x, w, b) + 1e-2 * (len(x) > 256))  # rows that see the batch
    _rows_independent.cache_clear()
    try:
        assert not bfloat16_rows_independent()
    finally:
        _rows_independent.cache_clear()


@pytest.mark.slow
def test_enumerated_groupings_still_solve(model_dir):
    """DESIGN.md's enumeration of C1's spans, kept to compare with the learned plan."""
    s = Solver.load(model_dir, SolverConfig(plan="enumerate")).solve(EXAMPLE["question"])
    starts, ends = {a for a, _ in s.spans}, {b for _, b in s.spans}
    assert s.spans and all(st.span[0] in starts and st.span[1] in ends for st in s.graph.steps)
    assert any(c["answer"] == 72 for c in s.candidates)


@pytest.mark.slow
def test_predictions_do_not_depend_on_gold(solver):
    import dataclasses

    problems = [get(f"gsm8k/test/{i}") for i in range(6)] + [get("gsm8k/train/0"), get("gsm8k/train/1")]
    answers = [p.answer for p in problems]
    random.Random(0).shuffle(answers)
    shuffled = [dataclasses.replace(p, answer=a, solution="") for p, a in zip(problems, answers)]
    removed = [dataclasses.replace(p, answer="", solution=None) for p in problems]
    runs = [evaluate(solver, ps, "gsm8k", progress=False) for ps in (problems, shuffled, removed)]
    keep = ("answer", "graph", "spans", "score", "candidates", "reason")
    base = [{k: r[k] for k in keep} for r in runs[0].rows]
    for other in runs[1:]:
        assert [{k: r[k] for k in keep} for r in other.rows] == base
    # and the API takes nothing but text
    alone, batched = solver.solve(problems[0].question), solver.solve_batch([p.question for p in problems])[0]
    assert (alone.answer, alone.graph.to_json()) == (batched.answer, batched.graph.to_json())
    assert alone.score == pytest.approx(batched.score, abs=1e-4)  # padding moves the last float bits only


@pytest.mark.slow
def test_pipelined_batches_match_one_at_a_time(model_dir):
    """The encoder reading the next batch on its own thread changes nothing but the time."""
    questions = [get(f"gsm8k/test/{i}").question for i in range(5)] + ["", "Tom has 3 boxes with 4 apples each."]
    runs = []
    for pipeline in (True, False):
        solver = Solver.load(model_dir, SolverConfig(batch_size=2, pipeline=pipeline))
        both = solver.solve_batch(questions), list(solver.solve_each(questions, progress=False))
        runs.append([[(s.answer, s.reason, s.graph.to_json() if s.graph else None, s.score) for s in r] for r in both])
    assert runs[0] == runs[1]
    assert runs[0][0][5][1] and runs[0][0][5][0] is None  # the empty question is refused in its batch


@pytest.mark.slow
def test_worker_processes_give_the_same_answers(model_dir):
    """Batches solved by this process and a spawned one come back in order, as one process solves them."""
    questions = [get(f"gsm8k/test/{i}").question for i in range(6)] + ["", "Tom has 3 boxes with 4 apples each."]
    alone = Solver.load(model_dir, SolverConfig(batch_size=2, workers=1))
    assert alone.workers == 1 and alone.start()._pool is None  # nothing to start
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process of the pool runs: the matmuls' rounding follows the thread count
    try:
        want = [(s.answer, s.reason, s.graph.to_json() if s.graph else None, s.score) for s in alone.solve_batch(questions)]
    finally:
        torch.set_num_threads(threads)
    with Solver.load(model_dir, SolverConfig(batch_size=2, workers=2, pool_from=4)) as pooled:
        assert pooled.settings() == alone.settings()  # how the work is spread is not a setting of the answers
        assert pooled.solve_batch(questions[:3]) and pooled._pool is None  # under pool_from: in this process
        here, finish = [], pooled._finish
        pooled._finish = lambda batch: here.append(1) or finish(batch)  # this process's own batches
        got = list(pooled.solve_each(questions, progress=False))
        assert pooled._pool is not None and pooled._pool.workers == 1  # this process and one spawned
        batches = len(list(pooled.batches(questions, pooled.config.window * pooled.config.batch_size)))
        assert batches >= 4 and 0 < len(here) < batches  # the worker took some while loading, this process the rest
        again = pooled.solve_batch(questions)  # the same workers, started once
        pool = pooled._pool
    assert pooled._pool is None and pool._executor._shutdown_thread  # closed on leaving the block
    for run in (got, again):
        assert [(s.answer, s.reason, s.graph.to_json() if s.graph else None, s.score) for s in run] == want
    assert Solver(alone.model, SolverConfig(workers=2)).workers == 1  # no folder for a worker to load
    with pytest.raises(BadInput, match="workers"):
        SolverConfig(workers=-1)


@pytest.mark.slow
def test_bad_input_gets_a_reason_never_a_crash(solver):
    cases = {
        "": "question is empty",
        "   \n\t": "question is empty",
        "What is the capital of France, and why do people love its museums?": "no quantity",
        "Juan tiene 3 manzanas y compra 4 más. ¿Cuántas manzanas tiene ahora?": "does not look like English",
        "Tom has " + "9" * 200 + " apples and 3 pears. How many fruits does he have?": "too large",
        "Tom has 3 apples. " * 120 + "How many apples?": "over the model's",
        "12 + 7 = ?": None,  # terse but fine: no crash, and an answer or a reason
    }
    t0 = time.monotonic()
    sols = solver.solve_batch(list(cases) + [None, 42])
    assert time.monotonic() - t0 < 30
    for (text, expected), s in zip(cases.items(), sols):
        if expected:
            assert s.answer is None and expected in s.reason, (text[:40], s.reason)
        else:
            assert s.answer is not None or s.reason
    assert sols[-2].reason == "question must be text, got NoneType" and "int" in sols[-1].reason
    with pytest.raises(BadInput, match="question is empty"):
        solver.solve("   ")


def _close(x, y) -> bool:
    """Two JSON values alike, their floats to a relative 1e-5 (rounding both to 5 digits flips at a boundary)."""
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-9)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y))
    return x == y


def test_solve_cli(model_dir, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "mycelium.cli", "solve", *a], capture_output=True, text=True)  # noqa: E731
    out = run(EXAMPLE["question"], "--model", str(model_dir), "--json")
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) >= {"answer", "graph", "spans", "reason"}
    text = run(EXAMPLE["question"], "--model", str(model_dir))
    assert text.returncode == 0 and "spans: “" in text.stdout and ("answer:" in text.stdout)
    bad = run("", "--model", str(model_dir))
    assert bad.returncode == 2 and bad.stderr.strip() == "error: question is empty"
    missing = run("x", "--model", str(tmp_path / "none"))
    assert missing.returncode == 2 and "run `mycelium train` first" in missing.stderr
    rows = tmp_path / "p.jsonl"
    rows.write_text(json.dumps({"question": "Ann has 2 cats and 3 dogs. How many pets?"}) + "\n" + json.dumps({"question": ""}) + "\n")
    batch = run("--file", str(rows), "--model", str(model_dir))
    lines = [json.loads(x) for x in batch.stdout.splitlines()]
    assert batch.returncode == 0 and len(lines) == 2 and lines[1]["reason"] == "question is empty"
    assert run("--file", str(tmp_path / "nope.jsonl"), "--model", str(model_dir)).returncode == 2
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps({"question": q}) + "\n" for q in [
        "Ann has 2 cats and 3 dogs. How many pets?", "Bo reads 4 pages a day for 5 days. How many pages?",
        "A box holds 12 eggs. How many eggs are in 3 boxes?"]))
    out = tmp_path / "answers.jsonl"
    whole = run("--file", str(more), "--model", str(model_dir), "--out", str(out))
    assert whole.returncode == 0 and whole.stdout == "" and "wrote 3 answers" in whole.stderr
    answers = out.read_text().splitlines()
    out.write_text(answers[0] + "\n" + answers[1][:20])  # killed while writing the second answer
    again = run("--file", str(more), "--model", str(model_dir), "--out", str(out))
    assert again.returncode == 0 and "resuming: 1 of 3" in again.stderr
    # The same file as one uninterrupted run: the same answers and graphs; the resumed run's batches hold other
    # questions, which may move a candidate's score by a float's last bits (the heads pad to the batch's longest).
    assert _close([json.loads(x) for x in out.read_text().splitlines()], [json.loads(x) for x in answers])
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"question": "Cy has 7 pens and gives away 2. How many are left?"}) + "\n")
    before = out.read_text()
    clash = run("--file", str(other), "--model", str(model_dir), "--out", str(out))
    assert clash.returncode == 2 and "holds answers to other questions" in clash.stderr
    assert out.read_text() == before  # nothing of the user's is overwritten
    assert run("x", "--model", str(model_dir), "--out", str(out)).returncode == 2


def test_the_collector_waits_for_a_batch_and_comes_back_as_it_was(trained_model_dir):
    import gc

    seen = []
    with _collector_paused():
        seen.append(gc.isenabled())
    assert seen == [False] and gc.isenabled()
    with pytest.raises(ZeroDivisionError):  # an error inside gives the collector back too
        with _collector_paused():
            1 / 0
    assert gc.isenabled()
    gc.disable()  # a caller that turned it off keeps it off
    try:
        with _collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    solver = Solver.load(trained_model_dir)
    paused = []
    original = solver._finish_batch
    solver._finish_batch = lambda batch: paused.append(not gc.isenabled()) or original(batch)
    assert solver.solve("Tom has 3 boxes with 4 apples each. How many apples does he have?").answer is not None
    assert paused == [True] and gc.isenabled()


def test_batches_pad_no_question_past_its_own_rounded_length():
    """Within a window, questions that round up to the same number of tokens share batches (shortest first),
    so no batch pads a question further than its own rounded length; every question is read once."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from mycelium.backbone import backbone_folder
    from mycelium.data import load
    from mycelium.solver import PAD_MULTIPLE

    tokenizer = AutoTokenizer.from_pretrained(backbone_folder())
    questions = [p.question for p in load("gsm8k", "test")[:90]] + ["", None, "one two three"]
    stand_in = SimpleNamespace(config=SolverConfig(batch_size=8),
                               model=SimpleNamespace(tokenizer=tokenizer, config=SimpleNamespace(max_tokens=64)))
    got = list(Solver.batches(stand_in, questions, 40))
    assert sorted(i for b in got for i in b) == list(range(len(questions)))
    assert all(0 < len(b) <= 8 for b in got)
    rounded = lambda i: 0 if not isinstance(questions[i], str) else -(-min(  # noqa: E731
        len(tokenizer(questions[i])["input_ids"]), 64) // PAD_MULTIPLE)
    window_of = lambda i: i // 40  # noqa: E731
    for b in got:
        assert len({rounded(i) for i in b}) == 1 and len({window_of(i) for i in b}) == 1
    assert len({rounded(i) for i in range(len(questions))}) > 2  # several lengths, so several kinds of batch
    assert any(rounded(i) == 64 // PAD_MULTIPLE for i in range(90))  # truncated questions round to the limit
    firsts = [window_of(b[0]) for b in got]
    assert firsts == sorted(firsts)  # windows in order: answers come out early
    for w in range(3):  # shortest first within a window, question order within a length
        order = [i for b in got if window_of(b[0]) == w for i in b]
        assert order == sorted(order, key=lambda i: (rounded(i), i))
