"""StudyConfig: what a study searches, on which device, under which budget; YAML in, validated.

Every field can be set in the study file; the most used can also be given as flags of
`squeezefit search` (see its --help), and a flag overrides the file. Paths are
relative to the current directory, as in Ultralytics. `data: embedded` means the
generated digits data set at the baseline's image size and seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from evaluators.paths import studies_dir
from evaluators.vocabulary import UserError
from search.samplers import SAMPLERS
from search.scheduler import SCHEDULERS

# Objective -> its Optuna direction.
OBJECTIVES = {"map50_95": "maximize", "latency_ms": "minimize", "size_mb": "minimize"}


SPACES = ("segments", "per-unit")
STARTS = ("guided", "references")


@dataclass(frozen=True)
class StudyConfig:
    """A study's settings. Latency in ms, fractions in (0, 1], times in minutes.

    latency_min_seconds: the timing floor of every latency measurement (the protocol also
    needs at least 30 timed runs); train_images / val_images: fine-tune and validate on the
    first N images of each split (None: all), the study's fidelity knobs.
    sensitivity_max_drop: narrow each unit's pruning range to the ratios whose untuned mAP
    drop stayed within this (from `squeezefit sensitivity`, stored next to the model).
    pruning_importance: how a pruned unit's channels are ranked, the name of a criterion in
    `spaces.importance.CRITERIA` (magnitude, lamp, taylor, hessian; checked by `search.prepare`, which
    imports the spaces); pruning_round_to: every channel group keeps a multiple of this
    many channels (None: any count). Both apply to the trials and to `squeezefit sensitivity`.
    address: the Ray cluster (HOST:PORT, or "auto" for RAY_ADDRESS) the search runs on, its
    device measured on the node holding `device:<device>` (`search.cluster`); None: a local Ray.
    depth: whether a policy may remove the inner blocks of the model's C3k2/C2f/C2PSA blocks (`spaces.depth`: one
    more parameter per segment, or per such block), and the guided starts step through them.
    space: "segments" (the default: one ratio and one precision per contiguous segment of the graph,
    `spaces.segments`: far fewer dimensions, no precision islands) or "per-unit" (a ratio and a precision per unit).
    retries: how many times Ray restarts a trial whose process or node died (from the start:
    trials keep no checkpoint); 0: such a trial is FAIL with the reason.
    starts: what is enqueued before the sampler proposes: "guided" (the uniform reference
    policies plus the guided starts of `search.guided`, measured on the device when the study
    is created) or "references" (the uniform reference policies only).
    scheduler: "fifo" (every trial within the budget fine-tunes its epochs, unless early stopping finds it dominated)
    or "asha" (Ray Tune's ASHA stops the less promising after 1, rf, rf², ... epochs; `search.scheduler`), with
    rf = asha_reduction_factor.
    time_limit_min: no trial starts once this many minutes have passed since the search's first (the running ones
    finish, as with Optuna's `timeout`); None: the search runs its `trials`.
    recover_epochs: after the search, recover the best policy under the budget this many epochs on the whole train
    split (`search.recover`) before it is exported; 0: export it as the search left it.
    repair: a sampled policy over the budget is shaved along the guided starts' greedy until it fits, and the
    trial scores that policy (`search.repair`); False: it stays an infeasible trial. Needs the guided starts'
    measurements (starts "guided").
    activations: activations a policy may run the model's convolutions with instead of their SiLU
    (`spaces.activation.ACTIVATIONS`, e.g. [relu]; checked by `search.prepare`, like pruning_importance); the
    study converts its baseline to each once, distilling it
    `activation_epochs` epochs on the whole train split (`search.variants`, cached). Empty: none.
    """

    name: str = "default"
    model: str = "studies/baseline/yolo11n-digits.pt"
    data: str = "embedded"
    imgsz: int = 192
    device: str = "ort-cpu"
    budget_ms: float | None = None
    budget_fraction: float | None = None
    objectives: tuple[str, ...] = ("map50_95", "latency_ms")
    sampler: str = "tpe"
    trials: int = 16
    time_limit_min: float | None = None
    finetune_epochs: int = 3
    train_images: int | None = None
    val_images: int | None = None
    calibration_images: int = 128
    latency_min_seconds: float = 2.0
    sensitivity_max_drop: float | None = None
    concurrency: int = 1
    address: str | None = None
    retries: int = 0
    storage: str | None = None
    seed: int = 0
    pruning_importance: str = "magnitude"
    pruning_round_to: int | None = 8
    space: str = "segments"
    starts: str = "guided"
    recover_epochs: int = 0
    scheduler: str = "fifo"
    asha_reduction_factor: int = 3
    repair: bool = True
    activations: tuple[str, ...] = ()
    activation_epochs: int = 10
    depth: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        activations = self.activations or ()
        object.__setattr__(self, "activations", (activations,) if isinstance(activations, str) else tuple(activations))
        problems = []
        if self.budget_ms is not None and self.budget_ms <= 0:
            problems.append(f"budget_ms must be positive, got {self.budget_ms}")
        if self.budget_fraction is not None and not 0 < self.budget_fraction <= 1:
            problems.append(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if bad := [o for o in self.objectives if o not in OBJECTIVES]:
            problems.append(f"unknown objective {bad[0]!r} (choose from {', '.join(OBJECTIVES)})")
        if self.objectives[:2] != ("map50_95", "latency_ms"):
            problems.append("objectives must start with map50_95 and latency_ms")
        if self.sampler not in SAMPLERS:
            problems.append(f"unknown sampler {self.sampler!r} (choose from {', '.join(SAMPLERS)})")
        if self.latency_min_seconds <= 0:
            problems.append(f"latency_min_seconds must be positive, got {self.latency_min_seconds}")
        if self.trials < 1 or self.concurrency < 1 or min(self.finetune_epochs, self.retries, self.recover_epochs) < 0:
            problems.append(
                "trials and concurrency must be at least 1, finetune_epochs, retries and recover_epochs at least 0"
            )
        if not 32 <= self.imgsz <= 2048 or self.imgsz % 32:
            problems.append(f"imgsz must be a multiple of 32 between 32 and 2048, got {self.imgsz}")
        if self.space not in SPACES:
            problems.append(f"unknown space {self.space!r} (choose from {', '.join(SPACES)})")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"unknown scheduler {self.scheduler!r} (choose from {', '.join(SCHEDULERS)})")
        if self.asha_reduction_factor < 2:
            problems.append(f"asha_reduction_factor must be at least 2, got {self.asha_reduction_factor}")
        if self.starts not in STARTS:
            problems.append(f"unknown starts {self.starts!r} (choose from {', '.join(STARTS)})")
        if self.pruning_round_to is not None and self.pruning_round_to < 1:
            problems.append(f"pruning_round_to must be a positive channel count or null, got {self.pruning_round_to}")
        if self.activations and self.activation_epochs < 1:
            problems.append(f"activation_epochs must be at least 1 with activations, got {self.activation_epochs}")
        if problems:
            raise UserError(f"invalid study config: {problems[0]}.")

    @classmethod
    def from_yaml(cls, path: Path, **overrides) -> StudyConfig:
        """Read a study file; `overrides` (None values ignored) win over the file."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"study config {path} does not exist.")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"study config {path} is not valid YAML ({str(exc).splitlines()[0]}).") from None
        if not isinstance(raw, dict):
            raise UserError(f"study config {path} must be a mapping of settings.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"study config {path} has an unknown setting {unknown[0]!r}.")
        raw.setdefault("name", path.stem)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**raw)
        except TypeError as exc:
            raise UserError(f"study config {path} is malformed: {exc}.") from None

    @classmethod
    def from_record(cls, record: dict, storage_url: str) -> StudyConfig:
        """The config a stored study ran with (`search.prepare.Prepared.to_record`), in `storage_url`.

        Paths are the resolved ones it used (a relative path was relative to the cwd of its search).
        """
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in record["config"].items() if k in known})
        data = config.data if config.data == "embedded" else record["data_yaml"]
        return replace(config, storage=storage_url, model=record["checkpoint"], data=data)

    def with_overrides(self, **overrides) -> StudyConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def storage_url(self) -> str:
        """The Optuna storage URL: as given, or a SQLite file under studies/ in the squeezefit home."""
        if self.storage:
            return self.storage
        return f"sqlite:///{studies_dir() / 'studies.db'}"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["objectives"] = list(self.objectives)
        data["activations"] = list(self.activations)
        return data


