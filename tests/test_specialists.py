"""The specialists on MiniLM: shapes, overfitting a tiny set, checkpoints, resume after kill."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from mycelium.specialists import (OPS, SpecialistConfig, Specialists, c3_any_order_loss, c3_given, encode, losses,
                                  op_logits, reads_before)
from mycelium.errors import BadInput
from mycelium.training import (TrainConfig, WeightAverage, drop_tokens, evaluate, load_model, save_model,
                               step_operands_right, train)

EXAMPLE = {
    "id": "gsm8k/train/0",
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May?",
    "answer": "72",
    "quantities": [{"start": 22, "end": 24, "text": "48", "value": "48"}],
    "steps": [
        {"op": "div", "region": [54, 93], "clauses": [1, 1], "bridging": False, "depends_on": [],
         "operands": [{"source": "quantity", "ref": 0, "value": "48"}, {"source": "orphan", "ref": None, "value": "2"}]},
        {"op": "add", "region": [0, 48], "clauses": [0, 0], "bridging": True, "depends_on": [0],
         "operands": [{"source": "quantity", "ref": 0, "value": "48"}, {"source": "result", "ref": 0, "value": "24"}]},
    ],
    "relevance": [[0, 48], [54, 93]],
    "clauses": [[0, 48], [54, 93], [95, 154]],
    "goal": {"step": 1, "type": "integer"},
}
_Q2 = "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"
SECOND = {
    "id": "gsm8k/train/1", "question": _Q2, "answer": "10",
    "quantities": [{"start": _Q2.index("$12"), "end": _Q2.index("$12") + 3, "text": "$12", "value": "12"},
                   {"start": _Q2.index("50"), "end": _Q2.index("50") + 2, "text": "50", "value": "50"}],
    "steps": [
        {"op": "div", "region": [0, 38], "clauses": [0, 0], "bridging": False, "depends_on": [],
         "operands": [{"source": "quantity", "ref": 0, "value": "12"}, {"source": "orphan", "ref": None, "value": "60"}]},
        {"op": "mul", "region": None, "clauses": None, "bridging": True, "depends_on": [0],
         "operands": [{"source": "result", "ref": 0, "value": "1/5"}, {"source": "quantity", "ref": 1, "value": "50"}]},
    ],
    "relevance": [[0, 38]],
    "clauses": [[0, 38], [40, 89], [91, 112]],
    "goal": {"step": 1, "type": "integer"},
}


@pytest.fixture(scope="module")
def fresh():
    def make():
        return Specialists.create(SpecialistConfig(constants=["1/100", "365"]), seed=0)
    return make


def test_a_seed_fixes_the_new_heads(fresh):
    a, b = fresh(), fresh()
    torch.manual_seed(123)  # whatever the generator held before, the seed decides
    c = Specialists.create(SpecialistConfig(constants=["1/100", "365"]), seed=1)
    for name, w in a.state_dict().items():
        assert torch.equal(w, b.state_dict()[name]), name
    heads = [n for n in a.state_dict() if not n.startswith("encoder.")]
    assert heads and any(not torch.equal(a.state_dict()[n], c.state_dict()[n]) for n in heads)
    assert all(torch.equal(a.state_dict()[n], c.state_dict()[n]) for n in a.state_dict() if n.startswith("encoder."))


def test_encode_targets(fresh):
    m = fresh()
    b = encode(m, [EXAMPLE])
    y = b["targets"]
    assert y["c2"].tolist() == [[3, 0]]  # div, add
    Q, S = 1, 2
    assert y["c3"][0, 0, :2].tolist() == [0, Q + S + 2]  # mention 0; "2" is no kept constant: the extra slot
    assert y["c3"][0, 1, :2].tolist() == [0, Q + 0]  # mention 0, result of step 0
    assert y["c5"][0, 0, 1] == 1 and y["c4"].tolist() == [[0, 1]] and y["c6_goal"].tolist() == [1]
    tokens = m.tokenizer.convert_ids_to_tokens(b["input_ids"][0])
    relevant = [t for t, r in zip(tokens, y["c1"][0]) if r]
    assert relevant[:3] == ["natalia", "sold", "clips"] and "?" not in relevant
    assert not b["cand_mask"][0, 0, Q]  # step 0 cannot point at its own result
    # C1's plan: step 0 reads clause 1, step 1 clause 0 (solution order is not text order), then stop (K + 1)
    assert b["plan_targets"]["start"].tolist() == [[1, 0, 4]] and b["plan_targets"]["end"].tolist() == [[1, 0]]
    assert b["plan_prev_hi"].tolist() == [[-1, 1, 0]]
    assert b["plan_read"][0].tolist() == [[0, 0, 0], [0, 1, 0], [1, 1, 0]]  # [step + 1, clause]: read before
    b2 = encode(m, [SECOND])  # a step with no region is an implicit step (K)
    assert b2["plan_targets"]["start"].tolist() == [[0, 3, 4]]
    old = encode(m, [{k: v for k, v in EXAMPLE.items() if k != "clauses"}])  # labels from before the plan
    assert "plan_targets" not in old and "plan_start" not in m(old)


def test_heads_read_each_question_once_for_many_candidates(fresh):
    """The solver's layout (rows per candidate, states per question, `owner`) gives the heads of copied states."""
    model = Specialists.create(SpecialistConfig(constants=["1/100", "365"], step_reader=True), seed=0)
    for p in (model.c3_pair_next.weight, model.step_o.weight, model.step_k_in, model.step_v_in, model.c3_used):
        torch.nn.init.normal_(p, std=0.05)  # a new model's pair term, step reader and used term add zero: make them count
    batch = encode(model, [EXAMPLE, SECOND])
    with torch.no_grad():
        hidden = model.read(batch["input_ids"], batch["attention_mask"])  # [question, token, d]
        owner = torch.tensor([0, 0, 0, 1, 1])
        g = torch.Generator().manual_seed(0)
        step_mask = (torch.rand(5, *batch["step_mask"].shape[1:], generator=g) > 0.7).float()  # [row, step, token]
        n_steps = torch.tensor([2, 1, 2, 2, 1])
        rows = {"step_mask": step_mask, "mention_mask": batch["mention_mask"][owner], "cand_mask": batch["cand_mask"][owner],
                "attention_mask": batch["attention_mask"][owner], "n_steps": n_steps}
        copied = model.heads(hidden[owner], rows)
        shared = model.heads(hidden, {**rows, "owner": owner, "mention_mask": batch["mention_mask"],
                                      "attention_mask": batch["attention_mask"]})
        # the solver's own layout: each distinct (question, step mask, position) once, rows pointing at them
        step_mask[2] = step_mask[0]  # candidates of one question share steps
        step_mask[4, 0] = step_mask[3, 0]
        copied_again = model.heads(hidden[owner], {**rows, "step_mask": step_mask})
        keys, index = {}, torch.zeros(step_mask.shape[:2], dtype=torch.long)
        for r in range(5):
            for k in range(step_mask.shape[1]):
                index[r, k] = keys.setdefault((int(owner[r]), k, tuple(step_mask[r, k].tolist())), len(keys))
        assert len(keys) < step_mask.shape[0] * step_mask.shape[1]
        table = (torch.tensor([m for _, _, m in keys]), torch.tensor([j for j, _, _ in keys]), torch.tensor([k for _, k, _ in keys]))
        tabled = model.heads(hidden, {**{k: v for k, v in rows.items() if k != "step_mask"}, "owner": owner,
                                      "mention_mask": batch["mention_mask"], "attention_mask": batch["attention_mask"],
                                      "step_table": table, "step_index": index})
    for theirs, ours in ((copied, shared), (copied_again, tabled)):
        assert ours["c3_pair"].abs().max() > 0
        for k in ("c2", "c2_operand", "c3", "c3_pair", "c3_used", "c4", "c6_goal", "c6_type"):
            torch.testing.assert_close(ours[k], theirs[k])
        torch.testing.assert_close(ours["c1"][owner], theirs["c1"])
        for r, n in enumerate(n_steps.tolist()):  # C5 is computed for the pairs the solver reads: earlier -> later steps
            for t in range(n):
                for u in range(t + 1, n):
                    torch.testing.assert_close(ours["c5"][r, t, u], theirs["c5"][r, t, u])


