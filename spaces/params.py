"""Search parameters declared once: name, type, default, search range and when it is asked.

A knob (`spaces.pruning`, `spaces.precision`, `spaces.distillation`) declares each of its
tunable parameters as one `Param`, next to the code that acts on it; `SearchSpace` lines
the declarations up in the order they are asked. Everything about a parameter's place in
a search derives from that one declaration:

- `Params.sample(trial)`: ask an Optuna trial (define-by-run) for every parameter whose
  conditions hold, in declaration order, with the distribution of its search range;
- `Params.asked(values)`: the inverse, which of a full set of values a trial would ask for
  (what `enqueue_trial` or `FixedTrial` needs to reproduce them);
- `Params.distributions(values)`: the Optuna distributions those asked values are recorded
  with, each one widened where needed so that it contains its value (`create_trial` demands it).

A `Condition` ties a parameter to parameters declared before it, e.g. `distill.weight` exists
only when `distill.enabled` is True; when a condition fails the parameter is not asked and
takes the condition's `otherwise` value. Modelled on Olive's `PassConfigParam` with
`search_defaults` and `Conditional`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


@dataclass(frozen=True)
class Categorical:
    """One of `choices` (asked with `suggest_categorical`, also when there is only one)."""

    choices: tuple

    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(self.choices)

    def suggest(self, trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))


@dataclass(frozen=True)
class IntRange:
    """An int in [low, high] on the grid low + k * step, or log-uniform."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def distribution(self) -> IntDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class FloatRange:
    """A float in [low, high]: on the grid low + k * step, continuous (step None), or log-uniform."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def distribution(self) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


SearchRange = Categorical | IntRange | FloatRange


@dataclass(frozen=True)
class Condition:
    """When a parameter exists: `test(*values of parents)` holds.

    text: the rule in words ("distill.epochs > 0"). parents: names of parameters declared
    before the conditioned one (none: a fixed property of the space, such as "more than one
    teacher"). otherwise: the parameter's value when the test fails (it is then not asked).
    """

    text: str
    test: Callable[..., bool]
    parents: tuple[str, ...] = ()
    otherwise: Any = None


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a knob.

    name: the Optuna parameter name (`prune.model.2`, `distill.lr0`). type_: its Python type.
    default: its value in a policy that does not name it (an unnamed unit's ratio is 0.0).
    search: the range a trial samples it from. when: conditions that must all hold for it to
    be asked; the first that fails gives its value instead.
    """

    name: str
    type_: type | Any
    default: Any
    search: SearchRange
    when: tuple[Condition, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Params:
    """Declared parameters in the order a trial asks for them. Names are unique and a
    condition's parents are declared before the parameter it conditions (else ValueError)."""

    params: tuple[Param, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for param in self.params:
            if param.name in seen:
                raise ValueError(f"parameter {param.name} is declared twice")
            if missing := [p for c in param.when for p in c.parents if p not in seen]:
                raise ValueError(f"parameter {param.name} depends on {missing[0]}, which is not declared before it")
            seen.add(param.name)

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def sample(self, trial) -> dict[str, Any]:
        """Every parameter's value: asked from `trial` (Optuna `Trial` or `FixedTrial`) where its
        conditions hold, in declaration order, else its failing condition's `otherwise`."""
        return {p.name: value for p, value, _ in self._walk(lambda p: p.search.suggest(trial, p.name))}

    def settle(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` (one per parameter) as a trial would end up with them: an unasked
        parameter takes its condition's `otherwise` instead. KeyError for a missing value."""
        return {p.name: value for p, value, _ in self._walk(lambda p: values[p.name])}

    def asked(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters a trial asks for when it samples `values`, with their values, in order."""
        return {p.name: value for p, value, asked in self._walk(lambda p: values[p.name]) if asked}

    def distributions(self, values: Mapping[str, Any]) -> dict[str, BaseDistribution]:
        """The distribution each asked parameter is recorded with, widened to contain its value.

        A value may lie outside a declared range (a reference policy enqueued into a range that
        sensitivity narrowed): a numeric range then grows to reach it, keeping its log scale and,
        when the value is on its grid, its step (off the grid, the finest step: none for floats).
        Raises ValueError for a categorical value that is not among the choices.
        """
        found = self._walk(lambda p: values[p.name])
        return {p.name: _containing(p.name, p.search.distribution(), value) for p, value, asked in found if asked}

    def _walk(self, value_of: Callable[[Param], Any]) -> Iterator[tuple[Param, Any, bool]]:
        values: dict[str, Any] = {}
        for param in self.params:
            failed = next((c for c in param.when if not c.test(*(values[p] for p in c.parents))), None)
            values[param.name] = value_of(param) if failed is None else failed.otherwise
            yield param, values[param.name], failed is None


def _containing(name: str, distribution: BaseDistribution, value: Any) -> BaseDistribution:
    try:
        internal = distribution.to_internal_repr(value)
    except ValueError:
        raise ValueError(f"{name} = {value!r} is not a value of {distribution}") from None
    if distribution._contains(internal):
        return distribution
    # Only a numeric range gets here (a categorical value found among the choices is contained).
    step = distribution.step
    steps = (value - distribution.low) / step if step else 0.0
    if abs(steps - round(steps)) > 1e-8:  # off the grid: only the finest grid holds it
        step = 1 if isinstance(distribution, IntDistribution) else None
    return type(distribution)(
        min(distribution.low, value), max(distribution.high, value), log=distribution.log, step=step
    )
