"""The one error type of the sheets package: a list of problems a person can act on."""

from __future__ import annotations

# How many problems an error message lists before it summarises the rest.
SHOWN_PROBLEMS = 20


class SheetError(Exception):
    """Bad input to `sheets make` or `sheets ingest`; each problem names its file (and row)."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:SHOWN_PROBLEMS]
        hidden = len(self.problems) - len(shown)
        lines = shown + ([f"... and {hidden} more problems"] if hidden > 0 else [])
        super().__init__("\n".join(lines))