def test_step_operands_as_the_solver_decodes():
    """Candidates 0–2 are mentions, 3 is "no more"; one question, three steps of two operands each."""
    c3 = torch.full((1, 3, 3, 4), -5.0)  # [batch, step, slot, cand]
    c3[0, :, 0, 1] = 2.0  # every step: slot 0 points at mention 1 first
    c3[0, :, 1, 1] = 3.0  # slot 1 prefers mention 1 again, which is taken: its next best is mention 0
    c3[0, :, 1, 0] = 1.0
    y = torch.tensor([[[0, 1, 3], [0, 1, 3], [1, 2, 3]]])  # labels: (0, 1), (0, 1), (1, 2), then "no more"
    ops = torch.tensor([[0, 1, 2]])  # add: order free; sub: order counts; mul, but mention 2 never picked
    assert step_operands_right(c3, y, ops, commutative=True) == (1, 3)  # add right as a set; sub reversed; mul wrong
    assert step_operands_right(c3, y, ops, commutative=False) == (0, 3)  # templates: order always counts
    y[0, 1] = torch.tensor([1, 0, 3])  # sub labelled in the order decoded
    assert step_operands_right(c3, y, ops, commutative=True) == (2, 3)
    y[0, 2] = -100  # an unlabelled step does not count
    assert step_operands_right(c3, y, ops, commutative=True) == (2, 2)


