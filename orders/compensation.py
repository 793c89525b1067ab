"""The order's undo stack: what it has started, undone newest first when it stops.

Each undo is pushed before its step starts, so a stop in the middle of the
step still undoes it; each returns whether there was anything to undo (a step
that never happened, or that ended by itself, has nothing), and every undo is
safe to run twice (the activities make a second release or refund a no-op).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Undo = Callable[[], Awaitable[bool]]


class UndoStack:
    def __init__(self) -> None:
        self._undos: list[tuple[str, Undo]] = []

    def push(self, name: str, undo: Undo) -> None:
        self._undos.append((name, undo))

    async def unwind(self, undone: Callable[[str], Awaitable[None]]) -> None:
        """Run every undo, newest first; `undone(name)` after each that changed something."""
        for name, undo in reversed(self._undos):
            if await undo():
                await undone(name)
        self._undos.clear()
