"""The device vocabulary other layers use: the INT8 recipe checks itself; measurements round-trip flat."""

import pytest

from evaluators import Fingerprint, Int8Recipe, LatencyMeasurement, TimingStats, UserError


def test_recipe_choices_come_from_its_annotations():
    choices = Int8Recipe.choices()
    assert choices["quantizer"] == ("ort", "nncf") and choices["fmt"] == ("qdq", "qoperator")
    assert choices["per_channel"] == (True, False) and choices["calibration"] == ("minmax", "entropy", "percentile")
    assert set(choices) == set(Int8Recipe().to_dict())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fmt": "qlinear"}, "INT8 recipe fmt 'qlinear' must be one of"),
        ({"activations": "int4"}, "INT8 recipe activations 'int4' must be one of"),
        ({"per_channel": 1}, "INT8 recipe per_channel 1 must be one of"),
        ({"quantizer": "nncf", "fmt": "qoperator"}, "The NNCF quantizer writes Q/DQ only"),
    ],
)
def test_bad_recipes_are_user_errors(fields, message):
    with pytest.raises(UserError, match=message):
        Int8Recipe(**fields)


def test_recipe_round_trips_and_rejects_unknown_fields():
    recipe = Int8Recipe(quantizer="nncf", symmetric_activations=True)
    assert Int8Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(UserError, match="unknown field 'bits'"):
        Int8Recipe.from_dict({**recipe.to_dict(), "bits": 4})


def test_measurement_holds_its_stats_and_writes_them_flat():
    stats = TimingStats(p50_ms=2.0, p90_ms=3.0, iqr_ms=0.5, mean_ms=2.2, runs=30, warmup_runs=5)
    fingerprint = Fingerprint("cpu", "onnxruntime", "1.0", {"threads": 1})
    m = LatencyMeasurement(stats, 12.5, "ort-cpu", fingerprint)
    assert (m.p50_ms, m.p90_ms, m.runs, m.sustained_drift) == (2.0, 3.0, 30, None)
    flat = m.to_dict()
    assert flat["p50_ms"] == 2.0 and flat["fingerprint_hash"] == fingerprint.hash and "stats" not in flat
    assert LatencyMeasurement.from_dict(flat) == m
    with pytest.raises(AttributeError):
        m.p99_ms  # noqa: B018
