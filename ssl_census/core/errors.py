"""User-facing errors.

Every stage raises :class:`UserError` for bad input. The CLI prints its message on one line
(``error: <problem>. <fix>``) and exits 2, without a traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem.rstrip(".")
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.problem}. {self.fix}" if self.fix else f"{self.problem}."


def require_file(path: str | os.PathLike[str], what: str, fix: str | None = None) -> None:
    """Raise a UserError when ``path`` does not exist."""
    if not Path(path).exists():
        raise UserError(f"{what} not found: {path}", fix or "check the path")

