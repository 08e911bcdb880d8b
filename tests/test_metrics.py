"""Every worked example of the metric definitions (docs/metrics.md), plus the aggregations and error paths of mmllm.eval.metrics."""
import pytest

from mmllm.eval.metrics import (
    METRICS,
    OCRBENCH_CATEGORIES,
    TEXT_RECOGNITION_CATEGORIES,
    cer,
    corpus_cer,
    corpus_wer,
    ocrbench_aggregate,
    score,
    wer,
)
from mmllm.eval.metrics.edit_distance import levenshtein

TOL = 1e-6

# ---- worked examples, transcribed from the spec tables (JSON literals are valid Python literals) ----

CHARTQA = [
    ("42", ["42"], 1.0),
    ("45", ["42"], 0.0),
    ("44.1", ["42"], 0.0),
    ("20%", ["20"], 0.0),
    ("5 %", ["5%"], 1.0),
    ("100%", ["1"], 1.0),
    ("1,000", ["1000"], 0.0),
    ("0", ["0"], 1.0),
    ("0.0", ["0"], 0.0),
    ("2019", ["2018"], 1.0),
    ("Yes", ["yes"], 1.0),
    ("yes.", ["Yes"], 0.0),
    ("", ["5"], 0.0),
    ("-10", ["-10.4"], 1.0),
    ("1e3", ["1000"], 1.0),
    ("1_000", ["1000"], 1.0),
    ("USA", ["United States"], 0.0),
    ("7", ["seven", "7.1"], 1.0),
]

RTR, ITR, HWR = "Regular Text Recognition", "Irregular Text Recognition", "Handwriting Recognition"
DSR, NSR = "Digit String Recognition", "Non-Semantic Text Recognition"
STVQA, KIE = "Scene Text-centric VQA", "Key Information Extraction"
HMER = "Handwritten Mathematical Expression Recognition"

OCRBENCH = [
    ("The word is HELLO", ["hello"], RTR, "IIIT5K", 1.0),
    ("colour", ["color", "colour"], ITR, "ct80", 1.0),
    ("0123 4567", ["01234567"], DSR, "ORAND", 0.0),
    ("NEW\nYORK", ["new york"], STVQA, "textVQA", 1.0),
    ("x^{2}+y^{2}", ["x ^ { 2 } + y ^ { 2 }"], HMER, "HME100k", 1.0),
    ("X^{2}", ["x ^ { 2 }"], HMER, "HME100k", 0.0),
    ("x^{2}\t+1", ["x ^ { 2 } + 1"], HMER, "HME100k", 0.0),
    ("", ["abc"], RTR, "IIIT5K", 0.0),
    ("\uff21\uff22\uff23\uff11\uff12\uff13", ["abc123"], RTR, "IIIT5K", 1.0),
    ("hello\u3000world", ["hello world"], STVQA, "textVQA", 1.0),
    ("1000", ["100"], DSR, "ORAND", 1.0),
    ("12.5", ["12.50"], KIE, "FUNSD", 0.0),
    ("  Hello  ", ["hello"], HWR, "IAM", 1.0),
    ("xq7zk", ["XQ7ZK"], NSR, "NonSemanticText", 1.0),
    ("y_{2}=-1", ["y _ { 2 } = - 1\n", "y_2 = - 1\n"], HMER, "HME100k", 1.0),
]

VQA = [
    ("two", ["2"] * 10, "textvqa", 1.0),
    ("2", ["2"] * 3 + ["3"] * 7, "textvqa", 0.9),
    ("2", ["2"] * 1 + ["3"] * 9, "textvqa", 0.3),
    ("The dog", ["dog"] * 10, "textvqa", 1.0),
    ("dont", ["don't"] * 10, "textvqa", 1.0),
    ("Coca-Cola", ["coca cola"] * 10, "textvqa", 1.0),
    ("1,000", ["1000"] * 10, "textvqa", 1.0),
    ("1,000-2,000", ["1000 2000"] * 10, "textvqa", 1.0),
    ("1,000-2,000", ["1000 2000"] * 10, "vqav2", 0.0),
    ("5.", ["5"] * 10, "textvqa", 1.0),
    ("Ten", ["10"] * 10, "textvqa", 1.0),
    ("", ["yes"] * 10, "textvqa", 0.0),
    ("NIKE", ["nike"] * 10, "vqav2", 1.0),
    ("a", ["a"] * 10, "textvqa", 1.0),
    ("hello, world", ["hello world"] * 10, "textvqa", 1.0),
    ("$10", ["10"] * 10, "textvqa", 0.0),
    ("x", ["x", "y"], "textvqa", 0.166667),
    ("  red   car ", ["red car"] * 10, "vqav2", 1.0),
    ("it's", ["it 's"] * 10, "vqav2", 0.0),
]

