"""Shared test set-up: offline Ultralytics, one torch thread (the box has two cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from evaluators.offline import ensure_offline  # noqa: E402

ensure_offline()

import torch  # noqa: E402

torch.set_num_threads(1)
