"""The Optuna samplers a study may name (`sampler:` in its YAML, `--sampler` on the command line).

A new sampler is one entry here: a name and a factory `(seed) -> optuna.samplers.BaseSampler`.
Every sampler must handle several objectives and `trial.set_constraint` (the latency budget),
as TPE, NSGA-II and random sampling in Optuna 5 do.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from evaluators.vocabulary import UserError

SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    # multivariate TPE models the units' ratios jointly; 5 startup trials (after the enqueued references)
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler `name` seeded with `seed`; UserError for a name not in `SAMPLERS`."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)}).")
    return SAMPLERS[name](seed)
