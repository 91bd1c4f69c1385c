"""The guided starts' greedy rule (`spaces.greedy`) on small tables: which segment it shaves, when it stops."""

import pytest

from spaces.greedy import estimated_ms, greedy_ratios, realized_fraction, segment_losses

# ms saved with only that segment pruned at that ratio (the base is 10 ms)
SAVINGS = {
    "stem": {0.25: 1.0, 0.5: 2.0, 0.75: 3.0},  # expensive to prune (see LOSSES)
    "neck": {0.25: 0.5, 0.5: 1.0, 0.75: 1.5},  # free to prune
    "head": {0.25: 0.0, 0.5: -0.1, 0.75: 0.0},  # saves nothing
}
LOSSES = {
    "stem": {0.25: 0.1, 0.5: 0.2, 0.75: 0.3},
    "neck": {0.25: 0.0, 0.5: 0.0, 0.75: 0.01},
    "head": {0.25: 0.0, 0.5: 0.0, 0.75: 0.0},
}


def test_the_cheapest_saving_per_loss_goes_first_and_it_stops_once_it_fits():
    ratios = greedy_ratios(SAVINGS, LOSSES, 10.0, 9.0)
    assert ratios == {"stem": 0.0, "neck": 0.5, "head": 0.0}  # the free neck, not the stem; no further than needed
    assert estimated_ms(10.0, SAVINGS, ratios) == pytest.approx(9.0)


def test_it_turns_to_the_sensitive_segment_only_when_the_free_one_is_exhausted():
    ratios = greedy_ratios(SAVINGS, LOSSES, 10.0, 7.5)
    assert ratios["neck"] == 0.75 and ratios["stem"] == 0.25
    assert ratios["head"] == 0.0  # a step that saves nothing is never taken
    assert estimated_ms(10.0, SAVINGS, ratios) <= 7.5


def test_a_target_beyond_the_grid_has_no_policy():
    assert greedy_ratios(SAVINGS, LOSSES, 10.0, 5.0) is None  # 10 - 3 - 1.5 = 5.5 at best


def test_a_correction_learned_from_a_timed_miss_pushes_the_greedy_further_from_where_it_was():
    first = greedy_ratios(SAVINGS, LOSSES, 10.0, 9.0)
    # timed at 9.4 ms, not the estimated 9.0: the estimate is 0.4 ms optimistic
    further = greedy_ratios(SAVINGS, LOSSES, 10.0, 9.0, start=first, correction_ms=0.4)
    assert further["neck"] > first["neck"]
    assert estimated_ms(10.0, SAVINGS, further) + 0.4 <= 9.0


def test_a_miss_scales_the_savings_by_what_timing_realized_and_the_greedy_goes_far_enough():
    first = greedy_ratios(SAVINGS, LOSSES, 10.0, 8.5)  # neck 0.75 (1.5 ms promised)
    assert first["neck"] == 0.75 and estimated_ms(10.0, SAVINGS, first) == pytest.approx(8.5)
    # timed at 9.25 ms: half of the promised 1.5 ms was realized
    realized = realized_fraction(10.0, SAVINGS, first, 9.25)
    assert realized == pytest.approx(0.5)
    further = greedy_ratios(SAVINGS, LOSSES, 10.0, 8.5, start=first, realized=realized)
    # at half the promise the neck's 1.5 ms buys 0.75: the stem must promise 1.5 more (0.75 realized), i.e. 0.5
    assert further == {"stem": 0.5, "neck": 0.75, "head": 0.0}
    assert estimated_ms(10.0, SAVINGS, further, realized) <= 8.5
    # clamped: a timing slower than the base, or far faster than promised, does not wreck the estimate
    assert realized_fraction(10.0, SAVINGS, first, 10.5) == 0.1
    assert realized_fraction(10.0, SAVINGS, first, 5.0) == 1.5
    assert realized_fraction(10.0, SAVINGS, {"head": 0.0}, 9.0) == 1.0  # nothing promised: nothing learned


def test_a_noisy_saving_at_one_ratio_does_not_block_the_larger_ones():
    savings = {"neck": {0.25: -0.2, 0.5: 1.0, 0.75: 1.5}}
    assert greedy_ratios(savings, {"neck": {0.25: 0.0, 0.5: 0.0, 0.75: 0.0}}, 10.0, 9.0) == {"neck": 0.5}


def test_segment_losses_add_the_units_drops_interpolate_and_extrapolate():
    unit_maps = {"a": {0.25: 0.9, 0.5: 0.7}, "b": {0.25: 1.01, 0.5: 0.98}}  # base 1.0; b's gain is noise
    losses = segment_losses(1.0, unit_maps, {"seg": ("a", "b")}, (0.125, 0.25, 0.5, 0.75))
    assert losses["seg"][0.125] == pytest.approx(0.05)  # a: half of 0.1; b: 0 (its negative drop counts as 0)
    assert losses["seg"][0.25] == pytest.approx(0.1)
    assert losses["seg"][0.5] == pytest.approx(0.32)
    assert losses["seg"][0.75] == pytest.approx(
        0.5 + 0.04
    )  # each unit's last slope continued (a: 0.2, b: 0.02 per 0.25)


def test_a_unit_never_measured_is_assumed_costly_and_losses_keep_growing_with_the_ratio():
    losses = segment_losses(0.4, {}, {"seg": ("x", "y")}, (0.25, 0.75))
    assert losses["seg"][0.25] == pytest.approx(0.2)  # 2 units x 0.4 x 0.25
    assert losses["seg"][0.75] == pytest.approx(0.6)  # not capped at the base mAP: 0.75 must look worse than 0.5
