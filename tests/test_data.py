import pytest

from mycelium.data import Problem, get, last_boxed, load
from mycelium.errors import BadInput, MissingFile, UnknownName


def test_gsm8k_from_shared_data():
    p = load("gsm8k", "test")[0]
    assert (p.id, p.dataset, p.split, p.answer) == ("gsm8k/test/0", "gsm8k", "test", "18")
    assert p.question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert "<<16-3-4=9>>" in p.solution
    assert len(load("gsm8k", "train")) == 7473 and len(load("gsm8k", "test")) == 1319


def test_other_shipped_datasets():
    asdiv = load("asdiv", "test")
    assert len(asdiv) == 2215
    assert asdiv[0].question == "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    assert asdiv[0].answer == "9 (apples)" and asdiv[0].extra["formula"] == "7+2=9"
    mawps = load("mawps", "test")
    assert len(mawps) == 2065 and mawps[0].answer == "43"
    math = load("math", "test")
    assert len(math) == 5000 and math[0].answer == "2" and math[0].extra["level"] == "Level 3"
    m500 = load("math500", "test")
    assert len(m500) == 500 and m500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_boxed_extraction_matches_braces():
    assert last_boxed("so $\\boxed{\\frac{1}{2}}$. Wrong: \\boxed{3}") == "3"
    assert last_boxed("$\\boxed{\\frac{a}{b^{2}}}$") == "\\frac{a}{b^{2}}"
    assert last_boxed("no box") is None


def test_dev_split_is_seeded_disjoint_and_keeps_ids():
    dev, fit = load("gsm8k", "dev"), load("gsm8k", "fit")
    assert len(dev) == 500 and len(fit) == 7473 - 500
    dev_ids = {p.id for p in dev}
    assert not dev_ids & {p.id for p in fit}
    assert all(p.split == "dev" and p.id.startswith("gsm8k/train/") for p in dev)
    assert [p.id for p in load("gsm8k", "dev")][:5] == [p.id for p in dev][:5]
    train = {p.id: p for p in load("gsm8k", "train")}
    assert all(train[p.id].question == p.question for p in dev)


def test_svamp_and_gsm_hard_from_a_data_root(tmp_path, write_jsonl):
    write_jsonl("svamp/test.jsonl", [{"ID": "chal-1", "Body": "Each pack of dvds costs 76 dollars.",
                                      "Question": "How much do you have to pay to buy each pack?",
                                      "Equation": "( 76.0 - 25.0 )", "Answer": 51.0, "Type": "Subtraction"}])
    write_jsonl("gsm_hard/test.jsonl", [{"input": "Janet’s ducks lay 16 eggs per day.", "code": "def solution(): ...",
                                         "target": 2.5e6}])
    (s,) = load("svamp", "test", root=tmp_path)
    assert s.question == "Each pack of dvds costs 76 dollars. How much do you have to pay to buy each pack?"
    assert s.answer == "51" and s.extra["Equation"] == "( 76.0 - 25.0 )"
    (h,) = load("gsm_hard", "test", root=tmp_path)
    assert h.answer == "2500000" and h.extra["code"].startswith("def solution")


def test_data_root_from_environment(tmp_path, write_jsonl, monkeypatch):
    write_jsonl("mawps/test.jsonl", [{"input": "Joan has 3 apples and gets 4 more. How many?", "target": 7.0}])
    monkeypatch.setenv("MYCELIUM_DATA", str(tmp_path))
    assert [p.answer for p in load("mawps", "test")] == ["7"]


def test_hub_path_with_a_saved_dataset(tmp_path):
    import datasets

    rows = [{"question": "Tom has 3 apples and buys 2 more. How many?", "answer": "3+2=<<3+2=5>>5\n#### 5"}]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    (p,) = load("gsm8k", "test", source=str(tmp_path / "saved"))
    assert p.answer == "5" and p.id == "gsm8k/test/0"


def test_hub_path_with_a_local_data_folder(tmp_path, write_jsonl):
    # `datasets.load_dataset` on a folder of data files: the same call a hub id takes.
    write_jsonl("hubcopy/test.jsonl", [{"question": "Ann has 4 pens and loses 1. How many?", "answer": "#### 3"}])
    (p,) = load("gsm8k", "test", source=str(tmp_path / "hubcopy"))
    assert p.answer == "3"


def test_malformed_row_is_reported_with_line_and_the_rest_loads(tmp_path, write_jsonl, capsys):
    path = write_jsonl("gsm8k/test.jsonl", [
        {"question": "Ann has 4 pens. How many?", "answer": "#### 4"},
        "{not json",
        {"question": "   ", "answer": "#### 1"},
        {"question": 12, "answer": "#### 1"},
        {"question": "Bo has 2 cats. How many?", "answer": "#### 2"},
    ])
    problems = load("gsm8k", "test", root=tmp_path)
    assert [p.id for p in problems] == ["gsm8k/test/0", "gsm8k/test/4"]
    err = capsys.readouterr().err
    assert f"{path}:2: skipped: malformed JSON" in err
    assert f"{path}:3: skipped: question is empty" in err
    assert f"{path}:4: skipped: question must be text, got int" in err


def test_bad_names_and_files(tmp_path):
    with pytest.raises(UnknownName, match="unknown dataset 'nope'"):
        load("nope", "test")
    with pytest.raises(UnknownName, match="no split 'validation'"):
        load("gsm8k", "validation")
    with pytest.raises(MissingFile, match="svamp/test.jsonl"):
        load("svamp", "test", root=tmp_path)
    with pytest.raises(BadInput, match="bad problem id"):
        get("gsm8k-0")


def test_empty_or_non_text_question():
    with pytest.raises(BadInput, match="question is empty"):
        Problem("x/y/0", "x", "y", "  \n", "1")
    with pytest.raises(BadInput, match="must be text"):
        Problem("x/y/0", "x", "y", None, "1")
