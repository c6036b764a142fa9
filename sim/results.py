"""What an engine returns, shared by both engines and everything that runs them.

Engine-neutral on purpose: `sim.des` and `sim.fast` both produce a `RunResult`, and neither
engine imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sim.scenario import Scenario

__all__ = ["RunResult", "Progress", "UnsupportedScenario"]


class UnsupportedScenario(ValueError):
    """The scenario uses something this engine does not model yet (exit status 2)."""


@dataclass
class RunResult:
    """What one run produced: the summary (the model's outputs) and the time series columns."""

    scenario: Scenario
    summary: dict
    timeseries: dict[str, np.ndarray]


# Called now and then during a run with (simulated time, events so far).
Progress = Callable[[float, int], None]
