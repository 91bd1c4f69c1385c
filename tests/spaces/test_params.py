"""Declared search parameters (`spaces.params`) in real Optuna trials: conditions, inverse, distributions."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial

from spaces.params import Categorical, Condition, FloatRange, IntRange, Param, Params

optuna.logging.set_verbosity(optuna.logging.WARNING)


def declared() -> Params:
    """A toy knob: `n` in 0..3; `kind` asked when n > 0 (else "none"); `scale` only for kind "b"."""
    return Params(
        (
            Param("toy.n", int, 1, IntRange(0, 3)),
            Param(
                "toy.kind",
                str,
                "a",
                Categorical(("a", "b")),
                (Condition("n > 0", lambda n: n > 0, ("toy.n",), "none"),),
            ),
            Param(
                "toy.scale",
                float,
                1.0,
                FloatRange(0.5, 2.0, step=0.5),
                (Condition("kind b", lambda kind: kind == "b", ("toy.kind",), 1.0),),
            ),
            Param("toy.lr", float, 1e-3, FloatRange(1e-4, 1e-2, log=True)),
        )
    )


def test_sample_asks_only_what_its_conditions_allow_in_order():
    params = declared()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        values = params.sample(trial)
        assert list(values) == ["toy.n", "toy.kind", "toy.scale", "toy.lr"]
        expected = ["toy.n", *(["toy.kind"] if values["toy.n"] > 0 else [])]
        expected += ["toy.scale"] if values["toy.kind"] == "b" else []
        assert list(trial.params) == [*expected, "toy.lr"]
        if values["toy.n"] == 0:
            assert values["toy.kind"] == "none" and values["toy.scale"] == 1.0
        assert params.asked(values) == trial.params
        assert params.distributions(values) == trial.distributions
        seen.add((values["toy.n"] > 0, values["toy.kind"]))
        study.tell(trial, 0.0)
    assert seen == {(False, "none"), (True, "a"), (True, "b")}  # every branch was exercised


def test_asked_values_sample_back_through_a_fixed_trial():
    params = declared()
    for values in (
        {"toy.n": 0, "toy.kind": "none", "toy.scale": 1.0, "toy.lr": 1e-3},
        {"toy.n": 2, "toy.kind": "b", "toy.scale": 1.5, "toy.lr": 5e-4},
        {"toy.n": 3, "toy.kind": "a", "toy.scale": 1.0, "toy.lr": 1e-4},
    ):
        fixed = FixedTrial(params.asked(values))
        assert params.sample(fixed) == values
        assert fixed.distributions == params.distributions(values)


def test_settle_replaces_values_that_would_not_be_asked():
    values = {"toy.n": 0, "toy.kind": "b", "toy.scale": 2.0, "toy.lr": 1e-3}
    assert declared().settle(values) == {"toy.n": 0, "toy.kind": "none", "toy.scale": 1.0, "toy.lr": 1e-3}
    assert declared().asked(values) == {"toy.n": 0, "toy.lr": 1e-3}


def test_declared_distributions_are_what_optuna_records():
    assert FloatRange(0.0, 0.75, 0.05).distribution() == FloatDistribution(0.0, 0.75, step=0.05)
    assert FloatRange(0.1, 0.1).distribution() == FloatDistribution(0.1, 0.1)
    assert FloatRange(1e-4, 3e-3, log=True).distribution() == FloatDistribution(1e-4, 3e-3, log=True)
    assert IntRange(0, 3).distribution() == IntDistribution(0, 3)
    assert Categorical(("fp32",)).distribution() == CategoricalDistribution(["fp32"])


def test_distributions_widen_to_hold_a_value_outside_the_range():
    narrow = Params((Param("p", float, 0.0, FloatRange(0.0, 0.25, 0.05)), Param("q", float, 0.0, FloatRange(0.1, 0.1))))
    widened = narrow.distributions({"p": 0.5, "q": 0.25})
    assert widened == {"p": FloatDistribution(0.0, 0.5, step=0.05), "q": FloatDistribution(0.1, 0.25)}
    # off the step's grid: a continuous range is the one that holds it
    assert narrow.distributions({"p": 0.33, "q": 0.1})["p"] == FloatDistribution(0.0, 0.33)
    ints = Params((Param("e", int, 0, IntRange(1, 3)),))
    assert ints.distributions({"e": 0}) == {"e": IntDistribution(0, 3)}
    trial = optuna.trial.create_trial(params={"p": 0.5, "q": 0.25}, distributions=widened, value=0.0)
    assert trial.params == {"p": 0.5, "q": 0.25}
    with pytest.raises(ValueError, match="int4"):
        Params((Param("c", str, "fp32", Categorical(("fp32",))),)).distributions({"c": "int4"})


def test_bad_declarations_are_rejected():
    n = Param("n", int, 0, IntRange(0, 1))
    with pytest.raises(ValueError, match="twice"):
        Params((n, n))
    child = Param("m", int, 0, IntRange(0, 1), (Condition("n > 0", lambda v: v > 0, ("n",), 0),))
    with pytest.raises(ValueError, match="not declared before"):
        Params((child, n))
    assert [p.name for p in Params((n, child))] == ["n", "m"]
