"""Build the one frozen Settings object at start-up, from a TOML file and NOTIFGUARD_* env vars."""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detectors.settings import Secret, Settings, Topics

log = logging.getLogger("notifguard.config")

_ENV_PREFIX = "NOTIFGUARD_"


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """File first, then environment; unknown keys are an error (a typo must not pass silently)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is None:
        path = env.get(_ENV_PREFIX + "CONFIG") or None
    if path is not None:
        with open(path, "rb") as fh:
            values.update(tomllib.load(fh))
    fields = {f.name for f in dataclasses.fields(Settings)}
    for name in fields:
        raw = env.get(_ENV_PREFIX + name.upper())
        if raw is not None and name not in ("topics",):
            values[name] = raw
    topics = dict(values.pop("topics", {}) or {})
    for tf in dataclasses.fields(Topics):
        raw = env.get(f"{_ENV_PREFIX}TOPIC_{tf.name.upper()}")
        if raw is not None:
            topics[tf.name] = raw
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(Settings(), name)
        if name == "pseudonymisation_key":
            kwargs[name] = Secret(str(value))
        elif isinstance(default, bool):
            kwargs[name] = str(value).lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            kwargs[name] = int(value)
        elif isinstance(default, float):
            kwargs[name] = float(value)
        else:
            kwargs[name] = str(value)
    settings = Settings(topics=Topics(**topics), **kwargs)
    if settings.grace_s < 0 or settings.idle_flush_s <= 0:
        raise ValueError("grace_s must be >= 0 and idle_flush_s > 0")
    return settings


def warn_if_dev_key(settings: Settings) -> None:
    if settings.uses_dev_key:
        log.warning(
            "USING THE DEVELOPMENT PSEUDONYMISATION KEY: hashes in alerts and state are not secret. "
            "Set NOTIFGUARD_PSEUDONYMISATION_KEY (or pseudonymisation_key in the config file) in production."
        )