def test_c3_reads_the_operands_picked_before_each_slot():
    """Slot k's logits add pair[p, :] for every pick p in slots before k; no pick, nothing added."""
    g = torch.Generator().manual_seed(0)
    c3, pair = torch.randn(2, 1, 3, 4, generator=g), torch.randn(2, 4, 4, generator=g)  # [batch, step, slot, cand]
    picks = torch.tensor([[[0, 2, -100]], [[-100, -100, -100]]])  # [batch, step, slot]
    given = c3_given({"c3": c3, "c3_pair": pair}, picks)
    torch.testing.assert_close(given[0, 0, 0], c3[0, 0, 0])
    torch.testing.assert_close(given[0, 0, 1], c3[0, 0, 1] + pair[0, 0])
    torch.testing.assert_close(given[0, 0, 2], c3[0, 0, 2] + pair[0, 0] + pair[0, 2])
    torch.testing.assert_close(given[1], c3[1])
    assert c3_given({"c3": c3}, picks) is c3  # a model without the term


def test_c3_reads_what_the_earlier_steps_read():
    """Each step adds the used term for the candidates its earlier steps read: once, or twice and more."""
    picks = torch.tensor([[[0, 1, 4], [0, 2, 4], [3, 0, 4]]])  # [batch, step, slot]; candidate 4 is "no more"
    reads = reads_before(picks, 5)  # [batch, step, cand]
    assert reads[0].tolist() == [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [2, 1, 1, 0, 0]]
    g = torch.Generator().manual_seed(0)
    c3, table = torch.randn(1, 3, 3, 5, generator=g), torch.randn(5, 3, 2, generator=g)  # table: [cand, slot, 2]
    given = c3_given({"c3": c3, "c3_used": table}, picks)
    torch.testing.assert_close(given[0, 0], c3[0, 0])  # the first step reads nothing before it
    torch.testing.assert_close(given[0, 1, 2, 1], c3[0, 1, 2, 1] + table[1, 2, 0])
    torch.testing.assert_close(given[0, 2, 0, 0], c3[0, 2, 0, 0] + table[0, 0, 0] + table[0, 0, 1])  # read twice
    torch.testing.assert_close(given[0, 2, 1, 3], c3[0, 2, 1, 3])  # step 3's own pick is not "before"


