import numpy as np
import pytest

from mycelium.clauses import parse, region, to_tokens
from mycelium.data import get
from mycelium.signals import boundaries, boundary_f1, iaf, js_divergence, jsd_curve, normalise
from mycelium.trace import contrast


def test_js_divergence_known_values():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    q = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert js_divergence(normalise(p), normalise(q)) == pytest.approx([np.log(2), 0.0], abs=1e-6)


def test_jsd_peaks_where_attention_moves():
    # 12 solution rows over 4 problem tokens: rows 0-5 read token 0, rows 6-11 read token 3.
    a = np.zeros((12, 4))
    a[:6, 0] = 1
    a[6:, 3] = 1
    raw = jsd_curve(a, smooth=False)
    assert raw.argmax() == 6 and raw[6] == pytest.approx(np.log(2), abs=1e-4)
    assert np.allclose(np.delete(raw, 6), 0, atol=1e-6)
    smooth = jsd_curve(a)
    assert smooth.argmax() == 6  # Savitzky–Golay (5, 2) keeps the peak in place
    assert boundaries(smooth, "topk", rate=1 / 12) == [6]
    assert boundaries(smooth, "peaks") == [6]


def test_boundary_f1_matches_one_to_one_within_tolerance():
    assert boundary_f1([5, 6, 20], [6, 15], tolerance=2) == (1, 3, 2)
    assert boundary_f1([13], [15], tolerance=2) == (1, 1, 1)
    assert boundary_f1([12], [15], tolerance=2) == (0, 1, 1)


def test_iaf_of_a_step():
    a = np.array([[0.6, 0.2, 0.2], [0.2, 0.2, 0.6], [0.0, 1.0, 0.0]])
    assert iaf(a, 0, 2) == pytest.approx([0.4, 0.2, 0.4])
    assert iaf(a, 0, 3).sum() == pytest.approx(1.0)


def test_contrast_removes_the_sink():
    # Every row puts 0.5 on token 0 (a sink); the content is in the other half.
    a = np.array([[0.5, 0.5, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0], [0.5, 0.0, 0.0, 0.5]])
    assert (a.argmax(-1) == 0).all()  # raw: every row "reads" the sink
    c = contrast(a)
    assert np.allclose(c[:, 0], 0) and list(c.argmax(-1)) == [1, 2, 3]


def test_clauses_on_real_gsm8k_sentences():
    q = get("gsm8k/train/0").question
    c = parse(q)
    texts = [q[a:b] for a, b in c.spans]
    assert "then she sold half as many clips in May" in texts
    assert "Natalia sold clips to 48 of her friends in April" in texts
    r = region(c, {q.index("half"): 0.7, q.index("May"): 0.2})
    assert q[r[0]:r[1]] == "then she sold half as many clips in May"
    q2 = get("gsm8k/test/2").question  # "decides to try flipping" stays one clause; "150%" keeps its sign
    texts2 = [q2[a:b] for a, b in parse(q2).spans]
    assert "Josh decides to try flipping a house" in texts2 and "This increased the value of the house by 150%" in texts2


def test_regions_start_and_end_on_word_boundaries():
    for pid in ("gsm8k/test/0", "gsm8k/test/4", "gsm8k/train/3"):
        q = get(pid).question
        for a, b in parse(q).spans:
            assert (a == 0 or not q[a - 1].isalnum()) and (b == len(q) or not q[b].isalnum()), q[a:b]


def test_regions_map_to_any_tokenizer():
    from transformers import AutoTokenizer

    from mycelium.backbone import backbone_folder

    q = get("gsm8k/train/0").question
    tok = AutoTokenizer.from_pretrained(backbone_folder())
    enc = tok(q, return_offsets_mapping=True, add_special_tokens=False)
    span = (q.index("then she"), q.index("in May") + len("in May"))
    idx = to_tokens(span, np.array(enc["offset_mapping"]))
    assert tok.decode([enc["input_ids"][i] for i in idx]) == "then she sold half as many clips in may"
