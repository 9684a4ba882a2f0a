"""Training and evaluating the specialists: a plain PyTorch loop.

    $ mycelium train --run runs/main --specialist all
    epoch 1: 100%|██████████| 94/94 [00:41<00:00, 2.27batch/s, loss=3.1]
    dev: c1_token_f1 0.71  c2_accuracy 0.80  c3_operand_accuracy 0.62 ...

Seeded (the new heads by `mycelium train --seed`, the batches by the loop); the dev split (GSM8K dev ids) decides early stopping; the best model
is saved as safetensors with a JSON config; after every epoch a checkpoint
(weights, optimizer moments and the loop's position, all safetensors + JSON)
lets a killed run resume where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .config import torch_device
from .errors import BadInput
from .specialists import (HEADS, OPS, SpecialistConfig, Specialists, c3_after_reads, c3_given, encode, labelled_plan,
                          losses, op_logits)
from .store import atomic_write


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 16
    lr: float = 5e-5  # encoder
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 2  # epochs without dev improvement before stopping
    seed: int = 0
    device: str = "cpu"  # or cuda: the loop is the same, batches follow the model
    c3_any_order: bool = True  # C3's loss takes a sum's or product's operands in any order (`c3_any_order_loss`)
    # Dev metrics, early stopping and the saved model read an exponential moving average of the weights
    # (`WeightAverage`), not the last step's; 0: the last step's. 0.999 averages about the last two epochs.
    ema: float = 0.999
    # "linear": both learning rates fall linearly to 0 at the last epoch; "constant": they stay. The linear
    # rate depends on `epochs`, so with it raising the epochs starts the run over instead of continuing it.
    schedule: str = "constant"
    # C1's plan loss is multiplied by this. The plan memorizes most: on GSM8K its found@16 was 0.56 on 479 fit
    # problems against 0.16 on dev (C2 0.85 against 0.74), so less of its gradient reaches the shared encoder.
    # 0.3 against 1 (the main job, GSM8K dev): plan found@16 0.177 against 0.163, C2 0.754 against 0.742, and
    # 5 scorer seeds 21.6% against 19.6% (mean).
    plan_loss_weight: float = 0.3
    # Each training question's words are replaced by the tokenizer's mask token with this probability (not its
    # quantities, nor special tokens), a new draw every batch: against memorising the training questions' wording.
    # 0.1 on stop 36's labels (stop 37): GSM8K dev 19.5% against 20.3% (5 scorer seeds, mean), so off by default.
    token_dropout: float = 0.0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise BadInput(f"epochs, batch size and patience must be at least 1 (got {self.epochs}, {self.batch_size}, "
                           f"{self.patience})")
        if not 0 <= self.ema < 1:
            raise BadInput(f"the weight average's decay must be in [0, 1) (got {self.ema})")
        if not (self.lr > 0 and self.head_lr > 0):
            raise BadInput(f"learning rates must be above 0 (got {self.lr}, {self.head_lr})")
        if not self.plan_loss_weight >= 0:
            raise BadInput(f"the plan's loss weight must be at least 0 (got {self.plan_loss_weight})")
        if not 0 <= self.token_dropout < 1:
            raise BadInput(f"token dropout must be in [0, 1) (got {self.token_dropout})")
        if self.schedule not in ("constant", "linear"):
            raise BadInput(f"unknown learning-rate schedule {self.schedule!r}; use constant or linear")


def to_device(batch, device):
    """A batch (nested dicts of tensors) on the model's device."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def drop_tokens(batch: dict, tokenizer, p: float, generator: torch.Generator | None = None) -> dict:
    """The batch with each word token replaced by the mask token with probability `p`; quantity mentions,
    special tokens and padding stay. Positions and offsets do not move, so every label still lines up."""
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    if not p or mask_id is None:  # a tokenizer with neither token: nothing to replace words with
        return batch
    ids = batch["input_ids"]  # [batch, token]
    keep = (batch["mention_mask"].sum(1) > 0) | ~batch["attention_mask"].bool()  # [batch, token]
    keep |= torch.isin(ids, torch.tensor(tokenizer.all_special_ids, dtype=ids.dtype))
    drop = (torch.rand(ids.shape, generator=generator) < p) & ~keep
    return {**batch, "input_ids": ids.masked_fill(drop, mask_id)}


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    out, start = [], None
    for i, v in enumerate(list(mask) + [0]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


def _prf(tp, p, g) -> float:
    prec, rec = tp / max(p, 1), tp / max(g, 1)
    return 2 * prec * rec / max(prec + rec, 1e-9)


@torch.no_grad()
def evaluate(model: Specialists, examples: list[dict], batch_size: int = 32, plans_top: int = 16) -> dict:
    """Development metrics of every head.

    C1's plan is scored two ways: teacher-forced per step (`c1_plan_accuracy`: each step given the labelled
    earlier ones), and free-running as the solver runs it (`c1_plan_first`, `c1_plan_found`: the labelled
    step sequence is the beam's best plan, or among its `plans_top`; over the examples with clauses).
    """
    from .solver import plans  # the solver's own beam (it imports this module)

    model.eval()
    c = {k: 0 for k in ("t_tp", "t_p", "t_g", "s_tp", "s_p", "s_g", "c2", "n2", "c3", "n3", "c3s", "n3s", "c3e", "n3e",
                        "c4", "n4",
                        "e_tp", "e_p", "e_g", "c6", "n6", "c6t", "n6t", "pl", "npl", "pf", "pk", "np")}
    device = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        batch = to_device(encode(model, chunk), device)
        hidden = model.read(batch["input_ids"], batch["attention_mask"])  # [batch, token, d]
        out, y = model.heads(hidden, batch), batch["targets"]
        if "plan_start" in out:
            found = plans(model, hidden, batch["attention_mask"], batch["offsets"].cpu(),
                          [[tuple(k) for k in ex["clauses"]] for ex in chunk], plans_top, plans_top)
            for ex, top in zip(chunk, found):
                gold = labelled_plan(ex)
                ranked = [regions for _, regions in top]
                c["np"] += 1
                c["pf"] += bool(ranked) and ranked[0] == gold
                c["pk"] += gold in ranked
        mask = batch["attention_mask"].bool()
        pred1, gold1 = (out["c1"] > 0) & mask, (y["c1"] > 0.5) & mask
        c["t_tp"] += int((pred1 & gold1).sum()); c["t_p"] += int(pred1.sum()); c["t_g"] += int(gold1.sum())
        for b in range(len(pred1)):
            ps, gs = _spans(pred1[b].cpu().numpy()), _spans(gold1[b].cpu().numpy())
            c["s_p"] += len(ps); c["s_g"] += len(gs)
            c["s_tp"] += sum(any(min(pe, ge) - max(ps_, gs_) >= 0.5 * max(pe, ge) - 0.5 * min(ps_, gs_)
                                 for gs_, ge in gs) for ps_, pe in ps)
        if "plan_start" in out:  # teacher-forced: first clause (or implicit, stop) and last clause both right
            ys, ye = batch["plan_targets"]["start"], batch["plan_targets"]["end"]
            hit = out["plan_start"].argmax(-1) == ys  # [batch, step + 1]
            hit[:, :-1] &= (ye < 0) | (out["plan_end"].argmax(-1) == ye)
            c["pl"] += int(hit[ys >= 0].sum()); c["npl"] += int((ys >= 0).sum())
        ok = y["c2"] >= 0
        ops = op_logits(out, y["c3"]).argmax(-1)  # given the labelled operands, as the solver asks after choosing them
        c["c2"] += int((ops[ok] == y["c2"][ok]).sum()); c["n2"] += int(ok.sum())
        end = out["c3"].shape[-1] - 1  # "no more operands": scored apart, as arity
        forced = c3_given(out, y["c3"])  # each slot given the labelled operands before it
        ok = (y["c3"] >= 0) & (y["c3"] != end)
        c["c3"] += int((forced.argmax(-1)[ok] == y["c3"][ok]).sum()); c["n3"] += int(ok.sum())
        # each step given the labelled earlier steps' reads, as the solver's beam gives it its own
        right, n = step_operands_right(c3_after_reads(out, y["c3"]), y["c3"], y["c2"], commutative=model.config.c2_labels == "ops",
                                       pair=out.get("c3_pair"))
        c["c3s"] += right; c["n3s"] += n
        ok = y["c3"] >= 0
        hit = (forced.argmax(-1) == end) == (y["c3"] == end)
        c["c3e"] += int(hit[ok].sum()); c["n3e"] += int(ok.sum())
        ok = y["c4"] >= 0
        c["c4"] += int((out["c4"].argmax(-1)[ok] == y["c4"][ok]).sum()); c["n4"] += int(ok.sum())
        ok = y["c5"] >= 0
        pe, ge = (out["c5"][ok] > 0), (y["c5"][ok] > 0.5)
        c["e_tp"] += int((pe & ge).sum()); c["e_p"] += int(pe.sum()); c["e_g"] += int(ge.sum())
        S = out["c6_goal"].shape[1]
        goal = out["c6_goal"].masked_fill(~(torch.arange(S, device=device)[None] < batch["n_steps"][:, None]), -1e4).argmax(-1)
        ok = y["c6_goal"] >= 0
        c["c6"] += int((goal[ok] == y["c6_goal"][ok]).sum()); c["n6"] += int(ok.sum())
        ok = y["c6_type"] >= 0
        c["c6t"] += int((out["c6_type"].argmax(-1)[ok] == y["c6_type"][ok]).sum()); c["n6t"] += int(ok.sum())
    r = lambda a, n: c[a] / max(c[n], 1)  # noqa: E731
    return {"c1_token_f1": _prf(c["t_tp"], c["t_p"], c["t_g"]), "c1_span_f1": _prf(c["s_tp"], c["s_p"], c["s_g"]),
            "c1_plan_accuracy": r("pl", "npl"), "c1_plan_first": r("pf", "np"), "c1_plan_found": r("pk", "np"),
            "c2_accuracy": r("c2", "n2"), "c3_operand_accuracy": r("c3", "n3"), "c3_step_accuracy": r("c3s", "n3s"),
            "c3_arity_accuracy": r("c3e", "n3e"), "c4_accuracy": r("c4", "n4"),
            "c5_edge_f1": _prf(c["e_tp"], c["e_p"], c["e_g"]), "c6_goal_accuracy": r("c6", "n6"),
            "c6_type_accuracy": r("c6t", "n6t"), "examples": len(examples)}


def step_operands_right(c3, y_c3, y_c2, commutative: bool, pair=None) -> tuple[int, int]:
    """Steps whose operands C3 gets all right, decoded greedily as the solver's beam does: slot by slot,
    each slot given C3's own earlier picks (`pair`, C3's operand-after-operand term, if the model has one), no
    candidate twice, as many as the label has; order ignored for add and mul. Returns (right, labelled steps).

    Per-slot accuracy (`c3_operand_accuracy`) counts 16 + 3 labelled as 3 + 16 wrong and a
    repeated pick right; this is the figure a decoded graph lives with.
    c3: [batch, step, slot, cand] logits; y_c3: [batch, step, slot]; y_c2: [batch, step] operation labels;
    pair: [batch, cand, cand] or None.
    """
    end = c3.shape[-1] - 1  # "no more operands"
    gold = y_c3.masked_fill(y_c3 == end, -100)  # [batch, step, slot]
    labelled = (gold >= 0).any(-1) & (y_c2 >= 0)  # [batch, step]
    used = torch.zeros_like(c3[:, :, 0], dtype=torch.bool)  # [batch, step, cand]
    used[..., end] = True
    before = torch.zeros_like(c3[:, :, 0])  # [batch, step, cand]: the pair terms of the picks so far
    rows = torch.arange(c3.shape[0], device=c3.device)[:, None]
    picks = []
    for k in range(c3.shape[2]):
        pick = (c3[:, :, k] + before).masked_fill(used, float("-inf")).argmax(-1)  # [batch, step]
        used = used.scatter(2, pick[..., None], True)
        if pair is not None:
            before = before + pair[rows, pick]
        picks.append(pick)
    picks = torch.stack(picks, -1).masked_fill(gold < 0, -100)  # [batch, step, slot]: as many as labelled
    if commutative:
        unordered = (y_c2 == OPS.index("add")) | (y_c2 == OPS.index("mul"))  # [batch, step]
        same_set = (picks.sort(-1).values == gold.sort(-1).values).all(-1)
        right = torch.where(unordered, same_set, (picks == gold).all(-1))
    else:
        right = (picks == gold).all(-1)
    return int((right & labelled).sum()), int(labelled.sum())


def _score(metrics: dict, heads) -> float:
    keys = {"c1": ["c1_token_f1", "c1_plan_accuracy"], "c2": ["c2_accuracy"], "c3": ["c3_operand_accuracy"], "c4": ["c4_accuracy"],
            "c5": ["c5_edge_f1"], "c6": ["c6_goal_accuracy"]}
    return float(np.mean([metrics[k] for h in heads for k in keys[h]]))


def _batches(examples: list[dict], size: int, seed: int, pool: int = 50) -> list[list[int]]:
    """Shuffled batches of similar question length: less padding, about a third less time per epoch.

    The order is shuffled, cut into pools of `pool` batches, each pool sorted by
    length and batched, and the batches shuffled again.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=g).tolist()
    batches = []
    for i in range(0, len(order), size * pool):
        chunk = sorted(order[i:i + size * pool], key=lambda k: len(examples[k]["question"]))
        batches += [chunk[j:j + size] for j in range(0, len(chunk), size)]
    return [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]


class WeightAverage:
    """An exponential moving average of the model's floating-point weights, updated after every step.

    With a constant learning rate the last step's weights wander around the optimum from batch to batch;
    their average sits nearer it. Measured first by hand on stop 31's run continued for two more epochs:
    the mean of the weights after epochs 8, 9 and 10 put GSM8K dev at 19.5% (5 scorer seeds, mean) against
    18.9% for epoch 8 alone, though epochs 9 and 10 alone were each worse on dev than 8 (docs/experiments.md, stop 32).
    The decay warms up, (1 + n) / (10 + n) after n steps, so the first steps' random heads fade quickly.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self.names = list(self.shadow)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, steps: int) -> None:
        """Fold in the weights after `steps` optimizer steps before this one."""
        live = model.state_dict()
        d = min(self.decay, (1 + steps) / (10 + steps))
        torch._foreach_lerp_([self.shadow[k] for k in self.names], [live[k].detach() for k in self.names], 1 - d)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """The model with the averaged weights inside the block, its own weights back after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(own, strict=False)


def _save_checkpoint(path: Path, model, opt, state: dict, average: WeightAverage | None = None) -> None:
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if average is not None:
        tensors |= {f"ema.{k}": v.cpu().contiguous() for k, v in average.shadow.items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = (v.cpu() if torch.is_tensor(v) else torch.tensor(v)).contiguous()
    tensors["rng"] = torch.get_rng_state()
    meta = {"state": json.dumps(state), "param_groups": json.dumps(osd["param_groups"])}
    atomic_write(path, save(tensors, metadata=meta))


def _load_checkpoint(path: Path, model, opt, fingerprint: dict, average: WeightAverage | None = None) -> dict | None:
    """The loop's saved state, with weights, optimizer moments and the weight average restored; None when the
    checkpoint is from another run (other settings, data or model code): that run is not resumed but started over."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state = json.loads(meta["state"])
        weights = {k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
        mine = model.state_dict()
        if state.get("fingerprint") != fingerprint or weights.keys() != mine.keys() or any(
                weights[k].shape != mine[k].shape for k in mine):
            return None
        model.load_state_dict(weights)
        moments: dict = {}
        for k in f.keys():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                moments.setdefault(int(idx), {})[name] = f.get_tensor(k)
        opt.load_state_dict({"state": moments, "param_groups": json.loads(meta["param_groups"])})
        torch.set_rng_state(f.get_tensor("rng"))
        if average is not None:
            average.shadow = {k: f.get_tensor(f"ema.{k}").to(average.shadow[k]) for k in average.names}
    return state


def save_model(model: Specialists, folder: Path, extra: dict) -> None:
    from safetensors.torch import save

    atomic_write(folder / "model.safetensors", save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
    atomic_write(folder / "config.json", json.dumps(model.config_dict() | extra, indent=1).encode())


def load_model(folder: Path) -> Specialists:
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    for option in ("c3_pairs", "step_reader", "c3_used", "plan_used"):  # saved before each option existed
        cfg["specialists"].setdefault(option, False)
    known = {f.name for f in fields(SpecialistConfig)}
    for option in set(cfg["specialists"]) - known:  # an option another version had: switched off, it is nothing
        if cfg["specialists"].pop(option) not in (False, None):
            raise BadInput(f"{folder} was trained with {option} on, which this version of mycelium does not have")
    model = Specialists.create(SpecialistConfig(**cfg["specialists"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def train(model: Specialists, train_set: list[dict], dev_set: list[dict], cfg: TrainConfig, out: Path,
          heads=HEADS, progress: bool = True) -> dict:
    """Train the selected heads; returns the best dev metrics. Resumes from out/checkpoint.safetensors."""
    from tqdm import tqdm

    if not train_set or not dev_set:
        raise BadInput(f"training needs examples in both splits (train {len(train_set)}, dev {len(dev_set)})")
    torch.manual_seed(cfg.seed)
    model.to(torch_device(cfg.device))
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": model.encoder.parameters(), "lr": cfg.lr},
                             {"params": head_params, "lr": cfg.head_lr}], weight_decay=cfg.weight_decay)
    ckpt = out / "checkpoint.safetensors"
    # Epochs and patience only say when to stop (with a constant rate): raising them continues a run.
    # A constant rate leaves "schedule" out too, so checkpoints from before the option still resume.
    resumable = ("epochs", "patience", "device", "schedule") if cfg.schedule == "constant" else ("patience", "device")
    same_run = {k: v for k, v in asdict(cfg).items() if k not in resumable}
    if cfg.plan_loss_weight == 1:  # the plain sum, as before the option: checkpoints from then still resume
        del same_run["plan_loss_weight"]
    if not cfg.token_dropout:  # the same for runs from before token dropout
        del same_run["token_dropout"]
    fingerprint = {"train": same_run, "heads": list(heads), "n_train": len(train_set), "model": model.config_dict()}
    state = {"epoch": 0, "steps": 0, "best": -1.0, "stale": 0, "history": [], "fingerprint": fingerprint}
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    if ckpt.exists():
        saved = _load_checkpoint(ckpt, model, opt, fingerprint, average)
        if saved is None:
            print(f"{ckpt} is from another run (settings, data or model code): starting over", file=sys.stderr)
        else:
            state = saved
    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        model.train()
        batches = _batches(train_set, cfg.batch_size, cfg.seed + state["epoch"])
        bar = tqdm(batches, desc=f"epoch {state['epoch'] + 1}", unit="batch", disable=not progress)
        t0 = time.monotonic()
        for idx in bar:
            if cfg.schedule == "linear":  # from the step count, so a resumed run is at the same rate
                left = 1 - state["steps"] / (cfg.epochs * len(batches))
                for group, base in zip(opt.param_groups, (cfg.lr, cfg.head_lr)):
                    group["lr"] = base * left
            batch = encode(model, [train_set[i] for i in idx])
            batch = to_device(drop_tokens(batch, model.tokenizer, cfg.token_dropout), cfg.device)
            L = losses(model(batch), batch, heads, any_order=cfg.c3_any_order and model.config.c2_labels == "ops")
            loss = sum(cfg.plan_loss_weight * v if k == "c1_plan" else v for k, v in L.items())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if average is not None:
                average.update(model, state["steps"])
            state["steps"] += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        with average.applied(model) if average is not None else nullcontext():  # dev and the saved model: the average
            metrics = evaluate(model, dev_set)
            score = _score(metrics, heads)
            if score > state["best"]:
                state["best"], state["stale"] = score, 0
                save_model(model, out, {"dev_metrics": metrics, "epoch": state["epoch"] + 1, "heads": list(heads),
                                        "training": {**{k: v for k, v in asdict(cfg).items() if k != "device"},
                                                     "n_train": len(train_set), "n_dev": len(dev_set)}})
            else:
                state["stale"] += 1
        state["history"].append({"epoch": state["epoch"] + 1, "score": score, "seconds": time.monotonic() - t0, **metrics})
        if progress:
            tqdm.write(f"epoch {state['epoch'] + 1} dev: " + "  ".join(
                f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("c")))
        state["epoch"] += 1
        _save_checkpoint(ckpt, model, opt, state, average)
    return state
