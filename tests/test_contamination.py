"""Training data that repeats an evaluation question is found, on the shipped datasets."""

from mycelium.contamination import Overlap, leave_out, ngrams
from mycelium.data import evaluation_sets, get, held_out_split, load


def test_runs_of_thirteen_words_and_short_questions_whole():
    assert len(ngrams("one two three four five six seven eight nine ten eleven twelve thirteen fourteen")) == 2
    assert ngrams("How many?") == {("how", "many")}  # shorter than 13 words: compared whole
    assert ngrams("  ") == set()
    short = Overlap(["You have 7 crickets."])
    assert short.hits("you have 7 crickets") and not short.hits("You have 8 crickets.")


def test_asdiv_fit_repeats_mawps_test_problems():
    held_out = Overlap(p.question for p in evaluation_sets())
    # Word for word the same problem in both collections; spacing and capitals do not hide a copy.
    assert get("asdiv/test/20").question == get("mawps/test/801").question
    assert held_out.hits(get("asdiv/test/20").question)
    assert held_out.hits("2 BIRDS were sitting on the fence . 4 more birds came to join them. How many birds are "
                         "sitting on the fence ?")
    fit = load("asdiv", "fit")
    assert sum(held_out.hits(p.question) for p in fit) == 266  # of 1,715: what `mycelium train` leaves out
    assert not held_out.hits(get("gsm8k/train/0").question)


def test_the_held_out_split_is_what_evaluation_reads():
    assert held_out_split("asdiv") == "dev" and held_out_split("gsm8k") == "test" and held_out_split("mawps") == "test"
    ids = {p.id for p in evaluation_sets()}
    assert {p.id for p in load("asdiv", "dev")} <= ids and not {p.id for p in load("asdiv", "fit")} & ids
    assert {p.id for p in load("gsm8k", "test")} <= ids and not {p.id for p in load("gsm8k", "fit")} & ids
    assert len(load("asdiv", "dev")) == 500 and len(load("asdiv", "fit")) == 1715


def test_training_rows_that_repeat_an_evaluation_question_are_left_out():
    held_out = Overlap(p.question for p in evaluation_sets())
    rows = [{"id": p.id, "question": p.question} for p in (get("gsm8k/train/0"), get("asdiv/test/20"), get("asdiv/test/0"))]
    kept, out = leave_out(rows, held_out)
    assert [r["id"] for r in kept] == ["gsm8k/train/0", "asdiv/test/0"] and out == ["asdiv/test/20"]
