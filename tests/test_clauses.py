"""Clauses: spaCy's parse with its matrix products in torch, the same parse as blis's, alone or among others."""

import numpy as np
import pytest
import torch

from mycelium.clauses import _clauses, nlp, parse, parse_many, torch_gemm, torch_gemm_rows_independent, use_ops
from mycelium.data import load


def test_clauses_of_natalias_clips():
    q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    assert [q[a:b] for a, b in parse(q).spans] == ["Natalia sold clips to 48 of her friends in April",
                                                    "then she sold half as many clips in May"]


def _parse_of(doc):
    return [(t.tag_, t.dep_, t.head.i) for t in doc], doc.tensor


def test_torch_products_parse_as_blis_does_and_alone_as_among_others():
    """Where the probe holds (it did on every CPU we have tried), spaCy's layers multiply through torch; tags, heads
    and clauses are blis's, and a question's parse has the same bits alone as in a batch of other lengths."""
    from thinc.api import NumpyOps

    if not torch_gemm_rows_independent():
        pytest.skip("torch's products on this CPU depend on the rows beside them: spaCy keeps blis's")
    pipeline = nlp()
    assert isinstance(pipeline.get_pipe("tok2vec").model.ops, torch_gemm())
    blis = nlp.__wrapped__()
    use_ops(blis, NumpyOps())
    questions = [p.question for p in load("gsm8k", "test", source="local")[:48]] + ["Tom has 3 apples.", "Why?"]
    ours, theirs = list(pipeline.pipe(questions, batch_size=16)), list(blis.pipe(questions, batch_size=16))
    for a, b in zip(ours, theirs):
        assert _parse_of(a)[0] == _parse_of(b)[0]
        assert _clauses(a).spans == _clauses(b).spans
        assert np.allclose(a.tensor, b.tensor, atol=1e-4)  # another summation order, nothing more
    for q, among in zip(questions[-6:], ours[-6:]):  # the last batch: short and long questions together
        alone = pipeline(q)
        assert _parse_of(alone)[0] == _parse_of(among)[0] and np.array_equal(alone.tensor, among.tensor)
    assert parse_many(questions[:5]) == [parse(q) for q in questions[:5]]


def test_gemm_pads_short_inputs_and_honours_out_and_transposes():
    gemm = torch_gemm()().gemm
    g = np.random.default_rng(0)
    x, y = g.standard_normal((3, 5)).astype("f"), g.standard_normal((7, 5)).astype("f")
    assert np.allclose(gemm(x, y, trans2=True), x @ y.T, atol=1e-5)
    out = np.empty((3, 7), dtype="f")
    assert gemm(x.T.copy(), y, out=out, trans1=True, trans2=True) is out and np.allclose(out, x @ y.T, atol=1e-5)


def test_the_probe_refuses_torch_where_rows_depend_on_their_neighbours(monkeypatch):
    """A CPU whose products sum a row in another order in larger batches keeps spaCy's own (blis) products."""
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: mm(a, b) + 1e-3 * (a.shape[0] > 256))
    torch_gemm_rows_independent.cache_clear()
    nlp.cache_clear()
    try:
        assert not torch_gemm_rows_independent()
        assert not isinstance(nlp().get_pipe("tok2vec").model.ops, torch_gemm())
    finally:
        monkeypatch.undo()
        torch_gemm_rows_independent.cache_clear()
        nlp.cache_clear()