def test_c3_takes_a_sums_operands_in_any_order():
    """For add and mul the loss is -log(p(a, b) + p(b, a)); for sub the labelled order alone, as cross-entropy."""
    g = torch.Generator().manual_seed(0)
    out = {"c3": torch.randn(1, 2, 3, 5, generator=g)}  # [batch, step, slot, cand]: 4 is "no more"
    y = torch.tensor([[[0, 2, 4], [1, 3, 4]]])
    lp = torch.log_softmax(out["c3"], -1)
    ordered = torch.nn.functional.cross_entropy(out["c3"].flatten(0, 2), y.flatten())
    sub = torch.tensor([[OPS.index("sub"), OPS.index("div")]])
    torch.testing.assert_close(c3_any_order_loss(out, y, sub), ordered)
    add = torch.tensor([[OPS.index("add"), OPS.index("sub")]])
    first = torch.logaddexp(lp[0, 0, 0, 0] + lp[0, 0, 1, 2], lp[0, 0, 0, 2] + lp[0, 0, 1, 0]) + lp[0, 0, 2, 4]
    second = lp[0, 1, 0, 1] + lp[0, 1, 1, 3] + lp[0, 1, 2, 4]
    torch.testing.assert_close(c3_any_order_loss(out, y, add), -(first + second) / 6)
    assert c3_any_order_loss(out, y, add) < ordered


def test_c2_learns_a_sums_operation_from_its_operands_in_either_order(fresh):
    """With any_order, C2's loss on an add or mul step averages its operands' labelled and swapped orders."""
    model = fresh()
    batch = encode(model, [EXAMPLE])  # div(48, 2), then add(48, s0)
    with torch.no_grad():
        torch.nn.init.normal_(model.c2_operand.weight, std=0.5)  # operands that say something about the operation
        out = model(batch)
    y = batch["targets"]
    ce = torch.nn.functional.cross_entropy
    plain = losses(out, batch, ("c2",))["c2"]
    swapped = y["c3"].clone()
    swapped[0, 1, :2] = y["c3"][0, 1, [1, 0]]  # the add step's two operands swapped; the div step as labelled
    either = ce(op_logits(out, swapped).flatten(0, 1), y["c2"].flatten(), ignore_index=-100)
    torch.testing.assert_close(losses(out, batch, ("c2",), any_order=True)["c2"], (plain + either) / 2)
    assert not torch.isclose(plain, either)


def test_new_terms_start_at_zero_and_old_models_load_without_them(fresh, tmp_path):
    model = fresh()
    batch = encode(model, [EXAMPLE, SECOND])
    with torch.no_grad():
        out = model(batch)
    assert out["c3_pair"].shape == (2, out["c3"].shape[-1], out["c3"].shape[-1])
    assert out["c3_used"].shape == (out["c3"].shape[-1], 4, 2)
    assert torch.equal(c3_given(out, batch["targets"]["c3"]), out["c3"])  # V and the used term start at zero
    assert torch.equal(model.plan_used, torch.zeros(2, 2))  # the plan's read term too
    old = Specialists.create(SpecialistConfig(constants=["1/100", "365"], c3_pairs=False, step_reader=False,
                                              c3_used=False, plan_used=False), seed=0)
    save_model(old, tmp_path, {})
    cfg = json.loads((tmp_path / "config.json").read_text())
    for option in ("c3_pairs", "step_reader", "c3_used", "plan_used"):  # as a model saved before the options
        del cfg["specialists"][option]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(tmp_path)
    assert not loaded.config.c3_pairs and not hasattr(loaded, "c3_pair_prev")
    assert not loaded.config.step_reader and not hasattr(loaded, "step_q")
    assert not loaded.config.c3_used and not hasattr(loaded, "c3_used")
    assert not loaded.config.plan_used and not hasattr(loaded, "plan_used")
    cfg["specialists"]["an_option_of_another_version"] = False  # switched off, it changes nothing
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert not load_model(tmp_path).config.c3_used
    cfg["specialists"]["an_option_of_another_version"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInput, match="an_option_of_another_version"):
        load_model(tmp_path)
    with torch.no_grad():
        assert "c3_pair" not in loaded(batch) and "c3_used" not in loaded(batch)