ANLS = [
    ("hello", ["hello"], 1.0),
    ("helo", ["hello"], 0.8),
    ("he", ["hello"], 0.0),
    ("1/2/2019", ["1/2/2019", "01/02/2019"], 1.0),
    ("", ["abc"], 0.0),
    ("new  yorc", ["new york"], 0.888889),
    ("ab", ["ac"], 0.5),
    ("helo", ["hello "], 0.833333),
    ("$1,000", ["1000"], 0.666667),
    ("straße", ["strasse"], 0.714286),
    ("The answer is 42", ["42"], 0.0),
    ("", [""], 1.0),
    ("MARCH 3", ["march 3", "3 march"], 1.0),
]

EXACT_MATCH = [
    ("Hello", ["Hello"], False, False, 1.0),
    ("hello", ["Hello"], False, False, 0.0),
    ("Hello!", ["Hello"], False, True, 1.0),
    (" Hello \n", ["Hello"], False, False, 1.0),
    ("Hello  World", ["Hello World"], True, True, 0.0),
    ("colour", ["color", "colour"], False, False, 1.0),
    ("1,000", ["1000"], False, False, 0.0),
    ("3.14", ["314"], False, True, 1.0),
    ("Don't", ["dont"], True, True, 1.0),
    ("hello—world", ["helloworld"], False, True, 0.0),
    ("hello\nworld", ["hello world"], True, True, 0.0),
    ("42", ["042"], True, True, 0.0),
    ("50%", ["50"], False, True, 1.0),
]

CER = [
    ("hello", ["hello"], 0.0),
    ("helo", ["hello"], 0.2),
    ("", ["hello"], 1.0),
    ("hello world", ["hello"], 1.2),
    ("Hello", ["hello"], 0.2),
    (" hello ", ["hello"], 0.0),
    ("hello  world", ["hello world"], 0.090909),
    ("kitten", ["sitting"], 0.428571),
    ("你好世界", ["你好时间"], 0.5),
    ("colr", ["color", "colour"], 0.2),
    ("1,000", ["1000"], 0.25),
    ("ab", ["ba"], 1.0),
    ("e\u0301", ["\u00e9"], 2.0),
]


def _record(metric, prediction, answers, extra, expected):
    return {"metric": metric, "prediction": prediction, "answers": answers, "extra": extra, "expected": expected}


SPEC_CASES = (
    [_record("chartqa_relaxed", p, a, {}, e) for p, a, e in CHARTQA]
    + [_record("ocrbench", p, a, {"category": c, "dataset": d}, e) for p, a, c, d, e in OCRBENCH]
    + [_record("vqa_accuracy", p, a, {"variant": v}, e) for p, a, v, e in VQA]
    + [_record("anls", p, a, {}, e) for p, a, e in ANLS]
    + [_record("exact_match", p, a, {"ignore_case": c, "ignore_punctuation": u}, e) for p, a, c, u, e in EXACT_MATCH]
    + [_record("cer", p, a, {}, e) for p, a, e in CER]
)


def _case_id(case):
    return f"{case['metric']}-{case['prediction']!r}-{case['answers'][:2]!r}-{case['extra']}"


def test_every_table_row_is_transcribed():
    assert [len(t) for t in (CHARTQA, OCRBENCH, VQA, ANLS, EXACT_MATCH, CER)] == [18, 15, 19, 13, 13, 13]


