"""The guided starts' search along the greedy's path (`search.guided._fit_targets`): timing decides where a
target is first met, whatever the additive estimate promised. The timings here are a table (the real ones
are exercised by `tests/e2e/test_search.py::test_guided_starts_are_measured_fit_their_targets_and_run_first`)."""

from search.guided import BUDGET_MARGIN, VERIFY_ROUNDS, _fit_targets, _within_limits

PATH = [{"a": 0.25 * (i + 1)} for i in range(12)]  # 12 steps of one segment
SAVINGS = {"a": {0.25 * (i + 1): 0.5 * (i + 1) for i in range(12)}}  # promises 0.5 ms per step (base 10 ms)


class _TableSession:
    """Times step i (ratio 0.25 (i + 1)) at 10 - 0.2 (i + 1) ms: each step realizes 40% of its promise."""

    def __init__(self):
        self.sessions = []

    def policy(self, held, ratios):
        return ratios["a"]

    def time_policies(self, ratios):
        self.sessions.append(list(ratios))
        return [10.0 - 0.2 * (r / 0.25) for r in ratios]


def test_the_least_pruned_step_that_times_within_each_target_is_found_though_the_estimate_over_promised():
    session, lines = _TableSession(), []
    found, missed = _fit_targets(session, [8.9, 8.0, 6.0], PATH, SAVINGS, 10.0, {}, log=lines.append)
    # 10 - 0.2 (i + 1) <= target: step 6 (index 5) for 8.9, step 10 (index 9) for 8.0; 6.0 needs step 20
    assert found[8.9] == ({"a": 1.5}, 8.8) and found[8.0][0] == {"a": 2.5}
    assert 6.0 not in found and missed[6.0] == ({"a": 3.0}, 10.0 - 0.2 * 12)  # the path's end, timed
    assert len(session.sessions) <= VERIFY_ROUNDS
    assert all(len(set(s)) == len(s) for s in session.sessions)  # a step two targets share is timed once a round
    assert lines and all("timed" in line for line in lines)


def test_an_empty_path_times_nothing_and_fits_nothing():
    session = _TableSession()
    assert _fit_targets(session, [8.0], [], SAVINGS, 10.0, {}, log=print) == ({}, {})
    assert session.sessions == []


def test_a_step_that_missed_only_the_margin_is_taken_below_the_budget_but_not_for_it():
    budget = 10.0
    limit_033, limit_025 = 3.3, 2.5  # targets are their limits less the margin
    missed = {
        limit_033 * BUDGET_MARGIN: ({"a": 0.75}, 3.29),  # over its target, within its limit
        limit_025 * BUDGET_MARGIN: ({"a": 0.75}, 2.6),  # over its limit
        budget * BUDGET_MARGIN: ({"a": 0.25}, 9.9),  # within the budget, but the budget keeps its margin
    }
    assert _within_limits(missed, budget) == {limit_033 * BUDGET_MARGIN: ({"a": 0.75}, 3.29)}
