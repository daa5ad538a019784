"""The record of one evaluation run: metrics per sample set, with the exact protocol.

Written by ``cascade eval metrics`` / ``cascade eval sr`` as JSON and read by the report.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files.atomic import write_text


@dataclass
class EvaluationResult:
    """Metrics of one sample set (one sweep setting).

    `setting` holds the sweep values (``{"guidance": 3.0}``; empty without a sweep);
    `protocol` how the numbers were made: number of samples, reference set and its size,
    extractor, weights hash, resize.
    """

    samples: str
    metrics: dict[str, float]
    protocol: dict[str, object]
    setting: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.setting.items()) or Path(self.samples).name


def save_results(path: str | os.PathLike[str], results: list[EvaluationResult], command: list[str] | None = None) -> Path:
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command or [],
        "results": [asdict(result) for result in results],
    }
    return write_text(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


def load_results(path: str | os.PathLike[str]) -> list[EvaluationResult]:
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    return [EvaluationResult(**entry) for entry in document["results"]]