@pytest.mark.parametrize("case", SPEC_CASES, ids=[_case_id(c) for c in SPEC_CASES])
def test_spec_worked_example(case):
    got = score(case["metric"], case["prediction"], case["answers"], **case["extra"])
    assert got == pytest.approx(case["expected"], abs=TOL)
    # The per-sample function applies the same conventions when called directly on the raw generation.
    direct = METRICS[case["metric"]](case["prediction"], case["answers"], **case["extra"])
    assert direct == pytest.approx(case["expected"], abs=TOL)


# ---- WER (jiwer-style: strip, split on whitespace) ----

WER = [
    ("the cat sat", ["the cat sat"], 0.0),
    ("the cat", ["the cat sat"], 1 / 3),
    ("  the   cat\tsat\n", ["the cat sat"], 0.0),
    ("", ["a b"], 1.0),
    ("a b c d", ["a b"], 1.0),
    ("The cat", ["the cat"], 0.5),
    ("b a", ["a b"], 1.0),
    ("the dog", ["the cat", "a dog", "the dog sat"], 1 / 3),
]


@pytest.mark.parametrize("prediction,answers,expected", WER)
def test_wer(prediction, answers, expected):
    assert score("wer", prediction, answers) == pytest.approx(expected, abs=TOL)


# ---- corpus rates vs the mean of per-sample rates ----

def test_corpus_cer_is_not_the_mean_of_sample_cers():
    predictions, references = ["helo", ""], ["hello", "abc"]
    assert [cer(p, r) for p, r in zip(predictions, references)] == pytest.approx([0.2, 1.0], abs=TOL)
    # (1 + 3) / (5 + 3) = 0.5, whereas the mean of per-sample CERs is (0.2 + 1.0) / 2 = 0.6.
    assert corpus_cer(predictions, references) == pytest.approx(0.5, abs=TOL)


def test_corpus_cer_strips_and_treats_none_as_empty():
    # " helo \n" strips to "helo" (1 edit of 5); None is "" (3 edits of 3): (1 + 3) / 8.
    assert corpus_cer([" helo \n", None], ["hello", "abc"]) == pytest.approx(0.5, abs=TOL)


def test_corpus_wer_is_not_the_mean_of_sample_wers():
    predictions, references = ["the cat sat", "hello"], ["the cat sat down", "hello world there"]
    assert [wer(p, r) for p, r in zip(predictions, references)] == pytest.approx([0.25, 2 / 3], abs=TOL)
    # (1 + 2) / (4 + 3) = 3/7 = 0.428571..., the mean would be 0.458333...
    assert corpus_wer(predictions, references) == pytest.approx(3 / 7, abs=TOL)


def test_corpus_cer_uses_the_gold_the_sample_score_picks():
    # "colr": color 1/5 beats colour 2/6, so the sample adds (1, 5).
    assert corpus_cer(["colr"], [["color", "colour"]]) == pytest.approx(0.2, abs=TOL)
    # "x" vs "ab" (2/2) and "abcd" (4/4) tie; the first gold is used: (2 + 0) / (2 + 4).
    assert corpus_cer(["x", "abcd"], [["ab", "abcd"], "abcd"]) == pytest.approx(1 / 3, abs=TOL)


@pytest.mark.parametrize("corpus", [corpus_cer, corpus_wer])
def test_corpus_rate_errors(corpus):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no samples"):
        corpus([], [])
    with pytest.raises(ValueError, match="empty reference"):
        corpus(["a", "b"], ["a", "  "])


@pytest.mark.parametrize("metric", ["cer", "wer"])
def test_empty_reference_is_a_data_error(metric):
    with pytest.raises(ValueError, match="empty reference"):
        score(metric, "abc", [" \n"])


# ---- OCRBench aggregation ----