# --- storage: one Optuna study per squeezefit study ----------------------------------------

STUDY_ATTR = "squeezefit"  # study user attr holding what later commands need (`Prepared.to_record`)


# Seconds a PostgreSQL connection may take before the storage counts as unreachable.
CONNECT_TIMEOUT_S = 10


def open_storage(url: str):
    """An Optuna RDB storage for `url` (any SQLAlchemy URL Optuna accepts: SQLite, PostgreSQL, MySQL);
    SQLite parent directories are created. UserError, before anything is written, for a malformed
    URL, a database that cannot be reached within `CONNECT_TIMEOUT_S` or a missing driver."""
    import optuna

    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as exc:  # Optuna's, raised from the driver's ModuleNotFoundError
        driver = getattr(exc.__cause__, "name", None) or "for its database"
        extra = " (pip install 'squeezefit[postgres]')" if url.startswith("postgresql") else ""
        raise UserError(f"the study storage {_shown(url)} needs the database driver {driver}{extra}.") from None
    except Exception as exc:  # a malformed URL or unreachable database is the user's input
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open the study storage {_shown(url)}: {reason.rstrip('.')}.") from None


def _shown(url: str) -> str:
    """The URL with any password masked."""
    from sqlalchemy.engine import make_url

    try:
        return repr(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return repr(url)


def study_exists(name: str, storage_url: str) -> bool:
    """Whether the storage at `storage_url` holds a study named `name`."""
    import optuna

    return name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(storage_url))}


def create_study(name: str, storage_url: str, objectives, record: dict):
    """A new Optuna study `name` with one direction per objective (see OBJECTIVES) and `record` as its STUDY_ATTR.

    Raises Optuna's DuplicatedStudyError if the name is taken: callers check `study_exists` first.
    """
    import optuna

    study = optuna.create_study(
        study_name=name, storage=open_storage(storage_url), directions=[OBJECTIVES[o] for o in objectives]
    )
    study.set_user_attr(STUDY_ATTR, record)
    return study


def load_study(name: str, storage_url: str):
    """The stored study `name`; UserError naming the studies that exist if it is not there."""
    import optuna

    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        hint = f"; studies there: {', '.join(known)}" if known else "; it holds no study"
        raise UserError(f"no study named {name!r} in {storage_url}{hint}.") from None


def study_record(study) -> dict:
    """What `squeezefit search` stored about a study (config, budget, device, space, paths)."""
    record = study.user_attrs.get(STUDY_ATTR)
    if not record:
        raise UserError(f"study {study.study_name!r} was not created by squeezefit search.")
    return record
