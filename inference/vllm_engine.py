"""The vLLM backend: ``vllm.LLM`` offline inference (CPU build here, CUDA build on clusters; same code).

vLLM is imported only when this backend is selected. Prompts are rendered by
``chat.render`` with the checkpoint's own template, exactly as the transformers
backend renders them: text-only prompts go in as token ids, multimodal prompts as
text plus ``multi_modal_data`` (vLLM expands the media placeholders itself).
``n`` samples come from one request (``SamplingParams.n``), and scoring reads
``prompt_logprobs`` of the rendered conversation.

Tests run it in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); the KV cache on
CPU is ``EngineConfig.kv_cache_gb`` unless ``VLLM_CPU_KVCACHE_SPACE`` is set.
"""
from __future__ import annotations

import gc
import math
import os
from typing import Any

from inference.chat import RenderedChat, decode_completion, load_image, load_video, render, scored_mask
from inference.config import EngineConfig
from inference.types import ChatRequest, Completion, GenerationResult, PromptScore, SamplingParams


def vllm_sampling(vllm: Any, params: SamplingParams) -> Any:
    """Our sampling parameters as ``vllm.SamplingParams`` (``n`` samples from one request)."""
    return vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                               max_tokens=params.max_tokens, seed=params.seed, stop=list(params.stop) or None)


def load_bar() -> bool:
    """Whether vLLM draws its checkpoint-loading bar (``use_tqdm_on_load``): it passes tqdm a ``disable`` of its
    own, so ``TQDM_DISABLE`` (set by ``mavors`` without ``-v``) is handed to it here."""
    return os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


def completions(tokenizer: Any, output: Any, params: SamplingParams) -> list[Completion]:
    """The completions of one ``RequestOutput``, decoded as the transformers backend decodes.

    vLLM's incremental detokenizer holds back a trailing partial UTF-8 character, so the text is
    decoded here from the ids. ``stop_reason``: None for EOS, a token id for stop tokens, the string
    for stop strings.
    """
    return [decode_completion(tokenizer, list(c.token_ids),
                              c.finish_reason == "stop" and not isinstance(c.stop_reason, str), params.stop)
            for c in output.outputs]


def prompt_logprobs(ids: list[int], output: Any) -> tuple[list[float], list[bool]]:
    """``log p(ids[i] | ids[:i])`` from a ``prompt_logprobs=0`` output (NaN for the first token), and whether
    ``ids[i]`` was the most likely token there (its vocabulary rank is 1; False for the first token)."""
    entries = [entry[tid] for tid, entry in zip(ids[1:], output.prompt_logprobs[1:])]
    return [math.nan] + [e.logprob for e in entries], [False] + [e.rank == 1 for e in entries]


class VllmEngine:
    """An :class:`~inference.types.Engine` on ``vllm.LLM``."""

    def __init__(self, config: EngineConfig, **llm_kwargs: Any):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gb))  # ignored by GPU builds
        import transformers
        import vllm

        self.config = config
        path = str(config.model_path)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        processor = None
        limits = {}
        if "image" in config.modalities:
            limits["image"] = config.max_images_per_prompt
        if "video" in config.modalities:
            limits["video"] = config.max_videos_per_prompt
        if limits:
            processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=config.trust_remote_code)
            llm_kwargs["limit_mm_per_prompt"] = limits
        self.template_owner = processor if getattr(processor, "chat_template", None) else self.tokenizer
        self.llm = vllm.LLM(
            model=path, dtype=config.dtype, max_model_len=config.max_model_len,
            tensor_parallel_size=config.tensor_parallel_size, trust_remote_code=config.trust_remote_code,
            gpu_memory_utilization=config.gpu_memory_utilization, enforce_eager=config.enforce_eager,
            seed=config.seed, use_tqdm_on_load=load_bar(), **llm_kwargs,
        )
        self._vllm = vllm

    def _prompt(self, chat: RenderedChat) -> dict[str, Any]:
        """A vLLM prompt: token ids for text, text + ``multi_modal_data`` when media are present."""
        if not chat.media:
            return {"prompt_token_ids": self.tokenizer(chat.text, add_special_tokens=False)["input_ids"]}
        data: dict[str, list[Any]] = {}
        for kind, value in chat.media:
            item = load_image(value) if kind == "image" else load_video(value, self.config.video_frames)
            data.setdefault(kind, []).append(item)
        return {"prompt": chat.text, "multi_modal_data": data}

    def _run(self, chats: list[RenderedChat], params: Any) -> list[Any]:
        """``LLM.generate`` in chunks of ``batch_size`` (memory for decoded media stays bounded)."""
        outputs = []
        step = self.config.batch_size
        for start in range(0, len(chats), step):
            prompts = [self._prompt(c) for c in chats[start:start + step]]
            outputs.extend(self.llm.generate(prompts, params, use_tqdm=False,
                                             tokenization_kwargs={"add_special_tokens": False}))
        return outputs

    def _render(self, request: ChatRequest, *, add_generation_prompt: bool) -> RenderedChat:
        return render(self.template_owner, request, add_generation_prompt=add_generation_prompt,
                      modalities=self.config.modalities)

    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[GenerationResult]:
        chats = [self._render(r, add_generation_prompt=True) for r in requests]
        outputs = self._run(chats, vllm_sampling(self._vllm, params))
        return [GenerationResult(r.request_id, completions(self.tokenizer, out, params), len(out.prompt_token_ids))
                for r, out in zip(requests, outputs)]

    def score(self, requests: list[ChatRequest], score_roles: tuple[str, ...] = ("assistant",)) -> list[PromptScore]:
        chats = [self._render(r, add_generation_prompt=False) for r in requests]
        # prompt_logprobs=0: the log-prob of each actual prompt token, no alternatives
        sampling = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        results = []
        for request, chat, out in zip(requests, chats, self._run(chats, sampling)):
            ids = list(out.prompt_token_ids)
            logprobs, greedy = prompt_logprobs(ids, out)
            results.append(PromptScore(request.request_id, ids, logprobs,
                                       scored_mask(self.tokenizer, chat, score_roles, ids), greedy))
        return results

    def close(self) -> None:
        del self.llm
        gc.collect()
