"""Names other systems rely on. Changing one breaks every producer and consumer."""

from __future__ import annotations

#: The task name producers in any language send.
ISSUE_TASK = "issue_cash_receipt"
#: The queue the task is routed to and workers consume.
QUEUE = "cash_receipts"
#: The task that cancels a payment's receipt (and re-issues after a partial refund).
CANCEL_TASK = "cancel_cash_receipt"
#: The ingress stream's entry types: a payment confirmed (issue), and refunded (cancel).
PAYMENT_CONFIRMED = "payment.confirmed"
PAYMENT_CANCELLED = "payment.cancelled"

#: The payload's ``provider``: i'mport (PortOne V1), or PortOne V2.
IAMPORT, PORTONE = "iamport", "portone"
PROVIDERS = (IAMPORT, PORTONE)
#: The payload's ``kind``: a payment made through the provider, or cash taken outside it.
PAYMENT, EXTERNAL = "payment", "external"
KINDS = (PAYMENT, EXTERNAL)
#: An external receipt's ``pay_method``: how the cash came, a bank transfer or a virtual
#: account. The payload's words (issue 15), which i'mport V1 happens to share.
PAY_METHODS = ("trans", "vbank")