def test_the_plan_scores_clauses_its_earlier_steps_read(fresh):
    """EXAMPLE's step 0 reads clause 1, step 1 clause 0: step 1's first clause and step 2's (stop) see them read."""
    model = fresh()
    batch = encode(model, [EXAMPLE])
    with torch.no_grad():
        before = model(batch)
        model.plan_used.copy_(torch.tensor([[-3.0, -5.0], [2.0, 7.0]]))  # [first / last clause, once / twice]
        after = model(batch)
    moved = after["plan_start"][0] - before["plan_start"][0]  # [step + 1, clause + 2]
    torch.testing.assert_close(moved, torch.tensor([[0.0, 0, 0, 0, 0], [0, -3, 0, 0, 0], [-3, -3, 0, 0, 0]]))
    moved = after["plan_end"][0] - before["plan_end"][0]  # [step, end], the step's labelled first clause
    ok = before["plan_end"][0] > -1e3
    torch.testing.assert_close(moved[ok], torch.tensor([[0.0, 0, 0], [0, 2, 0]])[ok])


def test_step_operands_decode_each_slot_given_the_picks_before_it():
    """With a pair term, the greedy decode's second pick follows its first: mention 1 calls for mention 0."""
    c3 = torch.full((1, 1, 2, 4), -5.0)  # [batch, step, slot, cand]: mentions 0-2, "no more"
    c3[0, 0, 0, 1] = 2.0
    c3[0, 0, 1, 2], c3[0, 0, 1, 0] = 1.0, 0.0  # alone, slot 1 prefers mention 2
    pair = torch.zeros(1, 4, 4)
    y, ops = torch.tensor([[[1, 0]]]), torch.tensor([[1]])  # sub(m1, m0)
    assert step_operands_right(c3, y, ops, commutative=True) == (0, 1)
    assert step_operands_right(c3, y, ops, commutative=True, pair=pair) == (0, 1)  # a zero term changes nothing
    pair[0, 1, 0] = 2.0  # after mention 1, mention 0
    assert step_operands_right(c3, y, ops, commutative=True, pair=pair) == (1, 1)


