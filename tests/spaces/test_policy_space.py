"""Policy (validation, canonical form, YAML/JSON, id) and SearchSpace in real Optuna studies.

Units come from a real YOLO11n (YAML, nc=10): pruning units from its dependency graph,
precision units from its 64 px ONNX export.
"""

from __future__ import annotations

import json
import re

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial
from ultralytics.nn.tasks import DetectionModel

from evaluators.vocabulary import Int8Recipe, UserError
from spaces.distillation import DistillationSettings
from spaces.onnx_export import export_onnx, precision_units
from spaces.policy import Policy
from spaces.pruning import MAX_RATIO, REFERENCE_RATIOS, pruning_units
from spaces.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Reference policies may lie outside a unit's narrowed or coarse range; Optuna (enqueued trials,
# FixedTrial) warns and uses the given value, which is what reproduces them.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Fixed parameter"),
    pytest.mark.filterwarnings("ignore:The value .* is out of the range"),
]


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> tuple[tuple, tuple[str, ...]]:
    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=10, verbose=False)
    onnx_path = export_onnx(
        model, tmp_path_factory.mktemp("onnx") / "m.onnx", imgsz=64, names=[str(i) for i in range(10)]
    )
    return tuple(pruning_units(model)), tuple(precision_units(onnx_path))


def space(units, **kwargs) -> SearchSpace:
    prune, prec = units
    return SearchSpace(pruning_units=prune, precision_units=prec, **{"offered": ("int8", "fp32"), **kwargs})


def example() -> Policy:
    return Policy(
        pruning={"model.9": 0.5, "model.2": 0.25},
        precision={"model.9": "fp16", "model.2": "int8"},
        distillation=DistillationSettings(enabled=True, weight=3.25, epochs=2, lr0=5e-4, teacher="teacher.pt"),
        recipe=Int8Recipe(per_channel=False, calibration="entropy"),
    )


# --- Policy -----------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, MAX_RATIO, 1.0, float("nan"), "0.5", None, True])
def test_ratio_outside_range_or_not_a_number(ratio):
    with pytest.raises(UserError, match="pruning ratio"):
        Policy(pruning={"model.2": ratio})


def test_unknown_precision():
    with pytest.raises(UserError, match="int4"):
        Policy(precision={"model.2": "int4"})


def test_validate(units):
    prune, prec = units
    names = [u.name for u in prune]
    example().validate(names, prec, ("int8", "fp16", "fp32"))
    with pytest.raises(UserError, match="model.99"):
        Policy(pruning={"model.99": 0.1}).validate(names, prec, ("fp32",))
    with pytest.raises(UserError, match="model.99"):
        Policy(precision={"model.99": "fp32"}).validate(names, prec, ("fp32",))
    with pytest.raises(UserError, match="fp16"):
        example().validate(names, prec, ("int8", "fp32"))


def test_yaml_round_trip(tmp_path):
    policy = example()
    policy.to_yaml(tmp_path / "p.yaml")
    assert f"policy_id: {policy.policy_id}" in (tmp_path / "p.yaml").read_text()
    back = Policy.from_yaml(tmp_path / "p.yaml")
    assert back == policy and back.policy_id == policy.policy_id
    default = Policy()
    default.to_yaml(tmp_path / "d.yaml")
    assert Policy.from_yaml(tmp_path / "d.yaml").policy_id == default.policy_id


def test_json_round_trip():
    policy = example()
    back = Policy.from_dict(json.loads(json.dumps(policy.to_dict())))
    assert back == policy and back.policy_id == policy.policy_id