def test_ocrbench_aggregation_counts_and_final_score():
    results = (
        [(RTR, 1.0)] * 3 + [(RTR, 0.0)] * 2
        + [(ITR, 1.0)] * 2 + [(ITR, 0.0)]
        + [(NSR, 1.0)]
        + [("Doc-oriented VQA", 1.0)] * 4
        + [(KIE, 0.0)] * 5
        + [(HMER, 1.0)] * 2 + [(HMER, 0.0)]
    )
    summary = ocrbench_aggregate(results)
    assert list(summary.category_counts) == list(OCRBENCH_CATEGORIES)
    assert summary.category_counts == {
        RTR: 3, ITR: 2, "Artistic Text Recognition": 0, HWR: 0, DSR: 0, NSR: 1,
        STVQA: 0, "Doc-oriented VQA": 4, KIE: 0, HMER: 2,
    }
    assert summary.text_recognition == 6  # RTR 3 + ITR 2 + NSR 1
    assert summary.final_score == 12
    # The denominator is the fixed benchmark size, not the 22 scored samples.
    assert summary.accuracy == pytest.approx(0.012, abs=TOL)
    # Fresh counters every call: aggregating again does not double-count (unlike lmms-eval).
    assert ocrbench_aggregate(results) == summary


def test_ocrbench_aggregation_of_scored_examples():
    scored = [(c, score("ocrbench", p, a, category=c, dataset=d)) for p, a, c, d, _ in OCRBENCH]
    summary = ocrbench_aggregate(scored)
    assert summary.final_score == 10
    assert summary.text_recognition == 6  # RTR 2 of 3, ITR 1, DSR 1 of 2, HWR 1, NSR 1
    assert summary.category_counts[HMER] == 2
    assert summary.accuracy == pytest.approx(0.01, abs=TOL)
    assert set(TEXT_RECOGNITION_CATEGORIES) < set(OCRBENCH_CATEGORIES)


def test_ocrbench_aggregation_errors():
    with pytest.raises(ValueError, match="unknown OCRBench category"):
        ocrbench_aggregate([("HMER", 1.0)])
    with pytest.raises(ValueError, match="0 or 1"):
        ocrbench_aggregate([(RTR, 0.5)])


def test_ocrbench_rule_follows_dataset_not_category():
    # lmms-eval picks the formula rule by dataset: the same item under another dataset is case-insensitive.
    assert score("ocrbench", "X^{2}", ["x ^ { 2 }"], category=HMER, dataset="HME100k") == 0.0
    assert score("ocrbench", "X ^ { 2 }", ["x ^ { 2 }"], category=HMER, dataset="other") == 1.0
    with pytest.raises(ValueError, match="unknown OCRBench category"):
        score("ocrbench", "a", ["a"], category="RTR", dataset="IIIT5K")


# ---- registry and shared conventions ----

def test_registry_names():
    assert set(METRICS) == {"chartqa_relaxed", "ocrbench", "vqa_accuracy", "anls", "exact_match", "cer", "wer"}


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown metric 'bleu'") as info:
        score("bleu", "a", ["a"])
    for name in METRICS:
        assert name in str(info.value)


def test_single_gold_string_and_none_prediction():
    assert score("anls", "helo", "hello") == pytest.approx(0.8, abs=TOL)
    assert score("cer", None, "hello") == pytest.approx(1.0, abs=TOL)
    assert score("exact_match", None, "") == 1.0


def test_input_errors():
    with pytest.raises(ValueError, match="at least one gold"):
        score("anls", "a", [])
    with pytest.raises(TypeError, match="gold answers must be strings"):
        score("chartqa_relaxed", "42", [42])
    with pytest.raises(ValueError, match="unknown VQA variant"):
        score("vqa_accuracy", "a", ["a"], variant="gqa")
    with pytest.raises(TypeError):
        score("cer", "a", ["a"], variant="textvqa")  # options are per metric


def test_vqa_leave_one_out_is_by_position():
    # k matching golds out of 10 -> 0, 0.3, 0.6, 0.9, then 1.0.
    expected = [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    got = [score("vqa_accuracy", "2", ["2"] * k + ["3"] * (10 - k)) for k in range(6)]
    assert got == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(
    "a,b,distance",
    [("", "", 0), ("", "abc", 3), ("kitten", "sitting", 3), ("ab", "ba", 2), ("flaw", "lawn", 2),
     (["the", "cat"], ["the", "cat", "sat"], 1), (["a", "b"], ["b", "a"], 2)],
)
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance
