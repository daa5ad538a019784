"""Benchmark results: one flat dict per measurement, shown as a table and appended as JSON lines.

Every record carries where it was measured (device, CPU model, threads, versions, the
command), so a line of the JSONL file is self-contained.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what the platform module knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()})"


def environment(device: torch.device) -> dict:
    """Where and with what a measurement ran."""
    import lightning

    return {
        "device": device_name(device),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "command": " ".join(["cascade", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def append_jsonl(records: list[dict], path: str | Path) -> None:
    """Append one JSON object per record to `path` (created with its folder if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_cell(item)}" for key, item in value.items())
    return str(value)


def print_table(title: str, records: list[dict], columns: list[str], console: Console | None = None) -> None:
    """A rich table of `columns` of the records (missing values shown as '-')."""
    if not records:
        return
    console = console or Console(width=160)
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("benchmark", "config", "model", "sampler") else "right")
    for record in records:
        table.add_row(*[_cell(record.get(column)) for column in columns])
    console.print(table)