def test_bad_policy_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Policy.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("pruning: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        Policy.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError):
        Policy.from_yaml(tmp_path / "list.yaml")
    with pytest.raises(UserError):
        Policy.from_dict({"distillation": {"no_such_field": 1}})


def test_policy_id_stable_and_distinct():
    a = example()
    same = Policy(
        pruning={"model.2": 0.25, "model.9": 0.5},  # other insertion order
        precision={"model.2": "int8", "model.9": "fp16"},
        distillation=DistillationSettings(enabled=True, weight=3.25, epochs=2, lr0=5e-4, teacher="teacher.pt"),
        recipe=Int8Recipe(per_channel=False, calibration="entropy"),
    )
    assert re.fullmatch(r"[0-9a-f]{12}", a.policy_id)
    assert same.policy_id == a.policy_id and same == a
    variants = [
        Policy(
            pruning={"model.2": 0.3, "model.9": 0.5},
            precision=a.precision,
            distillation=a.distillation,
            recipe=a.recipe,
        ),
        Policy(
            pruning=a.pruning,
            precision={"model.2": "fp32", "model.9": "fp16"},
            distillation=a.distillation,
            recipe=a.recipe,
        ),
        Policy(pruning=a.pruning, precision=a.precision, distillation=DistillationSettings(epochs=1), recipe=a.recipe),
        Policy(pruning=a.pruning, precision=a.precision, distillation=a.distillation, recipe=None),
    ]
    assert len({a.policy_id, *(v.policy_id for v in variants)}) == 5


def test_canonical_rounding():
    policy = Policy(pruning={"model.9": 0.123456, "model.2": 0.30000000000000004})
    assert policy.pruning == {"model.2": 0.3, "model.9": 0.1235}
    assert list(policy.pruning) == ["model.2", "model.9"]
    assert policy.policy_id == Policy(pruning={"model.2": 0.3, "model.9": 0.12345678}).policy_id
    assert Policy(precision={"b": "fp32", "a": "int8"}).to_dict()["precision"] == {"a": "int8", "b": "fp32"}


def test_zero_ratio_is_the_same_as_no_ratio():
    explicit = Policy(pruning={"model.2": 0.0, "model.9": 0.5, "model.4": 0.00001})
    assert explicit.pruning == {"model.9": 0.5}
    assert explicit.policy_id == Policy(pruning={"model.9": 0.5}).policy_id


# --- SearchSpace ------------------------------------------------------------------------


def test_sample_gives_valid_policies_with_named_parameters(units):
    prune, prec = units
    s = space(units, offered=("int8", "fp16", "fp32"), teachers=(None, "other.pt"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        policy = s.sample(trial)
        policy.validate([u.name for u in prune], prec, s.offered)
        assert set(policy.pruning) <= {u.name for u in prune}  # units sampled at 0 are left out
        assert set(policy.precision) == set(prec)
        assert all(0.0 < r <= 0.75 and round(r / 0.05, 6).is_integer() for r in policy.pruning.values())
        assert 0 <= policy.distillation.epochs <= s.max_epochs
        if policy.distillation.epochs == 0:  # no fine-tune: nothing else of it is asked
            assert policy.distillation == DistillationSettings(enabled=False, epochs=0)
            assert not any(p.startswith("distill.") and p != "distill.epochs" for p in trial.params)
        params = set(trial.params)
        assert {f"prune.{u.name}" for u in prune} <= params
        assert {f"precision.{u}" for u in prec} <= params
        assert all(p.split(".")[0] in ("prune", "precision", "distill") for p in params)
        assert any(p.startswith("distill.") for p in params)
        study.tell(trial, 0.0)


def reproduced(s: SearchSpace, policy: Policy) -> Policy:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(s.to_params(policy))
    return s.sample(study.ask())


SPACES = {
    "default": {},
    "activations": {"activations": ("relu",)},
    "three-precisions-two-teachers": {
        "offered": ("int8", "fp16", "fp32"),
        "teachers": (None, "other.pt"),
        "max_epochs": 2,
    },
    "fp32-no-finetune": {"offered": ("fp32",), "max_epochs": 0},
    "coarse": {"ratio_range": (0.0, 0.5, 0.1)},
    "continuous": {"ratio_range": (0.0, 0.6, None)},
    "narrowed": {"ratio_ranges": {"model.2": (0.0, 0.25, 0.05), "model.9": (0.1, 0.1), "model.4": (0.05, 0.45, 0.1)}},
}


@pytest.mark.parametrize("kwargs", SPACES.values(), ids=SPACES.keys())
def test_to_params_is_the_inverse_of_sample(units, kwargs):
    """For real trials and every reference: a FixedTrial of `to_params` samples the policy back, an
    enqueued trial does too, and `replay` gives the distributions Optuna records (widened only where
    a reference lies outside a narrowed range), which `create_trial` accepts."""
    s = space(units, **kwargs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    recorded = {}
    for _ in range(25):
        trial = study.ask()
        policy = s.sample(trial)
        recorded[policy.policy_id] = (policy, trial.params, trial.distributions)
        study.tell(trial, 0.0)
    for policy, params, distributions in recorded.values():
        assert s.to_params(policy).keys() == params.keys()
        assert s.sample(FixedTrial(s.to_params(policy))) == policy
        replayed, replayed_distributions = s.replay(policy)
        assert replayed == s.to_params(policy) and replayed_distributions == distributions
    for policy in s.reference_policies().values():
        again = reproduced(s, policy)
        assert again == policy and again.policy_id == policy.policy_id
        assert s.sample(FixedTrial(s.to_params(policy))) == policy
        params, distributions = s.replay(policy)
        trial = optuna.trial.create_trial(params=params, distributions=distributions, value=0.0)
        assert trial.params == params


def test_parameters_are_asked_in_declaration_order(units):
    prune, prec = units
    s = space(units, offered=("int8", "fp16", "fp32"), teachers=(None, "other.pt"))
    policy = Policy(
        pruning={"model.2": 0.5},
        precision=dict.fromkeys(prec, "fp16"),
        distillation=DistillationSettings(enabled=True, weight=2.0, epochs=2, lr0=2e-4, teacher="other.pt"),
    )
    fixed = FixedTrial(s.to_params(policy))
    assert s.sample(fixed) == policy
    distill = ["distill.epochs", "distill.enabled", "distill.weight", "distill.teacher", "distill.lr0"]
    assert list(fixed.params) == [
        *(f"prune.{u.name}" for u in prune),
        *(f"precision.{u}" for u in prec),
        *distill,
    ]
    assert fixed.params["distill.teacher"] == "other.pt" and fixed.params["prune.model.2"] == 0.5


def test_declared_distributions(units):
    _, prec = units
    s = space(units, teachers=(None, "other.pt"), ratio_ranges={"model.9": (0.1, 0.1), "model.2": (0.0, 0.3)})
    policy = Policy(
        pruning={"model.9": 0.1},
        precision=dict.fromkeys(prec, "int8"),
        distillation=DistillationSettings(epochs=3, teacher="other.pt"),
    )
    params, distributions = s.replay(policy)
    assert distributions["prune.model.0"] == FloatDistribution(0.0, 0.75, step=0.05)
    assert distributions["prune.model.9"] == FloatDistribution(0.1, 0.1)  # a fixed unit has no step
    assert distributions["prune.model.2"] == FloatDistribution(0.0, 0.3, step=0.05)  # a pair keeps the space's step
    assert distributions[f"precision.{prec[0]}"] == CategoricalDistribution(["int8", "fp32"])
    assert distributions["distill.epochs"] == IntDistribution(0, 3)
    assert distributions["distill.enabled"] == CategoricalDistribution([True, False])
    assert distributions["distill.weight"] == FloatDistribution(0.5, 12.0, log=True)
    assert distributions["distill.teacher"] == CategoricalDistribution([None, "other.pt"])
    assert distributions["distill.lr0"] == FloatDistribution(1e-4, 3e-3, log=True)
    assert params["prune.model.9"] == 0.1  # the only value of a fixed unit
    fp32 = Policy(precision=dict.fromkeys(prec, "fp32"), distillation=DistillationSettings(enabled=False, epochs=0))
    single = space(units, offered=("fp32",)).replay(fp32)
    assert single[1][f"precision.{prec[0]}"] == CategoricalDistribution(["fp32"])  # asked with one choice too


def test_conditions_decide_which_distillation_parameters_exist(units):
    s = space(units, teachers=(None, "other.pt"))

    def distill_params(space_: SearchSpace, settings: DistillationSettings) -> dict:
        return {k: v for k, v in space_.to_params(Policy(distillation=settings)).items() if k.startswith("distill.")}

    assert distill_params(s, DistillationSettings(enabled=False, epochs=0)) == {"distill.epochs": 0}
    assert distill_params(s, DistillationSettings(enabled=False, epochs=2, lr0=5e-4)) == {
        "distill.epochs": 2,
        "distill.enabled": False,
        "distill.lr0": 5e-4,
    }
    assert list(distill_params(s, DistillationSettings(epochs=1))) == [
        "distill.epochs",
        "distill.enabled",
        "distill.weight",
        "distill.teacher",
        "distill.lr0",
    ]
    one_teacher = distill_params(space(units), DistillationSettings(epochs=1))
    assert "distill.teacher" not in one_teacher and one_teacher["distill.weight"] == 6.0
    no_finetune = space(units, max_epochs=0)
    assert distill_params(no_finetune, DistillationSettings(enabled=False, epochs=0)) == {}
    params = no_finetune.to_params(Policy())
    assert no_finetune.sample(FixedTrial(params)).distillation == DistillationSettings(enabled=False, epochs=0)


def test_a_policy_the_space_cannot_sample_is_refused(units):
    s = space(units)  # one teacher: the study's baseline
    with pytest.raises(RuntimeError, match="does not sample"):
        s.replay(Policy(distillation=DistillationSettings(epochs=1, teacher="other.pt")))
    with pytest.raises(RuntimeError, match="does not sample"):
        s.replay(Policy(precision={"model.2": "fp32"}))  # a sampled policy sets every unit's precision
    prec = units[1]
    with pytest.raises(RuntimeError, match="outside the space"):
        s.replay(Policy(precision={**dict.fromkeys(prec, "fp32"), "model.2": "fp16"}))  # not offered


def test_reference_policies(units):
    prune, _prec = units
    refs = space(units).reference_policies()
    assert "fp32" in refs and "all-int8" in refs and "all-fp16" not in refs
    assert all(p == "fp32" for p in refs["fp32"].precision.values()) and not refs["fp32"].pruning
    assert all(p == "int8" for p in refs["all-int8"].precision.values())
    assert REFERENCE_RATIOS == (0.25, 0.5, 0.75)
    for ratio in REFERENCE_RATIOS:
        (name,) = [n for n in refs if n.startswith(f"prune-{ratio:g}-")]
        assert set(refs[name].pruning.values()) == {ratio}
        assert set(refs[name].pruning) == {u.name for u in prune}
    assert len({p.policy_id for p in refs.values()}) == len(refs)
    assert not any(n.startswith("prune-0.75") for n in space(units, ratio_range=(0.0, 0.5, 0.05)).reference_policies())


def test_fp32_only_device(units):
    s = space(units, offered=("fp32",))
    refs = s.reference_policies()
    assert "fp32" in refs and not any(n.startswith("all-") for n in refs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    policies = [s.sample(study.ask()) for _ in range(3)] + list(refs.values())
    assert {p for policy in policies for p in policy.precision.values()} == {"fp32"}


def test_bad_spaces_are_user_errors(units):
    with pytest.raises(UserError, match="no precision"):
        space(units, offered=())
    with pytest.raises(UserError, match="int4"):
        space(units, offered=("int4", "fp32"))
    with pytest.raises(UserError, match="not fp32"):
        space(units, offered=("int8",))
    with pytest.raises(UserError, match="model.99"):
        space(units, ratio_ranges={"model.99": (0.0, 0.1)})
    with pytest.raises(UserError, match="model.2"):
        space(units, ratio_ranges={"model.2": (0.0, MAX_RATIO)})