@pytest.mark.slow
def test_overfits_a_tiny_set(fresh):
    m = fresh()
    batch = encode(m, [EXAMPLE, SECOND])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4)
    first = None
    for _ in range(25):
        loss = sum(losses(m(batch), batch).values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    metrics = evaluate(m, [EXAMPLE, SECOND])
    assert metrics["c2_accuracy"] == 1.0 and metrics["c3_operand_accuracy"] == 1.0 and metrics["c3_step_accuracy"] == 1.0
    assert metrics["c6_goal_accuracy"] == 1.0 and metrics["c5_edge_f1"] == 1.0 and metrics["c1_token_f1"] > 0.9
    assert metrics["c1_plan_accuracy"] == 1.0
    # free-running, the beam finds both labelled step sequences, and puts EXAMPLE's first (checked below)
    assert metrics["c1_plan_found"] == 1.0 and metrics["c1_plan_first"] >= 0.5
    # The solver's beam search over plans finds the labelled step sequence first.
    from mycelium.solver import plans

    m.eval()
    qs = [EXAMPLE["question"], SECOND["question"]]
    tok = m.tokenizer(qs, return_offsets_mapping=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        found = plans(m, m.read(tok["input_ids"], tok["attention_mask"]), tok["attention_mask"], tok["offset_mapping"],
                      [[tuple(c) for c in ex["clauses"]] for ex in (EXAMPLE, SECOND)], beam=4, top=3)
    assert found[0][0][1] == [(54, 93), (0, 48)] and [(0, 38), None] in [g for _, g in found[1]]
    assert found[0][0][0] > found[0][1][0] and len(found[0]) == 3


def test_checkpoint_round_trip(fresh, tmp_path):
    m = fresh()
    save_model(m, tmp_path, {"note": "test"})
    again = load_model(tmp_path)
    b = encode(m, [EXAMPLE])
    m.eval()
    with torch.no_grad():
        a, c = m(b), again(b)
    assert all(torch.allclose(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "config.json").read_text())["specialists"]["constants"] == ["1/100", "365"]


TRAIN_SCRIPT = """
import sys, json, torch
import mycelium.training as training
from mycelium.specialists import SpecialistConfig, Specialists
from tests.test_specialists import EXAMPLE, SECOND
real = training._save_checkpoint
def save_then_announce(*a, **k):
    real(*a, **k)
    print("CHECKPOINT", flush=True)
training._save_checkpoint = save_then_announce
torch.manual_seed(0)
m = Specialists.create(SpecialistConfig(constants=["1/100"]))
training.train(m, [EXAMPLE, SECOND] * 2, [EXAMPLE], training.TrainConfig(epochs=int(sys.argv[2]), batch_size=2, patience=99),
               __import__("pathlib").Path(sys.argv[1]), progress=False)
print("DONE", flush=True)
"""


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(tmp_path), "50"], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "CHECKPOINT"  # epoch 1 saved
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(tmp_path), "3"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("CHECKPOINT") <= 2  # resumed after epoch 1 (or 2), not from scratch
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert (tmp_path / "model.safetensors").exists()


def test_the_weight_average_trails_the_weights_and_swaps_in_and_out():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))  # BatchNorm: an integer buffer too
    start = net[0].weight.detach().clone()
    avg = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        for step in range(50):
            net[0].weight.add_(1.0)  # the weights walk away one step at a time
            avg.update(net, step)
    now = net[0].weight.detach().clone()
    shadow = avg.shadow["0.weight"]
    # behind the walk by about decay / (1 - decay) steps, the decay still warming up to 0.9: 5 steps here
    assert torch.all(shadow > start + 40) and torch.all(shadow < now - 3)
    assert "1.num_batches_tracked" not in avg.shadow
    with avg.applied(net):
        assert torch.equal(net[0].weight, shadow)
    assert torch.equal(net[0].weight, now)
    with pytest.raises(BadInput):
        TrainConfig(ema=1.0)


def test_the_weight_average_is_what_training_saves_and_resumes(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    m = Specialists.create(SpecialistConfig(constants=["1/100"]))
    train(m, [EXAMPLE, SECOND] * 2, [EXAMPLE], TrainConfig(epochs=1, batch_size=2, patience=9, ema=0.5), tmp_path,
          progress=False)
    saved, ckpt = load_file(str(tmp_path / "model.safetensors")), load_file(str(tmp_path / "checkpoint.safetensors"))
    key = "c2.weight"
    assert torch.equal(saved[key], ckpt[f"ema.{key}"]) and not torch.equal(saved[key], ckpt[f"model.{key}"])
    state = train(m, [EXAMPLE, SECOND] * 2, [EXAMPLE], TrainConfig(epochs=2, batch_size=2, patience=9, ema=0.5), tmp_path,
                  progress=False)
    assert [h["epoch"] for h in state["history"]] == [1, 2] and state["steps"] == 4  # resumed, average included


def test_raising_the_patience_continues_a_run_that_stopped_early(tmp_path, monkeypatch):
    import mycelium.training

    monkeypatch.setattr(mycelium.training, "_score", lambda metrics, heads: 0.5)  # every epoch after the first is stale
    torch.manual_seed(0)
    m = Specialists.create(SpecialistConfig(constants=["1/100"]))
    state = train(m, [EXAMPLE, SECOND], [EXAMPLE], TrainConfig(epochs=9, batch_size=2, patience=1), tmp_path,
                  progress=False)
    assert [h["epoch"] for h in state["history"]] == [1, 2] and state["stale"] == 1
    state = train(m, [EXAMPLE, SECOND], [EXAMPLE], TrainConfig(epochs=4, batch_size=2, patience=5), tmp_path,
                  progress=False)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4] and state["stale"] == 3


