"""The files cascade ships beside its code: stage configs, sbatch templates and prompt sets.

They live in the repository's top-level `configs/`, `slurm/` and `data/prompts/`. The package
reaches them through `cascade/shipped/`: in a checkout (and an editable install) its entries are
symbolic links to those folders; a wheel carries copies of the files there. One lookup serves
both, so `cascade demo`, `cascade slurm submit` and the prompt-set names work after a plain
`pip install` as well as from a checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

KINDS = ("configs", "slurm", "prompts")


def shipped(kind: str, *parts: str) -> Path:
    """The path of a shipped file or folder, e.g. `shipped("configs", "demo", "base.yaml")`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of shipped file {kind!r}; one of {KINDS}")
    path = Path(str(files("cascade"))) / "shipped" / kind
    for part in parts:
        path = path / part
    if not path.exists():
        raise FileNotFoundError(f"{path}: not shipped with this installation of cascade")
    return path
