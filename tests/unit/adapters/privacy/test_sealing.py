"""Sealing identifiers: round trips, rotation, refusal without a key."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet

from worker.adapters.privacy.sealing import Sealer, SealingUnavailable, UnsealError
from worker.core.schemas import InvalidPayload, load_payload

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_round_trip() -> None:
    """What is sealed unseals to the same text, and the token does not contain it."""
    sealer = Sealer([NEW])
    token = sealer.seal("01012345678")
    assert "01012345678" not in token
    assert sealer.unseal(token) == "01012345678"


def test_rotation_keeps_old_tokens_readable() -> None:
    """A new key in front seals; the old key behind it still unseals what it sealed."""
    old_token = Sealer([OLD]).seal("01012345678")
    rotated = Sealer([NEW, OLD])
    assert rotated.unseal(old_token) == "01012345678"
    assert Sealer([NEW]).unseal(rotated.seal("x")) == "x"


def test_dropped_key_cannot_unseal() -> None:
    """Once its key is dropped, a token is refused without details."""
    token = Sealer([OLD]).seal("01012345678")
    with pytest.raises(UnsealError, match="cannot be unsealed"):
        Sealer([NEW]).unseal(token)


@pytest.mark.parametrize("token", ["", "garbage", "gAAAAA", "한글"])
def test_garbage_tokens_are_refused(token: str) -> None:
    """Anything that is not a valid token is an UnsealError, never another exception."""
    with pytest.raises(UnsealError):
        Sealer([NEW]).unseal(token)


def test_no_key_refuses_unless_plaintext_is_allowed() -> None:
    """Without a key the sealer refuses to exist, with a message saying what to set."""
    with pytest.raises(SealingUnavailable, match="PII_ENCRYPTION_KEYS"):
        Sealer([])
    plaintext = Sealer([], allow_plaintext=True)
    assert not plaintext.enabled
    with pytest.raises(UnsealError):
        plaintext.unseal("anything")


def test_payload_with_sealed_identifier() -> None:
    """identifier_sealed is opened, then validated like a plain identifier."""
    sealer = Sealer([NEW])
    request = load_payload(
        {"imp_uid": "imp_1", "identifier_sealed": sealer.seal("010-1234-5678")}, sealer
    )
    assert request.identifier == "01012345678"
    message = request.to_message(sealer)
    assert "identifier" not in message
    assert sealer.unseal(message["identifier_sealed"]) == "01012345678"


@pytest.mark.parametrize(
    ("fields", "sealer", "reason"),
    [
        ({"identifier_sealed": "x", "identifier": "01012345678"}, Sealer([NEW]), "not both"),
        ({"identifier_sealed": 5}, Sealer([NEW]), "Fernet token string"),
        ({"identifier_sealed": "x"}, None, "No key"),
        (
            {"identifier_sealed": Sealer([OLD]).seal("01012345678")},
            Sealer([NEW]),
            "cannot be unsealed",
        ),
    ],
)
def test_bad_sealed_identifiers(
    fields: dict[str, object], sealer: Sealer | None, reason: str
) -> None:
    """Each sealed-identifier problem is a field error on identifier_sealed."""
    with pytest.raises(InvalidPayload) as caught:
        load_payload({"imp_uid": "imp_1", **fields}, sealer)
    assert reason in " ".join(caught.value.errors["identifier_sealed"])


def test_plaintext_mode_sends_the_identifier_in_clear() -> None:
    """With ALLOW_PLAINTEXT_PII (no key), messages carry the plain identifier: local use only."""
    sealer = Sealer([], allow_plaintext=True)
    message = load_payload({"imp_uid": "imp_1", "identifier": "01012345678"}, sealer).to_message(
        sealer
    )
    assert message["identifier"] == "01012345678"


def test_a_token_under_the_newest_key_travels_on_and_an_older_one_is_resealed() -> None:
    """Retries and the ledger keep a current token as it came; rotation still retires old keys."""
    sealer = Sealer([NEW, OLD])
    current = sealer.seal("01012345678")
    message = load_payload({"imp_uid": "imp_1", "identifier_sealed": current}, sealer).to_message(
        sealer
    )
    assert message["identifier_sealed"] == current

    older = Sealer([OLD]).seal("01012345678")
    message = load_payload({"imp_uid": "imp_1", "identifier_sealed": older}, sealer).to_message(
        sealer
    )
    assert message["identifier_sealed"] != older
    assert Sealer([NEW]).unseal(message["identifier_sealed"]) == "01012345678"

    # A token of the digits with separators is re-sealed as the normalised digits.
    spaced = sealer.seal("010-1234-5678")
    message = load_payload({"imp_uid": "imp_1", "identifier_sealed": spaced}, sealer).to_message(
        sealer
    )
    assert sealer.unseal(message["identifier_sealed"]) == "01012345678"


def test_one_sealer_per_key_set_in_a_process() -> None:
    """The producer helper asks for a sealer per payload: it gets the one built first,
    and a new one only when the configured keys change (a rotation)."""
    conf = SimpleNamespace(pii_encryption_keys=[NEW], allow_plaintext_pii=False)
    sealer = Sealer.from_conf(conf)
    assert Sealer.from_conf(SimpleNamespace(**vars(conf))) is sealer
    conf.pii_encryption_keys = [NEW, OLD]
    rotated = Sealer.from_conf(conf)
    assert rotated is not sealer
    assert rotated.unseal(Sealer([OLD]).seal("x")) == "x"
    with pytest.raises(SealingUnavailable):
        Sealer.from_conf(SimpleNamespace(pii_encryption_keys=[], allow_plaintext_pii=False))
