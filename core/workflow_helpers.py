"""Small helpers both halves' workflows share: reading an activity's business error, the root cause, must-finish awaits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
)

with workflow.unsafe.imports_passed_through():
    pass


# --- helpers -----------------------------------------------------------------


def business_error(err: Exception, *error_types: str) -> ApplicationError | None:
    """The activity's ApplicationError of one of `error_types`, if that is what `err` is.

    A failed activity arrives as ActivityError(cause=ApplicationError); a failed
    local activity arrives as the ApplicationError itself.
    """
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause if isinstance(cause, ApplicationError) and cause.type in error_types else None


def root_message(err: BaseException) -> str:
    """The innermost cause's message: what actually went wrong, for people."""
    while (cause := getattr(err, "cause", None)) is not None:
        err = cause
    return getattr(err, "message", None) or str(err) or type(err).__name__


async def uninterrupted(awaitable: Awaitable[Any], on_cancel: Callable[[], None] | None = None) -> Any:
    """Await `awaitable` to its end even if the workflow is cancelled meanwhile.

    For what must finish once started: undoing, and what follows the carrier's
    pickup. Temporal delivers a workflow cancellation to the main task as a
    CancelledError at whatever it awaits; here it reaches only the shield, the
    work goes on, and `on_cancel` is told. The work itself is cancelled only
    when the worker evicts the workflow from its cache, and that propagates.
    """
    task = asyncio.ensure_future(awaitable)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # so the next await is not cancelled again
            if on_cancel is not None:
                on_cancel()
