"""AUP (fastdllm_warmstart.aup) against hand-computed values: the first term, the trapezoids with
their quality weights, the points dropped below y_1 - 5, and a sweep's two variants."""

import math

import pytest

from fastdllm_warmstart.aup import aup, format_aup, sweep_aup, weight


def test_weight_is_one_at_the_best_accuracy_and_decays_below():
    assert weight(80, 80) == 1.0 and weight(90, 80) == 1.0  # capped at 1
    assert weight(76, 80) == pytest.approx(math.exp(-0.15))  # -3 (1 - 76/80)


def test_a_single_point_is_rho_times_accuracy():
    assert aup([(2.5, 70.0)], y_max=90).value == pytest.approx(175.0)


def test_trapezoids_with_weights_and_the_drop_below_y1_minus_5():
    # unsorted on purpose; y_1 = 80 (lowest rho), so 74.9 (< 75) is dropped, 75 stays
    points = [(4.0, 75.0), (1.0, 80.0), (3.0, 74.9), (2.0, 78.0)]
    w78, w75 = math.exp(-3 * (1 - 78 / 80)), math.exp(-3 * (1 - 75 / 80))
    by_hand = 1.0 * 80.0 + 0.5 * (2 - 1) * (78 * w78 + 80 * 1.0) + 0.5 * (4 - 2) * (75 * w75 + 78 * w78)
    got = aup(points, y_max=80.0)
    assert got.value == pytest.approx(by_hand) and (got.kept, got.dropped) == (3, 1)


def test_y_max_from_another_series_weighs_every_point():
    # y_max 90 > every y here: even y_1 is weighted in the trapezoids (not in the first term)
    w80, w79 = math.exp(-3 * (1 - 80 / 90)), math.exp(-3 * (1 - 79 / 90))
    assert aup([(1.0, 80.0), (3.0, 79.0)], y_max=90.0).value == pytest.approx(
        80.0 + 0.5 * 2.0 * (79 * w79 + 80 * w80))


def test_a_drop_at_the_highest_rho_is_dropped_not_refused():
    # d3LLM's script asserts here; the metric's definition drops the point
    got = aup([(1.0, 80.0), (2.0, 79.0), (6.0, 60.0)], y_max=80.0)
    assert got.dropped == 1 and got.value == pytest.approx(80 + 0.5 * (79 * math.exp(-3 / 80) + 80))


@pytest.mark.parametrize("points, y_max, message", [([], 80, "at least one"),
                                                   ([(0.0, 80.0)], 80, "positive"),
                                                   ([(1.0, 80.0)], 0, "y_max")])
def test_bad_input_is_one_clear_error(points, y_max, message):
    with pytest.raises(ValueError, match=message):
        aup(points, y_max)


def test_sweep_aup_counts_the_aux_as_dllm_forwards_by_time():
    """Cold reference: 10 answers, 20 forwards each, 2 s -> one forward 0.01 s. The warm point's
    4 s of aux drafting (400 drafted tokens) is 400 forward equivalents, one aux forward 1.0."""
    records = [
        {"series": "cold", "kind": "reference", "accuracy": 0.8, "n": 10, "mean_nfe": 20.0,
         "answer_tokens": 400, "dllm_s": 2.0, "aux_s": 0.0},
        {"series": "warm", "kind": "ours", "accuracy": 0.78, "n": 10, "mean_nfe": 10.0,
         "answer_tokens": 400, "dllm_s": 1.0, "aux_s": 4.0, "aux_tokens": 400},
    ]
    s = sweep_aup(records)
    assert s["y_max"] == pytest.approx(80.0) and s["dllm_forward_s"] == pytest.approx(0.01)
    assert s["aux_forward_ratio"] == pytest.approx(1.0)
    assert records[1]["rho"] == pytest.approx(4.0) and records[1]["rho_with_aux"] == pytest.approx(400 / 500)
    assert s["series"]["cold"]["aup"] == pytest.approx(2.0 * 80.0) == s["series"]["cold"]["aup_with_aux"]
    assert s["series"]["warm"]["aup"] == pytest.approx(4.0 * 78.0)
    assert s["series"]["warm"]["aup_with_aux"] == pytest.approx(0.8 * 78.0)
    text = format_aup(s)
    assert "warm" in text and "10.00 ms" in text and "1.000 dLLM forwards" in text


def test_aux_forwards_while_decoding_count_the_decodes_extra_time():
    """An APD-like point: 10 answers, 10 dLLM forwards each (100 at 0.01 s = 1 s) but 1.5 s of
    decoding with its aux scoring inside: the extra 0.5 s is 50 dLLM-forward equivalents."""
    records = [
        {"series": "cold", "kind": "reference", "accuracy": 0.8, "n": 10, "mean_nfe": 20.0,
         "answer_tokens": 400, "dllm_s": 2.0, "aux_s": 0.0},
        {"series": "apd", "kind": "peer", "accuracy": 0.8, "n": 10, "mean_nfe": 10.0,
         "answer_tokens": 400, "dllm_s": 1.5, "aux_s": 0.0, "aux_forwards_mean": 6.0},
    ]
    s = sweep_aup(records)
    assert records[1]["rho"] == pytest.approx(4.0)
    assert records[1]["rho_with_aux"] == pytest.approx(400 / 150)
    assert s["series"]["apd"]["aup_with_aux"] == pytest.approx(400 / 150 * 80.0)
