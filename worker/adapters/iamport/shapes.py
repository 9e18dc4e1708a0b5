"""i'mport's V1 shapes: the body of ``POST /receipts/{imp_uid}``, and its answers read.

i'mport answers a receipt as a ReceiptAnnotation and a payment as a
PaymentAnnotation. They are checked here (their required fields are required
here too) and read into the core's provider-neutral
:class:`~worker.core.types.Receipt` and :class:`~worker.core.types.Payment`, so
that no pay method or payment status of i'mport's reaches the core.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from worker.core.errors import UnexpectedResponse
from worker.core.types import Payment, Receipt, ReceiptOrder

#: The pay methods i'mport issues a cash receipt for: a virtual account, a bank transfer.
CASH_PAY_METHODS = frozenset({"vbank", "trans"})
#: i'mport's status of a payment that is paid (and not wholly cancelled).
PAID = "paid"


class _ReceiptFields(Schema):
    """What i'mport's two receipt annotations share; their required fields are required."""

    class Meta:
        unknown = EXCLUDE

    receipt_tid = fields.String(load_default=None, allow_none=True)
    apply_num = fields.String(required=True)
    type = fields.String(required=True)
    amount = fields.Integer(required=True)
    vat = fields.Integer(required=True)
    receipt_url = fields.String(load_default=None, allow_none=True)
    applied_at = fields.Integer(required=True)
    cancelled_at = fields.Integer(load_default=0, allow_none=True)


class ReceiptSchema(_ReceiptFields):
    """i'mport's ReceiptAnnotation: a payment's receipt."""

    imp_uid = fields.String(required=True)


class ExternalReceiptSchema(_ReceiptFields):
    """i'mport's ExternalReceiptAnnotation: the same, named by ``merchant_uid``."""

    merchant_uid = fields.String(required=True)


class PaymentSchema(Schema):
    """The part of i'mport's PaymentAnnotation that decides receipt questions."""

    class Meta:
        unknown = EXCLUDE

    imp_uid = fields.String(required=True)
    merchant_uid = fields.String(load_default=None, allow_none=True)
    pay_method = fields.String(load_default=None, allow_none=True)
    pg_provider = fields.String(load_default=None, allow_none=True)
    status = fields.String(required=True)
    amount = fields.Integer(required=True)
    cancel_amount = fields.Integer(load_default=0)
    currency = fields.String(load_default="KRW")
    cash_receipt_issued = fields.Boolean(load_default=False)


RECEIPT_SCHEMA = ReceiptSchema()
EXTERNAL_RECEIPT_SCHEMA = ExternalReceiptSchema()
PAYMENT_SCHEMA = PaymentSchema()


def receipt_body(request: ReceiptOrder) -> dict[str, Any]:
    """The body of ``POST /receipts/{imp_uid}`` or ``/receipts/external/{merchant_uid}``:
    the payload's receipt fields, as given.

    The payload's fields are named as i'mport names them, so V1 takes them as they are,
    but for the order's name: ``order_name`` (one name across kinds and providers) is
    V1's ``name``.
    """
    fields = request.receipt_fields()
    if "order_name" in fields:
        fields["name"] = fields.pop("order_name")
    return fields


def read_receipt(response: dict[str, Any], *, external: bool = False) -> Receipt:
    """A ReceiptAnnotation (an ExternalReceiptAnnotation, for ``external``) as the core's
    :class:`Receipt`; a malformed one is unexpected."""
    schema, name = (
        (EXTERNAL_RECEIPT_SCHEMA, "ExternalReceiptAnnotation")
        if external
        else (RECEIPT_SCHEMA, "ReceiptAnnotation")
    )
    try:
        data = schema.load(response)
    except ValidationError as error:
        raise UnexpectedResponse(f"malformed {name}: {error.messages}") from None
    return Receipt(**{"imp_uid": None, **data})


def read_payment(response: dict[str, Any]) -> Payment:
    """A PaymentAnnotation as the core's :class:`Payment`; a malformed one is unexpected."""
    try:
        data = PAYMENT_SCHEMA.load(response)
    except ValidationError as error:
        raise UnexpectedResponse(f"malformed PaymentAnnotation: {error.messages}") from None
    return Payment(
        **data,
        paid=data["status"] == PAID,
        cash=data["pay_method"] in CASH_PAY_METHODS,
    )
