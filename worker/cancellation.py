"""Cancelling a payment's receipt, and re-issuing after a partial refund. No Celery in here.

A refunded payment must not keep a live receipt. ``DELETE /receipts/{imp_uid}``
cancels it; after a partial refund a new receipt is then issued for what is
left, which i'mport computes from the payment. The same rules as issuing hold:
look before acting (a DELETE whose answer was lost is settled by the lookup,
whose ``cancelled_at`` tells), retry what is transient, and record each step
in the ledger so that a retry never cancels the new receipt it just issued.

A partial refund has no idempotency key of its own (the same refund may come
twice, from an outbox relay that repeats), but i'mport keeps the cumulative
``cancel_amount``: a live receipt for exactly ``amount - cancel_amount``
already reflects every refund so far, and cancelling it again would only
issue a third receipt.
"""

from __future__ import annotations

from worker.errors import InvalidRequest
from worker.iamport import IamportClient, Receipt
from worker.service import UNLOGGED, SendLog, send_logged


def cancel_live_receipt(
    client: IamportClient, imp_uid: str, *, sends: SendLog = UNLOGGED
) -> Receipt | None:
    """Make sure no live receipt remains; returns the cancelled one, or None if there was none.

    The DELETE's send time goes to ``sends``, so an ambiguous one is settled
    only after the bound on late processing.
    """
    receipt = client.find_receipt(imp_uid)
    if receipt is not None and not receipt.active:
        return receipt  # already cancelled (perhaps by an attempt whose answer was lost)
    if receipt is None and not client.get_payment(imp_uid).cash_receipt_issued:
        return None
    # A live receipt, or one i'mport says exists but cannot show (KICC, Settlebank).
    try:
        return send_logged(sends, lambda on_send: client.cancel_receipt(imp_uid, on_send=on_send))
    except InvalidRequest:
        # 400: nothing issued through i'mport to cancel. Look again, to be sure.
        again = client.find_receipt(imp_uid)
        if again is not None and again.active:
            raise
        return again


def receipt_for_balance(client: IamportClient, imp_uid: str) -> Receipt | None:
    """The live receipt when it already covers what is left after every refund, else None."""
    receipt = client.find_receipt(imp_uid)
    if receipt is None or not receipt.active or receipt.amount is None:
        return None
    payment = client.get_payment(imp_uid)
    if payment.cancel_amount <= 0:
        return None  # i'mport shows no refund yet: this receipt predates it
    return receipt if receipt.amount == payment.amount - payment.cancel_amount else None
