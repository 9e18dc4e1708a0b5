"""Facts from i'mport's spec that several test suites pin."""

from __future__ import annotations

#: Every field of the ReceiptAnnotation (spec/iamport-request-cash-receipt.txt).
RECEIPT_FIELDS = frozenset(
    {
        "imp_uid",
        "receipt_tid",
        "apply_num",
        "type",
        "amount",
        "vat",
        "receipt_url",
        "applied_at",
        "cancelled_at",
    }
)
