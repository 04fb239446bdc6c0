"""Mavors as an lmms-eval model, for its Python API and its CLI.

    lmms-eval --model mavors --model_args pretrained=EXPORT_DIR --tasks mavors_image_qa \
        --include_path mavors-work/eval/tasks --output_path out/

The CLI finds ``mavors`` through the ``lmms_eval.models`` entry point declared in
pyproject.toml (:func:`manifest`); the Python API takes an instance:
``simple_evaluate(model=MavorsLmms(pretrained=...), tasks=[...], task_manager=...)``.
Images and videos go through our own processor (PyAV decoding, chunking, dynamic
resolution), so benchmarks see exactly what training saw.
"""
from __future__ import annotations

from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from evaluation.metrics import TRUNCATION_MARK

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}


def manifest():
    """Entry point payload: registers model id ``mavors`` with lmms-eval's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mavors", simple_class_path="evaluation.lmms_model.MavorsLmms")


def _as_bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}


class MavorsLmms(lmms):
    """lmms-eval ``simple`` model over a Mavors export (``save_pretrained`` of model + processor).

    ``mark_truncated``: append ``<|truncated|>`` to outputs cut by the token limit so our held-out
    tasks can measure termination (leave off for third-party benchmarks).
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str = "cpu", dtype: str = "float32",
                 max_new_tokens: int = 128, mark_truncated: bool = False, **kwargs) -> None:
        super().__init__()
        from model import MavorsForConditionalGeneration, MavorsProcessor

        if not Path(pretrained).is_dir():
            raise FileNotFoundError(f"Mavors checkpoint not found: {pretrained}")
        self.model = MavorsForConditionalGeneration.from_pretrained(
            pretrained, torch_dtype=getattr(torch, dtype)).to(device).eval()
        self.processor = MavorsProcessor.from_pretrained(pretrained)
        self.device_name = device
        self.max_new_tokens = int(max_new_tokens)
        self.mark_truncated = _as_bool(mark_truncated)

    # -- inputs ------------------------------------------------------------------------------
    def _conversation(self, context: str, visuals: list, answer: str | None = None) -> tuple[list[dict], list]:
        """LLaVA-style turns with one placeholder per visual (videos by file suffix, everything else an image)."""
        media, tags = [], []
        for v in visuals or []:
            is_video = isinstance(v, (str, Path)) and Path(v).suffix.lower() in VIDEO_SUFFIXES
            tags.append("<video>" if is_video else "<image>")
            media.append(str(v) if isinstance(v, Path) else v)
        prefix = "".join(t + "\n" for t in tags)
        conv = [{"from": "human", "value": prefix + context}]
        if answer is not None:
            conv.append({"from": "gpt", "value": answer})
        return conv, media

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return visuals if isinstance(visuals, list) else [visuals]

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device_name) if torch.is_tensor(v) else v for k, v in batch.items()}

    # -- lmms API ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        outputs = []
        eos = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            conv, media = self._conversation(context, self._visuals(doc_to_visual, task, split, doc_id))
            sample = self.processor.encode(conv, media, add_generation_prompt=True, name=f"{task}/{doc_id}")
            batch = self._to_device(self.processor.collate([sample], padding_side="left"))
            limit = int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
            new = self.model.generate(**batch, max_new_tokens=limit, eos_token_id=eos,
                                      pad_token_id=self.processor.tokenizer.pad_token_id, **sampling)[0].tolist()
            finished = eos in new
            text = self.processor.decode(new[: new.index(eos)] if finished else new)
            for stop in gen_kwargs.get("until", []) or []:
                if stop and stop in text:
                    text, finished = text.split(stop, 1)[0], True
            if self.mark_truncated and not finished and len(new) >= limit:
                text += TRUNCATION_MARK
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return outputs

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of log-probs of the continuation's tokens (the assistant turn's text, without its end
        token) and whether greedy decoding would have produced exactly them."""
        results = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            conv, media = self._conversation(context, self._visuals(doc_to_visual, task, split, doc_id),
                                             answer=str(continuation))
            sample = self.processor.encode(conv, media, name=f"{task}/{doc_id}")
            batch = self._to_device(self.processor.collate([sample]))
            labels = batch.pop("labels")[0]
            logits = self.model(**batch).logits[0]                       # (L, V)
            n = len(self.processor.tokenizer(str(continuation), add_special_tokens=False)["input_ids"])
            positions = (labels != -100).nonzero().flatten()[:n]           # continuation tokens, not <|im_end|>
            logprobs = torch.log_softmax(logits[positions - 1].float(), dim=-1)  # token t predicted at t-1
            targets = labels[positions]
            total = logprobs.gather(1, targets[:, None]).sum().item()
            greedy = bool((logprobs.argmax(-1) == targets).all())
            results.append((total, greedy))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        return self.generate_until(requests)
