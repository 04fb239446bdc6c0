"""YAML configuration: pydantic models loaded with ``yaml.safe_load`` and errors that name file and field.

Every component has one config model (a :class:`ConfigModel`); unknown keys are
errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message names file and field."""


class ConfigModel(BaseModel):
    """Base of every config model: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` of a file, with the file named in every error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None


def validate(model: type[M], data: Any, source: str | Path) -> M:
    """Validate ``data`` against ``model``; on failure raise :class:`ConfigError` naming each bad field."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Load and validate one YAML file into ``model``."""
    return validate(model, read_yaml(path), path)


def format_validation_error(error: ValidationError, source: str | Path) -> str:
    """One line per problem: ``file: field 'a.b': message (got: value)``."""
    lines = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got: {got!r})"
        lines.append(f"{source}: field '{field}': {err['msg']}{got_text}")
    return "\n".join(lines)
