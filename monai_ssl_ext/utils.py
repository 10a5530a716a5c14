"""Small helpers for config values."""

from __future__ import annotations

__all__ = ["as_bool"]


def as_bool(value, key: str = "flag") -> bool:
    """Config/CLI flag → bool: ``--freeze true`` arrives as the string "true" (fire parses only
    ``True``/``False``), and a non-empty string is truthy in Python."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", "none", "null", ""):
            return False
        raise ValueError(f"config `{key}` must be true or false, got {value!r}")
    return bool(value)