def test_a_linear_rate_falls_to_zero_at_the_last_epoch_and_is_part_of_the_run(tmp_path, monkeypatch, capsys):
    rates, real = [], torch.optim.AdamW.step

    def step(self, *a, **k):
        rates.append([g["lr"] for g in self.param_groups])
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    torch.manual_seed(0)
    m = Specialists.create(SpecialistConfig(constants=["1/100"]))
    cfg = TrainConfig(epochs=2, batch_size=2, patience=9, schedule="linear")
    train(m, [EXAMPLE, SECOND] * 2, [EXAMPLE], cfg, tmp_path, progress=False)  # 2 batches an epoch: 4 steps
    assert rates == [[cfg.lr * f, cfg.head_lr * f] for f in (1, 0.75, 0.5, 0.25)]
    state = train(m, [EXAMPLE, SECOND] * 2, [EXAMPLE], TrainConfig(epochs=3, batch_size=2, patience=9, schedule="linear"),
                  tmp_path, progress=False)  # the rate depends on the epochs: more of them is another run
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3] and "starting over" in capsys.readouterr().err
    with pytest.raises(BadInput):
        TrainConfig(schedule="cosine")


def test_the_plan_loss_weight_scales_only_the_plans_loss(tmp_path):
    from safetensors import safe_open

    def one_step(weight: float, folder):
        torch.manual_seed(0)
        m = Specialists.create(SpecialistConfig(constants=["1/100"]))
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        cfg = TrainConfig(epochs=1, batch_size=2, plan_loss_weight=weight, ema=0)
        train(m, [EXAMPLE, SECOND], [EXAMPLE], cfg, folder, progress=False)  # one batch: one step
        return cfg, before, dict(m.named_parameters())

    cfg, before, after = one_step(0.0, tmp_path / "off")
    plan = [n for n in after if n.startswith("plan_")]
    assert plan
    for n in plan:  # no gradient from the plan: only AdamW's decay moves its heads
        assert torch.allclose(after[n], before[n] * (1 - cfg.head_lr * cfg.weight_decay), atol=1e-7), n
    _, _, full = one_step(1.0, tmp_path / "on")
    assert any(not torch.allclose(full[n], after[n]) for n in plan)
    for folder, weight in (("off", 0.0), ("on", None)):  # the plain sum stays out: older checkpoints still resume
        with safe_open(str(tmp_path / folder / "checkpoint.safetensors"), framework="pt") as f:
            assert json.loads(f.metadata()["state"])["fingerprint"]["train"].get("plan_loss_weight") == weight
    with pytest.raises(BadInput):
        TrainConfig(plan_loss_weight=-1)


def test_token_dropout_masks_words_but_not_quantities_special_tokens_or_padding(fresh, tmp_path):
    m = fresh()
    batch = encode(m, [EXAMPLE, SECOND])
    ids, tok = batch["input_ids"], m.tokenizer
    dropped = drop_tokens(batch, tok, 0.5, torch.Generator().manual_seed(0))["input_ids"]
    changed = dropped != ids  # [batch, token]
    assert (dropped[changed] == tok.mask_token_id).all() and 0.3 < changed.sum() / batch["attention_mask"].sum() < 0.7
    assert not changed[batch["mention_mask"].sum(1) > 0].any()  # "48", "$12", "50" stay
    assert not changed[~batch["attention_mask"].bool()].any()
    assert not changed[torch.isin(ids, torch.tensor(tok.all_special_ids))].any()
    assert torch.equal(drop_tokens(batch, tok, 0.0)["input_ids"], ids) and batch["input_ids"] is ids  # a copy
    # Training with it is part of the run (a checkpoint without it does not resume with it), and it is checked.
    train(fresh(), [EXAMPLE, SECOND], [EXAMPLE], TrainConfig(epochs=1, batch_size=2, token_dropout=0.2), tmp_path,
          progress=False)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["state"])["fingerprint"]["train"]["token_dropout"] == 0.2
    with pytest.raises(BadInput):
        TrainConfig(token_dropout=1.0)


