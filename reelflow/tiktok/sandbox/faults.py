"""The sandbox's fault dice: which injected failure, if any, strikes a request.

This module owns the runtime fault settings (:class:`Faults`), one roll per request (error,
rate_limit, lost_response or none), the PUT connection-drop roll, and the count of what struck.
It must not decide where a fault strikes on the wire (``app`` does: never on ``/_sandbox/``) and
must not own the random generator: the state seeds one generator that every module draws from,
so a seed replays the same run.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class Faults:
    """Runtime fault dice. One roll per request picks error, rate_limit, lost_response or none."""

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    # The request is processed normally but answered 5xx: the client must reconcile, not repeat.
    lost_response_rate: float = 0.0
    drop_rate: float = 0.0  # PUTs only: read part of the chunk, then abort the connection
    targets: tuple[str, ...] = ("api", "upload")  # add "oauth" to fault the token endpoints


FAULT_KEYS = frozenset(f.name for f in fields(Faults))


@dataclass(frozen=True)
class InjectedFault:
    kind: str  # "error" | "rate_limit" | "lost_response"
    http_status: int
    retry_after_s: int | None = None


class FaultDice:
    """The current :class:`Faults`, rolled against the shared generator, with strike counts."""

    def __init__(self, rng: random.Random, lock: threading.RLock) -> None:
        self._rng = rng
        self._lock = lock
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.faults = Faults()
            self.counts = {"error": 0, "rate_limit": 0, "lost_response": 0, "drop": 0}

    def update(self, changes: Mapping[str, Any]) -> None:
        """Set the given :data:`FAULT_KEYS` (JSON lists become tuples); other keys are ignored."""
        with self._lock:
            for key in FAULT_KEYS & set(changes):
                value = changes[key]
                setattr(self.faults, key, tuple(value) if isinstance(value, list) else value)

    def settings(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self.faults)

    def roll(self, target: str) -> InjectedFault | None:
        """Which fault, if any, strikes this request (``target``: api, oauth or upload)."""
        with self._lock:
            f = self.faults
            if target not in f.targets:
                return None
            roll = self._rng.random()
            if roll < f.error_rate:
                fault = InjectedFault("error", self._rng.choice(f.error_statuses))
            elif roll < f.error_rate + f.rate_limit_rate:
                fault = InjectedFault("rate_limit", 429, f.retry_after_s)
            elif roll < f.error_rate + f.rate_limit_rate + f.lost_response_rate:
                fault = InjectedFault("lost_response", self._rng.choice(f.error_statuses))
            else:
                return None
            self.counts[fault.kind] += 1
            return fault

    def roll_drop(self) -> bool:
        with self._lock:
            drop = "upload" in self.faults.targets and self._rng.random() < self.faults.drop_rate
            self.counts["drop"] += drop
            return drop
