"""sample_metrics and bleu on hand-made strings with hand-computed values."""
import math

import pytest

from thunderdlm.sample_metrics import MetricsError, bleu, sample_metrics


def test_abab_entropies():
    m = sample_metrics(["abab"])
    assert m["unigram_entropy"] == pytest.approx(math.log(2))
    # bigrams ab, ba, ab: p = (2/3, 1/3)
    assert m["bigram_entropy"] == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    assert m["mean_length_chars"] == 4


def test_bigrams_do_not_cross_text_boundaries():
    # pooled unigrams a, b, b, a; bigrams only "ab" and "ba" (no "bb" across the two texts)
    m = sample_metrics(["ab", "ba"])
    assert m["unigram_entropy"] == pytest.approx(math.log(2))
    assert m["bigram_entropy"] == pytest.approx(math.log(2))


def test_constant_text_has_zero_entropy():
    m = sample_metrics(["aaaaaaaa"])
    assert m["unigram_entropy"] == 0 and m["bigram_entropy"] == 0


def test_distinct_n_of_a_repeated_sentence():
    m = sample_metrics(["the cat sat", "the cat sat"])
    # 6 words / 3 unique; 4 bigrams / 2 unique; 2 trigrams / 1 unique; no 4-gram at all
    assert (m["distinct_1"], m["distinct_2"], m["distinct_3"]) == (0.5, 0.5, 0.5)
    assert math.isnan(m["distinct_4"]) and math.isnan(m["repetition_rate"])
    m = sample_metrics(["the cat sat on the mat"])
    assert m["distinct_1"] == pytest.approx(5 / 6) and m["distinct_2"] == 1.0


def test_repetition_rate():
    looped = "to be or not " * 3                       # every 4-gram occurs more than once
    assert sample_metrics([looped])["repetition_rate"] == 1.0
    assert sample_metrics(["a b c d e f g"])["repetition_rate"] == 0.0
    # abcd bcda cdab dabc abcd bcdx: only the two "abcd" occurrences are repeats → 2/6
    assert sample_metrics(["a b c d a b c d x"])["repetition_rate"] == pytest.approx(1 / 3)
    # averaged over texts; "a b" has no 4-gram and is left out of the average
    assert sample_metrics([looped, "a b c d e f g", "a b"])["repetition_rate"] == pytest.approx(0.5)


def test_sample_metrics_rejects_no_texts():
    with pytest.raises(MetricsError):
        sample_metrics([])
    with pytest.raises(MetricsError):
        sample_metrics("abab")


def test_bleu_identical_and_disjoint():
    hyp = ["the quick brown fox jumps over the lazy dog", "to be or not to be that is the question"]
    same = bleu(hyp, hyp)
    assert same["score"] == pytest.approx(100.0)
    assert all(same[f"precision_{n}"] == pytest.approx(100.0) for n in range(1, 5))
    disjoint = bleu(hyp, ["alpha beta gamma delta epsilon zeta eta theta iota",
                          "one two three four five six seven eight nine ten"])
    assert disjoint["score"] < 1.0 and disjoint["precision_1"] == 0.0


def test_bleu_partial_overlap_is_in_between():
    b = bleu(["the cat sat on the mat today"], ["the cat sat on the mat"])
    assert 0 < b["score"] < 100 and b["precision_1"] == pytest.approx(100 * 6 / 7)


def test_bleu_multiple_references_per_hypothesis():
    hyp = ["to be or not to be"]
    assert bleu(hyp, [["something else entirely", "to be or not to be"]])["score"] == pytest.approx(100.0)
    with pytest.raises(MetricsError, match="same"):
        bleu(hyp * 2, [["to be or not to be"], ["a", "b"]])
    with pytest.raises(MetricsError, match="2 hypotheses and 1 references"):
        bleu(hyp * 2, hyp)
