"""The demo's wall-clock time per step, kept in OUT/timings.json across reruns.

A rerun of the demo resumes: it skips in seconds the steps an earlier run finished. The report
says what the work took, so a step done in this run records its own time and a step skipped
because it was done keeps the time recorded by the run that did it. Each time is written
(atomically) as soon as its step ends, so an interrupted run keeps those it finished.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files.atomic import write_text

TIMINGS_FILE = "timings.json"


class StepTimes:
    """Seconds per step of the demo in `out`: the recorded ones, updated by `record`."""

    def __init__(self, out: Path):
        self.path = out / TIMINGS_FILE
        self.seconds = self._read()

    def _read(self) -> dict[str, float]:
        """The recorded times; ValueError naming the file when it is not a {step: seconds} object."""
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.path}: not valid JSON ({error.msg}); remove it to record the times afresh") from None
        if not isinstance(data, dict) or not all(
                isinstance(value, (int, float)) and not isinstance(value, bool) for value in data.values()):
            raise ValueError(f"{self.path}: expected an object of step: seconds; remove it to record the times afresh")
        return {str(step): float(value) for step, value in data.items()}

    def record(self, step: str, seconds: float) -> None:
        """A step done in this run: its time replaces the recorded one, and the file is written at once."""
        self.seconds[step] = seconds
        write_text(self.path, json.dumps(self.seconds, indent=1) + "\n")

    def total(self, steps: list[str], lanes: list[list[str]]) -> float | None:
        """The wall-clock time of the whole demo from the recorded times: `steps` one after the other
        plus the longest of `lanes`, runs of steps that go side by side (the training processes).
        None while a time is missing (its step was done by a run killed before it recorded it)."""
        needed = steps + [step for lane in lanes for step in lane]
        if any(step not in self.seconds for step in needed):
            return None
        return sum(self.seconds[step] for step in steps) + max(sum(self.seconds[step] for step in lane) for lane in lanes)
