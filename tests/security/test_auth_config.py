"""Issue 12: auth fails closed, and random keys cannot flush the key cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mars_common import auth, aws, config
from mars_common.config import settings

ROOT = Path(__file__).resolve().parents[2]


# --- 5. AUTH_REQUIRED fails closed ------------------------------------------------------------------

@pytest.mark.parametrize("value,required", [
    (None, True), ("", True), ("true", True), ("TRUE", True), ("yes", True), ("flase", True), ("0", True),
    ("no", True), ("off", True), ("false", False), ("FALSE", False), (" False ", False),
])
def test_auth_is_required_unless_auth_required_is_exactly_false(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                                                required: bool) -> None:
    if value is None:
        monkeypatch.delenv("AUTH_REQUIRED", raising=False)
    else:
        monkeypatch.setenv("AUTH_REQUIRED", value)
    config.settings.cache_clear()
    try:
        assert settings().auth_required is required
    finally:
        config.settings.cache_clear()


def test_the_grpc_shim_image_requires_keys_and_binds_as_before() -> None:
    dockerfile = (ROOT / "grpc_shim" / "Dockerfile").read_text()
    env = [line for line in dockerfile.splitlines() if line.startswith("ENV ")]
    assert any("AUTH_REQUIRED=true" in line.split() for line in env), env
    assert '"--host", "0.0.0.0", "--port", "4025"' in dockerfile


# --- 10. negative lookups are cached apart ----------------------------------------------------------

@pytest.fixture
def keys_table(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AUTH_REQUIRED", "true")
    config.settings.cache_clear()
    auth.clear_cache()
    return settings().keys_table


def random_key(i: int) -> str:
    return f"mk_{i:08d}_" + f"{i:043d}"


def test_random_keys_are_read_once_and_cannot_evict_valid_keys(keys_table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, key = auth.create_key(keys_table, ["shop"])
    assert auth.lookup(keys_table, key) is not None
    monkeypatch.setattr(auth, "MAX_CACHED_MISSES", 50)
    reads: list[str] = []
    real = aws.table(keys_table).get_item

    def counting_get_item(**kwargs: Any) -> Any:
        reads.append(kwargs["Key"]["key_hash"])
        return real(**kwargs)

    monkeypatch.setattr(aws.table(keys_table), "get_item", counting_get_item)
    for i in range(200):  # a flood of well-formed random keys, four times the miss cache's size
        assert auth.lookup(keys_table, random_key(i)) is None
    assert auth.lookup(keys_table, random_key(199)) is None
    assert len(reads) == 200, "a recent unknown key is answered from the negative cache"
    reads.clear()
    assert auth.lookup(keys_table, key) is not None
    assert reads == [], "the flood evicted the valid key from the cache"
    assert len(auth._misses) <= 50
