"""YAML configuration: pydantic models loaded with ``yaml.safe_load`` and errors that name file and field.

Every component has one config model (a :class:`ConfigModel`); unknown keys are
errors, so a typo never silently falls back to a default.

Paths in a config file (fields typed :data:`ConfigPath`) follow one rule, whatever the kind of file (settings,
engines, scorers, rosters, DPO configs, flow parameters): a relative path is relative to the folder of the file
that says it, never to the working directory; ``~`` expands; ``{work_dir}/...`` is under the settings' work dir
(``mavors --config``), which is how shipped files name things a run creates (the demo's tiny models).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from core.paths import stored

WORK_DIR = "{work_dir}"
"""Prefix of a config path that lies under the settings' work dir."""


def config_path(value: str | Path, base: str | Path | None, work_dir: str | Path | None = None) -> Path:
    """A path as written in a config file, made usable: ``{work_dir}/x`` under ``work_dir``, absolute (or
    ``~``) as given, else relative to ``base`` (the file's folder; None: left relative)."""
    text = str(value)
    if text == WORK_DIR or text.startswith(WORK_DIR + "/"):
        if work_dir is None:
            raise ValueError(f"{text!r} names the work dir, but no settings were given to load this file with")
        return Path(os.path.abspath(Path(work_dir) / text[len(WORK_DIR):].lstrip("/")))
    path = Path(text).expanduser()
    if path.is_absolute() or base is None:
        return path
    return Path(os.path.abspath(Path(base) / path))


def work_dir_path(path: str | Path, work_dir: str | Path) -> str:
    """A path a program writes into a config value (a stage's data override): ``{work_dir}/...`` when under the
    work dir, else absolute. :func:`config_path` reads it back wherever the work dir has moved since."""
    value = stored(path, work_dir)
    return value if Path(value).is_absolute() else f"{WORK_DIR}/{value}"


def _resolve_in_context(value: Path, info: ValidationInfo) -> Path:
    context = info.context or {}
    return config_path(value, context.get("base"), context.get("work_dir")) if context else value


ConfigPath = Annotated[Path, AfterValidator(_resolve_in_context)]
"""A path field of a config model: resolved by :func:`config_path` when loaded from a file (:func:`load_yaml`);
as given when the model is built in code."""


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


def validate(model: type[M], data: Any, source: str | Path, *, base: str | Path | None = None,
             work_dir: str | Path | None = None) -> M:
    """Validate ``data`` against ``model``; on failure raise :class:`ConfigError` naming each bad field.
    ``base``: the folder relative :data:`ConfigPath` fields start from; ``work_dir``: what ``{work_dir}`` is."""
    if data is None:
        data = {}
    context = {"base": base, "work_dir": work_dir} if base is not None or work_dir is not None else None
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_yaml(path: str | Path, model: type[M], work_dir: str | Path | None = None) -> M:
    """Load and validate one YAML file into ``model``; its relative paths start at the file's folder."""
    return validate(model, read_yaml(path), path, base=Path(os.path.abspath(path)).parent, work_dir=work_dir)


def format_validation_error(error: ValidationError, source: str | Path) -> str:
    """One line per problem: ``file: field 'a.b': message (got: value)``."""
    lines = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got: {got!r})"
        lines.append(f"{source}: field '{field}': {err['msg']}{got_text}")
    return "\n".join(lines)
