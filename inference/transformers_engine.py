"""The transformers backend: ``AutoProcessor`` + image-text-to-text model, or tokenizer + causal LM.

Runs on CPU (tests, the embedded demo) or one GPU. Generation is batched with
left padding (HF ``generate`` derives positions from the attention mask), scoring
is batched with right padding and requests bucketed by length: under a causal mask
a real token never attends to the pads after it and keeps its position, so a
padded batch scores each request exactly as alone (tests check batched ==
one-by-one == a plain forward).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from inference.chat import (RenderedChat, decode_completion, eos_token_ids, load_image, load_video, render,
                                   scored_mask)
from inference.config import EngineConfig
from inference.types import ChatRequest, Completion, EngineError, GenerationResult, PromptScore, SamplingParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pin_torch_threads(n: int | None) -> int:
    """Set torch's intra-op threads (process-wide) to ``n`` (None: unchanged); returns the count before, which
    the engine's ``close`` passes back here (also undoing what an in-process vLLM CPU worker set). Without
    the restore, every later step of the process (another engine, an evaluation) would run with an engine's
    setting, and float results would depend on which steps happened to run before in the same process."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    return before


def length_buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little compute goes to pads."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class TransformersEngine:
    """An :class:`~inference.types.Engine` on a transformers model."""

    def __init__(self, config: EngineConfig):
        import transformers

        self.config = config
        self._threads_before = pin_torch_threads(config.torch_threads)
        path = str(config.model_path)
        kwargs = dict(dtype=DTYPES[config.dtype], trust_remote_code=config.trust_remote_code)
        self.multimodal = any(m in config.modalities for m in ("image", "video"))
        if self.multimodal:
            self.processor = transformers.AutoProcessor.from_pretrained(
                path, trust_remote_code=config.trust_remote_code)
            self.tokenizer = self.processor.tokenizer
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        else:
            self.processor = None
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                path, trust_remote_code=config.trust_remote_code)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
        self.model.to(config.device).eval()
        self.template_owner = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = eos_token_ids(self.model.generation_config)

    # -- encoding ------------------------------------------------------------------------
    def _render(self, request: ChatRequest, *, add_generation_prompt: bool) -> RenderedChat:
        return render(self.template_owner, request, add_generation_prompt=add_generation_prompt,
                      modalities=self.config.modalities)

    def _encode(self, chats: list[RenderedChat], padding_side: str) -> dict[str, torch.Tensor]:
        """One padded batch: input_ids/attention_mask (B, L) plus the processor's media tensors."""
        texts = [c.text for c in chats]
        common = dict(padding=True, padding_side=padding_side, return_tensors="pt", add_special_tokens=False)
        if self.processor is None:
            batch = self.tokenizer(texts, **common)
        else:
            images = [load_image(v) for c in chats for k, v in c.media if k == "image"]
            videos = [load_video(v, self.config.video_frames) for c in chats for k, v in c.media if k == "video"]
            batch = self.processor(text=texts, images=images or None, videos=videos or None, **common)
        too_long = [i for i, n in enumerate(batch["attention_mask"].sum(1).tolist()) if n >= self.config.max_model_len]
        if too_long:
            raise EngineError(f"prompt of {batch['attention_mask'][too_long[0]].sum()} tokens does not fit "
                              f"max_model_len={self.config.max_model_len}")
        return {k: v.to(self.config.device) for k, v in batch.items()}

    # -- generation -----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[GenerationResult]:
        chats = [self._render(r, add_generation_prompt=True) for r in requests]
        results: list[GenerationResult | None] = [None] * len(requests)
        for start in range(0, len(requests), self.config.batch_size):
            idx = list(range(start, min(start + self.config.batch_size, len(requests))))
            batch = self._encode([chats[i] for i in idx], padding_side="left")
            if params.seed is not None:
                torch.manual_seed(params.seed)
            sampling: dict[str, Any] = (dict(do_sample=True, temperature=params.temperature, top_p=params.top_p)
                                        if params.temperature > 0 else dict(do_sample=False))
            out = self.model.generate(
                **batch, max_new_tokens=params.max_tokens, num_return_sequences=params.n,
                pad_token_id=self.tokenizer.pad_token_id, top_k=None, **sampling,
            )  # (B * n, L + new)
            new = out[:, batch["input_ids"].shape[1]:].tolist()
            prompt_lens = batch["attention_mask"].sum(1).tolist()
            for row, i in enumerate(idx):
                completions = [self._completion(new[row * params.n + k], params) for k in range(params.n)]
                results[i] = GenerationResult(requests[i].request_id, completions, int(prompt_lens[row]))
        return results  # type: ignore[return-value]

    def _completion(self, ids: list[int], params: SamplingParams) -> Completion:
        """Cut at the first EOS (generate pads the rows that ended early), then decode as vLLM does."""
        end = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        return decode_completion(self.tokenizer, ids if end is None else ids[:end + 1], end is not None,
                                 params.stop)

    # -- scoring --------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, requests: list[ChatRequest], score_roles: tuple[str, ...] = ("assistant",)) -> list[PromptScore]:
        chats = [self._render(r, add_generation_prompt=False) for r in requests]
        lengths = [len(self.tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chats]
        results: list[PromptScore | None] = [None] * len(requests)
        for idx in length_buckets(lengths, self.config.batch_size):
            batch = self._encode([chats[i] for i in idx], padding_side="right")
            logits = self.model(**batch).logits.float()  # (B, L, V)
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, L-1, V): predicts token t+1
            ids = batch["input_ids"]
            picked = logprobs.gather(-1, ids[:, 1:, None])[..., 0]  # (B, L-1)
            greedy = logprobs.argmax(-1) == ids[:, 1:]  # (B, L-1)
            for row, i in enumerate(idx):
                n = int(batch["attention_mask"][row].sum())
                row_ids = ids[row, :n].tolist()
                results[i] = PromptScore(
                    requests[i].request_id, row_ids, [math.nan] + picked[row, :n - 1].tolist(),
                    scored_mask(self.tokenizer, chats[i], score_roles, row_ids),
                    [False] + greedy[row, :n - 1].tolist())
        return results  # type: ignore[return-value]

    def close(self) -> None:
        del self.model
        import gc

        gc.collect()
        pin_torch_threads(self._threads_before)
