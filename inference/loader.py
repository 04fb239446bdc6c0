"""``load_engine``: check the checkpoint, then build the configured backend (its library imported only then).

Everything that can fail at load time fails here, before any request is run, with
the model path in the message: a missing directory, a checkpoint without
``config.json``, a backend library that is not installed, weights that do not load.
"""
from __future__ import annotations

from pathlib import Path

from inference.config import EngineConfig
from inference.types import Engine, EngineError


def check_model_path(path: Path) -> None:
    """Refuse a path that cannot be a local Hugging Face checkpoint (hub ids are not fetched)."""
    if not path.exists():
        raise EngineError(f"{path}: model path does not exist (engines load local checkpoints only)")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise EngineError(f"{path}: not a checkpoint directory (no config.json)")


def load_engine(config: EngineConfig) -> Engine:
    """Build the engine ``config.backend`` names; raises :class:`EngineError` naming the path on failure."""
    check_model_path(Path(config.model_path))
    if config.backend == "transformers":
        from inference.transformers_engine import TransformersEngine as cls
    elif config.backend == "vllm":
        from inference.vllm_engine import VllmEngine as cls
    elif config.backend == "mavors":
        from inference.mavors_engine import MavorsEngine as cls
    else:  # pragma: no cover - EngineConfig validates the name
        raise EngineError(f"unknown backend {config.backend!r}")
    try:
        return cls(config)
    except EngineError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure becomes one message naming the checkpoint
        raise EngineError(f"{config.model_path}: cannot load with backend {config.backend!r}: "
                          f"{type(e).__name__}: {e}") from e
