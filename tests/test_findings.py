"""The paper's findings judged on paired runs: exact intervals, and when a finding holds, fails or is not shown."""
import pytest

from mmllm.eval.findings import COST, OCR, paired_effect, verdicts


def test_a_paired_effect_is_the_mean_difference_with_its_t_interval():
    effect = paired_effect("nvlm_d", "nvlm_x", OCR, [(3.0, 1.0), (5.0, 2.0), (4.0, 1.0)])  # differences 2, 3, 3
    half = 4.302652729749462 * 0.5773502691896258 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert effect.mean == pytest.approx(8 / 3) and (effect.low, effect.high) == pytest.approx((8 / 3 - half, 8 / 3 + half))
    assert effect.clear() and effect.n == 3
    assert "nvlm_d − nvlm_x OCR exact match (%): +2.7 [+1.2, +4.1], n=3" == effect.describe()
    single = paired_effect("nvlm_d", "nvlm_x", OCR, [(3.0, 1.0)])
    assert (single.low, single.clear()) == (None, False) and "one run: no interval" in single.describe()


def measures(ocr: dict[str, list[float]], cost: dict[str, list[float]]) -> dict:
    return {OCR: {a: dict(enumerate(v)) for a, v in ocr.items()}, COST: {a: dict(enumerate(v)) for a, v in cost.items()}}


def test_findings_hold_fail_or_are_not_shown_by_their_intervals():
    paper = measures(ocr={"nvlm_d": [90, 92, 91], "nvlm_x": [60, 65, 61], "nvlm_h": [80, 83, 80]},
                     cost={"nvlm_d": [30, 31, 30], "nvlm_x": [10, 11, 10], "nvlm_h": [20, 20, 21]})
    assert [v.holds for v in verdicts(paper)] == ["yes", "yes", "yes"]
    # X better at OCR than D, clearly: "D is the best at OCR" fails; H vs X not clear either way: not shown.
    flipped = measures(ocr={"nvlm_d": [60, 65, 61], "nvlm_x": [90, 92, 91], "nvlm_h": [89, 93, 92]},
                       cost={"nvlm_d": [30, 31, 30], "nvlm_x": [10, 11, 10], "nvlm_h": [20, 20, 21]})
    assert [v.holds for v in verdicts(flipped)] == ["yes", "no", "not shown"]
    one_run = measures(ocr={"nvlm_d": [90], "nvlm_x": [60], "nvlm_h": [80]}, cost={"nvlm_d": [30], "nvlm_x": [10], "nvlm_h": [20]})
    assert [v.holds for v in verdicts(one_run)] == ["not shown"] * 3


def test_a_finding_about_an_arch_that_was_not_run_is_left_out():
    only_d_x = measures(ocr={"nvlm_d": [90, 91], "nvlm_x": [60, 62]}, cost={"nvlm_d": [30, 31], "nvlm_x": [10, 12]})
    assert verdicts(only_d_x) == []
