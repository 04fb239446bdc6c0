"""The engine interface every backend implements, and the values that cross it.

Captioning, perplexity scoring, DPO generation and evaluation all talk to a model
through these types, so the same code runs on transformers (CPU, tests, the
embedded demo), vLLM (CPU build here, CUDA build on clusters) and our own Mavors
checkpoints.

    from inference import load_engine, EngineConfig, ChatRequest, SamplingParams
    engine = load_engine(EngineConfig(backend="transformers", model_path="mavors-work/models/qwen2"))
    [result] = engine.generate([ChatRequest("r1", [{"role": "user", "content": "Describe a cat."}])],
                               SamplingParams(max_tokens=32))
    print(result.completions[0].text, result.completions[0].finish_reason)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


class EngineError(RuntimeError):
    """An engine cannot load, or a request cannot be run; the message names the model path or request."""


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to continue or score.

    ``messages``: ``[{"role": "system"|"user"|"assistant", "content": str | list[part]}]`` with
    parts ``{"type": "text", "text": ...}``, ``{"type": "image", "image": path | PIL.Image}``,
    ``{"type": "video", "video": path | frames (T, H, W, 3) uint8 array}``.
    """

    request_id: str
    messages: list[dict[str, Any]]

    def media(self) -> list[tuple[str, Any]]:
        """``[("image"|"video", value), ...]`` in conversation order."""
        found = []
        for message in self.messages:
            content = message["content"]
            if isinstance(content, str):
                continue
            for part in content:
                if part["type"] in ("image", "video"):
                    found.append((part["type"], part[part["type"]]))
        return found

    def with_media(self, values: list[Any]) -> ChatRequest:
        """The same conversation with its media parts' values replaced, in :meth:`media` order (e.g. paths
        by frames a decode stage produced)."""
        values = iter(values)
        messages = [{**m, "content": m["content"] if isinstance(m["content"], str) else [
            {**part, part["type"]: next(values)} if part["type"] in ("image", "video") else part
            for part in m["content"]]} for m in self.messages]
        if next(values, None) is not None:
            raise ValueError(f"request {self.request_id}: more media values than media parts")
        return ChatRequest(self.request_id, messages)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` is greedy; ``seed`` makes sampling reproducible per request."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_tokens < 1 or self.n < 1:
            raise ValueError(f"invalid sampling parameters: {self}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 with temperature 0 would return n identical greedy completions")
        object.__setattr__(self, "stop", tuple(self.stop))

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form (the key under which a caption was computed)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "n": self.n, "seed": self.seed, "stop": list(self.stop)}


@dataclass(frozen=True)
class Completion:
    """One sampled continuation. ``finish_reason``: ``stop`` (EOS or a stop string) or ``length`` (max_tokens).

    ``token_ids``: the generated ids (the EOS/stop token included, as in ``n_tokens``).
    """

    text: str
    finish_reason: FinishReason
    n_tokens: int
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    """The ``n`` completions of one request, and how many tokens its prompt had (media tokens included)."""

    request_id: str
    completions: list[Completion]
    prompt_tokens: int


@dataclass(frozen=True)
class PromptScore:
    """Per-token log-probabilities of a rendered conversation under the model.

    ``token_ids[i]`` is the i-th prompt token; ``logprobs[i]`` is ``log p(token_ids[i] | token_ids[:i])``
    (``logprobs[0]`` is NaN: the first token has no context). ``mask[i]`` is True for tokens inside the
    content of a scored role's message (template tokens, role names and media tokens are False).
    ``greedy[i]`` is True when ``token_ids[i]`` is the model's most likely token at i (False for the first),
    so a caller can tell whether greedy decoding would produce a continuation (lmms-eval's log-likelihood).
    Every backend fills it; None only in scores made by hand.
    """

    request_id: str
    token_ids: list[int]
    logprobs: list[float]
    mask: list[bool]
    greedy: list[bool] | None = None

    @property
    def n_scored(self) -> int:
        return sum(self.mask)

    def mean_logprob(self) -> float:
        """Mean log-prob over the masked tokens (NaN when none is masked)."""
        scored = [lp for lp, m in zip(self.logprobs, self.mask) if m]
        return sum(scored) / len(scored) if scored else math.nan

    def perplexity(self) -> float:
        """``exp(-mean(logprob[mask]))``."""
        return math.exp(-self.mean_logprob())


@runtime_checkable
class Engine(Protocol):
    """What every backend offers. Results come back in request order, one per request."""

    config: Any  # the EngineConfig it was loaded from

    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[GenerationResult]:
        """Continue each conversation (a generation prompt for the assistant is appended)."""
        ...

    def score(self, requests: list[ChatRequest],
              score_roles: tuple[str, ...] = ("assistant",)) -> list[PromptScore]:
        """Log-probs of each whole conversation as rendered by the chat template."""
        ...

    def close(self) -> None:
        """Free the model (memory, worker processes). The engine is unusable afterwards."""
        ...


__all__ = ["ChatRequest", "SamplingParams", "Completion", "GenerationResult", "PromptScore", "Engine",
           "EngineError", "Role", "FinishReason"]