def test_a_checkpoint_from_another_model_starts_over(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=2, patience=9)
    train(Specialists.create(SpecialistConfig(constants=["1/100"])), [EXAMPLE, SECOND], [EXAMPLE], cfg, tmp_path,
          progress=False)
    other = Specialists.create(SpecialistConfig(constants=["1/100", "365"]))  # another constant table: other shapes
    state = train(other, [EXAMPLE, SECOND], [EXAMPLE], cfg, tmp_path, progress=False)
    assert [h["epoch"] for h in state["history"]] == [1] and "starting over" in capsys.readouterr().err


def test_a_cut_encoder_is_the_full_ones_lower_layers(tiny_teacher_dir):
    from transformers import AutoModel

    from mycelium.backbone import backbone_folder, keep_layers, model_name
    from mycelium.errors import BadInput

    ids, mask = torch.randint(5, 1000, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    for name, n in ((str(backbone_folder()), 3), (tiny_teacher_dir, 1)):  # BERT's encoder.layer, Llama's layers
        full = AutoModel.from_pretrained(name, use_safetensors=True).eval()
        cut = keep_layers(AutoModel.from_pretrained(name, use_safetensors=True), n).eval()
        with torch.no_grad():
            states = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            mine = cut(input_ids=ids, attention_mask=mask).last_hidden_state
        want = full.norm(states[n]) if hasattr(full, "norm") else states[n]  # a decoder's last norm stays on top
        assert torch.allclose(mine, want, atol=1e-5), name
        assert cut.config.num_hidden_layers == n
        assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in full.parameters())
        for bad in (0, full.config.num_hidden_layers + 1):
            with pytest.raises(BadInput, match="encoder layers must be between 1"):
                keep_layers(AutoModel.from_pretrained(name, use_safetensors=True), bad)
    assert model_name("minilm") == "minilm" and model_name("minilm", 3) == "minilm-l3"
    assert model_name("Qwen/Qwen2.5-0.5B") == "Qwen_Qwen2.5-0.5B"


def test_a_cut_model_saves_and_loads_cut(tmp_path):
    m = Specialists.create(SpecialistConfig(constants=["1/100"], encoder_layers=2), seed=0).eval()
    assert len(m.encoder.encoder.layer) == 2
    save_model(m, tmp_path, {})
    again = load_model(tmp_path)
    assert again.config.encoder_layers == 2 and again.state_dict().keys() == m.state_dict().keys()
    b = encode(m, [EXAMPLE, SECOND])
    with torch.no_grad():
        a, c = m(b), again(b)
    assert all(torch.allclose(a[k], c[k]) for k in a)


def test_the_step_reader_starts_as_nothing_and_reads_outside_the_region():
    """A new reader adds zero; once it counts, a step's state moves when text outside its region changes."""
    model = Specialists.create(SpecialistConfig(constants=["1/100", "365"], step_reader=True), seed=0)
    batch = encode(model, [EXAMPLE])
    hidden = model.read(batch["input_ids"], batch["attention_mask"]).detach()  # [1, token, d]
    mask = batch["step_mask"][0]  # [step, token]
    table = torch.randn(mask.shape[0], hidden.shape[-1])
    owner = torch.zeros(mask.shape[0], dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(model.read_steps(table, mask, owner, hidden, batch["attention_mask"]), table)
        torch.nn.init.normal_(model.step_o.weight, std=0.05)
        read = model.read_steps(table, mask, owner, hidden, batch["attention_mask"])
        outside = (mask[0] == 0) & (batch["attention_mask"][0] > 0)  # [token]
        moved = hidden.clone()
        moved[0, outside] += 1.0
        assert not torch.allclose(model.read_steps(table, mask, owner, moved, batch["attention_mask"]), read)
        padding = hidden.clone()  # what padding holds is never read
        longer = torch.cat([batch["attention_mask"], torch.zeros(1, 3, dtype=batch["attention_mask"].dtype)], 1)
        padded = torch.cat([padding, torch.randn(1, 3, hidden.shape[-1])], 1)
        torch.testing.assert_close(model.read_steps(table, torch.cat([mask, torch.zeros(mask.shape[0], 3)], 1), owner,
                                                    padded, longer), read)
