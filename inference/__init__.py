"""Inference engines: one interface over transformers, vLLM and Mavors checkpoints.

    from inference import load_engine, EngineConfig, ChatRequest, SamplingParams
    engine = load_engine(EngineConfig(backend="vllm", model_path="models/qwen2", dtype="float32"))
    results = engine.generate(requests, SamplingParams(temperature=0.7, n=4, seed=0))
    scores = engine.score(requests, score_roles=("assistant",))   # per-token log-probs + mask
    engine.close()

Backends live in ``transformers_engine.py``, ``vllm_engine.py`` and ``mavors_engine.py``;
``chat.py`` renders conversations and media the same way for all of them; ``pool.py`` runs
engine stages over rows, in this process or on a Ray Data actor pool per engine.
"""
from inference.config import EngineConfig, load_engine_config
from inference.loader import load_engine
from inference.types import (
    ChatRequest, Completion, Engine, EngineError, GenerationResult, PromptScore, SamplingParams,
)

__all__ = ["EngineConfig", "load_engine_config", "load_engine", "ChatRequest", "Completion", "Engine",
           "EngineError", "GenerationResult", "PromptScore", "SamplingParams"]
