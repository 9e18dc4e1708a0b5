"""A credential sent in an HTTP header is checked at start (issue 16, review finding 6)."""

from __future__ import annotations

import pytest

from worker.config.parse import ConfigError, env_token


@pytest.mark.parametrize("secret", ["abc def", "abc\ndef", "abc\tdef", "비밀"])
def test_a_header_credential_with_a_space_or_a_line_break_is_refused_by_name(
    secret: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        env_token({"PORTONE_API_SECRET": secret}, "PORTONE_API_SECRET")
    assert "PORTONE_API_SECRET" in str(caught.value) and secret not in str(caught.value)
    assert env_token({"PORTONE_API_SECRET": " tok3n \n"}, "PORTONE_API_SECRET") == "tok3n"
