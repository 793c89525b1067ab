"""An order's emails to its customer, from the workflow's side: each kind started once, none waited for.

The order moves on while an email is sent; `finished` waits for them all
before the order closes. How each went (sending, sent, refused, failed) is kept
on the order's status and recorded, so the pages show it. Workflow code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

from core.email_policy import EMAIL_REFUSED, execute_email_activity
from core.workflow_helpers import business_error, root_message
from orders.emails import CARRIER_SLOT, TRACKING_SLOT, with_dispatch
from orders.model import SEND_ORDER_EMAIL, OrderEmailRequest, OrderEmailState, OrderRequest, OrderStatus, ShipmentProgress
from orders.timeline import Timeline


class CustomerEmails:
    def __init__(self, order: OrderRequest, status: OrderStatus, timeline: Timeline):
        self._order = order
        self._status = status
        self._timeline = timeline
        self.address = order.customer_email  # None: the customer is not emailed
        self._sending: list[asyncio.Task] = []

    def start(self, kind: str, after: str = "", **values: Any) -> None:
        """Start the `kind` email (once per order). `after` is a paragraph added to the text (the refund)."""
        request = self.prepare(kind, after, **values)
        if request is not None:
            self._send_soon(request)

    def carried(self, request: OrderEmailRequest, outcome: OrderEmailState | None) -> None:
        """How the step that carried `request` sent it (v10). None (not sent yet, or the step did not
        complete): the email's own activity sends it, and finds it sent if the step did after all."""
        if outcome is None:
            self._send_soon(request)
            return
        if outcome.status == "refused":
            self._timeline.event("failure", f"Email to the customer ({request.kind}) refused: {outcome.reason}")
        self._set_state(request.kind, outcome)

    def for_dispatch(self) -> OrderEmailRequest | None:
        """v12: the "shipped" email for the shipment's dispatch step to send, with slots for its carrier
        and tracking number. Its state is set when the dispatch tells how it went (`dispatched`):
        until then nothing is being sent."""
        return self.prepare("shipped", carrier=CARRIER_SLOT, tracking_number=TRACKING_SLOT, sending=False)

    def dispatched(self, request: OrderEmailRequest, progress: ShipmentProgress) -> None:
        """The dispatch done: how it sent the "shipped" email; if it did not, the email's own activity sends it."""
        if request.kind in self._status.emails:
            return  # told already
        filled = with_dispatch(request, progress.carrier or "", progress.tracking_number or "")
        if progress.email is None:
            self._set_state(request.kind, OrderEmailState("sending", at=workflow.now().isoformat()))
        self.carried(filled, progress.email)

    def prepare(self, kind: str, after: str = "", sending: bool = True, **values: Any) -> OrderEmailRequest | None:
        """The `kind` email's request, its state set to sending (unless `sending` is False); None if the
        order sends no such email (no address, sent already, or no usable text: recorded)."""
        if self.address is None or kind in self._status.emails:
            return None
        subject = self._order.texts.get(f"email_{kind}_subject")
        text = self._order.texts.get(f"email_{kind}")
        values["order_id"] = self._order.order_id
        try:
            if subject is None or text is None:
                raise KeyError(f"email_{kind}")
            request = OrderEmailRequest(
                self._order.order_id,
                kind,
                self.address,
                subject.format(**values),
                text.format(**values) + (f"\n\n{after}" if after else ""),
                workflow.now().isoformat(),
                self._status.address.name,
            )
        except (AttributeError, KeyError, IndexError, ValueError) as err:
            # The texts are the order's own (copied when placed): one missing or malformed
            # there is recorded, never a failed workflow task.
            self._set_state(
                kind, OrderEmailState("failed", f"no usable text for the {kind} email ({err!r})", workflow.now().isoformat())
            )
            return None
        if sending:
            self._set_state(kind, OrderEmailState("sending", at=workflow.now().isoformat()))
        return request

    def _send_soon(self, request: OrderEmailRequest) -> None:
        """The email's own activity, started without waiting (`finished` waits for it)."""
        self._sending.append(asyncio.ensure_future(self._send(request)))

    async def finished(self) -> None:
        """Wait for the emails still being sent (each records how it went)."""
        await asyncio.gather(*self._sending)

    async def _send(self, request: OrderEmailRequest) -> None:
        try:
            status = await execute_email_activity(SEND_ORDER_EMAIL, request, f"Email the customer: {request.kind}")
            state = OrderEmailState(status, at=workflow.now().isoformat())
        except ActivityError as err:
            # Refused for good, or given up after a day: recorded; the order's outcome is unchanged.
            refusal = business_error(err, EMAIL_REFUSED)
            reason = str(refusal.details[0]) if refusal is not None and refusal.details else root_message(err)
            state = OrderEmailState("refused" if refusal else "failed", reason, workflow.now().isoformat())
            # The kind and status only: the reason can quote the customer's address.
            workflow.logger.warning("Order email %s not delivered: %s", request.kind, state.status)
            self._timeline.event("failure", f"Email to the customer ({request.kind}) {state.status}: {state.reason}")
        self._set_state(request.kind, state)
        # The pages read the record: they show how each email went as soon as it is known
        # (v9: with the record of the step running, if one runs).
        await self._timeline.record_news()

    def _set_state(self, kind: str, state: OrderEmailState) -> None:
        # A new dict, not a change in place: a projection being recorded keeps its own.
        self._status.emails = {**self._status.emails, kind: state}
