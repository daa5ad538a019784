"""A progress bar for long evaluation loops (rich; silent when disabled)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def track_images(batches: Iterable[T], description: str, total: int | None, enabled: bool = True) -> Iterator[T]:
    """Yield `batches`, advancing a bar by the number of images in each (for a tuple batch, in its first item)."""
    if not enabled:
        yield from batches
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        for batch in batches:
            yield batch
            progress.advance(task, len(batch[0]) if isinstance(batch, (tuple, list)) else batch.shape[0])
