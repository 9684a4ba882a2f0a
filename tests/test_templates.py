import numpy as np

from mycelium.templates import anneal, purity, result_type, smooth_labels


def test_ib_splits_a_known_hierarchy_in_order():
    # Group A yields type 0; groups B and C both mostly yield types 1/2, in mirrored shares.
    rows = {"A": [0.9, 0.05, 0.05], "B": [0.05, 0.6, 0.35], "C": [0.05, 0.35, 0.6]}
    names = [g for g in "ABC" for _ in range(40)]
    pyx = np.array([rows[g] for g in names])
    fit = anneal(pyx, np.geomspace(0.05, 200, 60))
    assert fit.counts[0] == 1  # low β: one template
    two, three = fit.assign(2), fit.assign(3)
    # first split: A against {B, C}
    assert len(set(two[:40])) == 1 and len(set(two[40:])) == 1 and two[0] != two[40]
    # later split: B against C
    assert [p["purity"] for p in purity(three, names)] == [1.0, 1.0, 1.0]
    betas = {s["clusters"]: s["beta"] for s in fit.splits}
    assert betas[2] < betas[3]


def test_ib_recovers_blobs_from_embeddings():
    rng = np.random.default_rng(0)
    centers = np.array([[5, 0], [0, 5], [-5, -5]])
    x = np.concatenate([c + rng.normal(size=(50, 2)) for c in centers])
    y = np.repeat([0, 1, 2], 50)
    fit = anneal(smooth_labels(x, y, 3), np.geomspace(0.05, 50, 40))
    assert max(fit.counts) == 3
    assert all(p["purity"] == 1.0 for p in purity(fit.assign(3), list(y)))


def test_result_types():
    assert [result_type(v) for v in (3, 250, 2.5, 0.25, -4)] == [0, 1, 2, 3, 4]
