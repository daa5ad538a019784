"""`cascade init DIR`: copy the shipped stage configs and sbatch templates into a folder to edit.

After a `pip install` there is no checkout to edit `configs/` in: this writes `DIR/configs/`
and `DIR/slurm/` (the same files as the repository's folders), so the README's commands run
from `DIR` unchanged (`cascade fit -c configs/demo/base.yaml`). Existing files are kept unless
`--force` is given.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..resources import shipped

FOLDERS = ("configs", "slurm")


def init(argv: list[str]) -> int:
    """`cascade init DIR [--force]`."""
    parser = argparse.ArgumentParser(prog="cascade init", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="folder to write configs/ and slurm/ into (created)")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist")
    args = parser.parse_args(argv)
    written = kept = 0
    for kind in FOLDERS:
        source = shipped(kind)
        for path in sorted(source.rglob("*")):
            if not path.is_file():
                continue
            target = args.dir / kind / path.relative_to(source)
            if target.exists() and not args.force:
                kept += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written += 1
    print(f"wrote {written} files to {args.dir}/{{{','.join(FOLDERS)}}}"
          + (f"; kept {kept} existing (--force overwrites them)" if kept else ""), file=sys.stderr)
    return 0
