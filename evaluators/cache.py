"""Measured latencies, reused by artifact structure and device fingerprint.

A measurement is keyed by (structure hash, device fingerprint hash, timing settings key);
see `evaluators.artifact.structure_hash`. Entries are never overwritten by a different
value: the first measurement of a key is the one every later caller sees.

The store is one SQLite file (default `<squeezefit home>/.squeezefit/latency-cache.sqlite`,
or `SQUEEZEFIT_LATENCY_CACHE`), safe for several processes on one machine. It stores a
measurement as the dict of `LatencyMeasurement.to_dict()`; `Device.measure` turns it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path

from evaluators.paths import state_dir


def default_cache_path() -> Path:
    """`SQUEEZEFIT_LATENCY_CACHE` if set, else <squeezefit home>/.squeezefit/latency-cache.sqlite."""
    if env := os.environ.get("SQUEEZEFIT_LATENCY_CACHE"):
        return Path(env).expanduser()
    return state_dir() / "latency-cache.sqlite"


class LatencyCache:
    """SQLite store of measurement dicts by (structure, fingerprint hash, settings key)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS latency (structure TEXT, fingerprint TEXT, settings TEXT, "
                "measurement TEXT NOT NULL, created REAL NOT NULL, "
                "PRIMARY KEY (structure, fingerprint, settings))"
            )

    @contextlib.contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:  # commits on success, rolls back on error
                yield db
        finally:
            db.close()

    def get(self, structure: str, fingerprint: str, settings: str) -> dict | None:
        """The stored measurement dict, marked `cached: True`, or None."""
        with self._connect() as db:
            row = db.execute(
                "SELECT measurement FROM latency WHERE structure=? AND fingerprint=? AND settings=?",
                (structure, fingerprint, settings),
            ).fetchone()
        if row is None:
            return None
        return {**json.loads(row[0]), "cached": True}

    def put(self, structure: str, fingerprint: str, settings: str, measurement: dict) -> None:
        """Store a measurement dict unless one is already stored for the key."""
        data = json.dumps(measurement)
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO latency VALUES (?, ?, ?, ?, ?)",
                (structure, fingerprint, settings, data, time.time()),
            )

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM latency").fetchone()[0]
