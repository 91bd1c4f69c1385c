"""The guided starts' greedy rule (`spaces.greedy`) on small tables: which segment it shaves, when it stops."""

import pytest

from spaces.greedy import (
    SegmentCosts,
    depth_losses,
    depth_step,
    estimated_loss,
    estimated_ms,
    first_fit,
    greedy_path,
    policy_parts,
    segment_losses,
    viable_prefix,
)

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


def test_the_path_shaves_the_free_segment_first_one_ratio_at_a_time_then_the_sensitive_one():
    path = greedy_path(SAVINGS, LOSSES)
    # the free neck first (its 0.5 step is the best ratio; 0.25 comes on the way), then the stem
    assert [(p["stem"], p["neck"]) for p in path] == [
        (0, 0.25),
        (0, 0.5),
        (0, 0.75),
        (0.25, 0.75),
        (0.5, 0.75),
        (0.75, 0.75),
    ]
    assert all(p["head"] == 0.0 for p in path)  # a step that saves nothing is never taken
    assert estimated_ms(10.0, SAVINGS, path[-1]) == pytest.approx(5.5)


def test_the_first_point_to_time_is_where_the_estimate_first_fits():
    path = greedy_path(SAVINGS, LOSSES)
    assert path[first_fit(path, SAVINGS, 10.0, 9.0)] == {"stem": 0.0, "neck": 0.5, "head": 0.0}
    assert path[first_fit(path, SAVINGS, 10.0, 7.5)] == {"stem": 0.25, "neck": 0.75, "head": 0.0}
    assert first_fit(path, SAVINGS, 10.0, 5.0) == len(path) - 1  # beyond the estimate: the path's end


def test_the_path_is_cut_where_the_estimated_loss_reaches_the_models_map():
    path = greedy_path(SAVINGS, LOSSES)
    assert estimated_loss(LOSSES, path[3]) == pytest.approx(0.11)  # stem 0.25 + neck 0.75
    assert viable_prefix(path, LOSSES, base_map=0.2) == path[:4]  # stem 0.5 would lose 0.21 of 0.2
    assert viable_prefix(path, LOSSES, base_map=1.0) == path
    assert viable_prefix(path, LOSSES, base_map=0.0) == []


def test_a_noisy_saving_at_one_ratio_does_not_block_the_larger_ones():
    savings = {"neck": {0.25: -0.2, 0.5: 1.0, 0.75: 1.5}}
    path = greedy_path(savings, {"neck": {0.25: 0.0, 0.5: 0.0, 0.75: 0.0}})
    assert [p["neck"] for p in path] == [0.25, 0.5, 0.75]


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


def test_a_path_from_a_sampled_policy_steps_up_from_its_ratios_between_grid_points():
    # a proposal with the neck already at 0.6 (between grid ratios) and the stem at 0.25
    path = greedy_path(SAVINGS, LOSSES, start={"stem": 0.25, "neck": 0.6})
    assert path[0] == {"stem": 0.25, "neck": 0.75, "head": 0.0}  # the free neck's next grid ratio first
    assert [(p["stem"], p["neck"]) for p in path] == [(0.25, 0.75), (0.5, 0.75), (0.75, 0.75)]
    # the estimate of a start between grid points interpolates its saving: 0.6 of the neck saves 1.2 ms
    assert estimated_ms(10.0, SAVINGS, {"neck": 0.6}) == pytest.approx(8.8)
    assert estimated_ms(10.0, SAVINGS, {"neck": 0.9}) == pytest.approx(8.5)  # beyond the grid: its last saving
    assert greedy_path(SAVINGS, LOSSES, start={"stem": 0.75, "neck": 0.8}) == []  # nothing left to shave


def test_segment_costs_survive_json():
    import json

    costs = SegmentCosts(SAVINGS, LOSSES, {"stem": ("model.0",), "neck": ("model.13", "model.16"), "head": ()})
    assert SegmentCosts.from_dict(json.loads(json.dumps(costs.to_dict()))) == costs


def test_a_depth_step_is_taken_when_it_buys_the_most_time_per_loss_and_becomes_the_policys_depth():
    held = {"stem": ("model.0", "model.2"), "neck": ("model.13",), "head": ("model.23",)}
    deep = {depth_step("stem"): ("model.2",), depth_step("neck"): ("model.13", "model.16")}
    # the stem's inner block costs much untuned; the neck's two little, and save more than the neck's channels
    losses = {**LOSSES, **depth_losses(0.4, {"model.2": 0.1, "model.13": 0.35, "model.16": 0.41}, deep)}
    assert losses[depth_step("stem")] == {1.0: pytest.approx(0.3)}
    assert losses[depth_step("neck")] == {1.0: pytest.approx(0.05)}  # 0.05 + 0 (a gain counts as 0)
    savings = {**SAVINGS, depth_step("stem"): {1.0: 2.0}, depth_step("neck"): {1.0: 2.0}}
    path = greedy_path(savings, losses)
    # the neck's channels (free, 0.5 ms for 0.01 at 0.75), then its depth (2 ms for 0.05), then the stem's steps
    assert [(p["neck"], p[depth_step("neck")], p["stem"]) for p in path[:4]] == [
        (0.25, 0, 0),
        (0.5, 0, 0),
        (0.75, 0, 0),
        (0.75, 1.0, 0),
    ]
    pruning, depth = policy_parts({**held, **deep}, path[3], {"model.2": 1, "model.13": 1, "model.16": 2})
    assert pruning == {"model.13": 0.75} and depth == {"model.13": 1, "model.16": 2}  # a step removes all of them
    assert policy_parts({**held, **deep}, path[-1], {"model.2": 1, "model.13": 1, "model.16": 2})[1]["model.2"] == 1


def test_a_depth_step_without_a_measured_loss_is_never_taken():
    deep = {depth_step("neck"): ("model.13", "model.16")}
    assert depth_losses(0.4, {"model.13": 0.39}, deep) == {}  # model.16 was never measured
    savings = {"neck": {0.25: 0.5}, depth_step("neck"): {1.0: 5.0}}
    path = greedy_path(savings, {"neck": {0.25: 0.0}})
    assert path == [{"neck": 0.25, depth_step("neck"): 0.0}]
