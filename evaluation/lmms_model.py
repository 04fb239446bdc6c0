"""Mavors as an lmms-eval model, for its Python API and its CLI.

    lmms-eval --model mavors --model_args pretrained=EXPORT_DIR --tasks mavors_image_qa \
        --include_path mavors-work/eval/tasks --output_path out/

The CLI finds ``mavors`` through the ``lmms_eval.models`` entry point declared in
pyproject.toml (:func:`manifest`); the Python API takes an instance:
``simple_evaluate(model=MavorsLmms(pretrained=...), tasks=[...], task_manager=...)``.
Images and videos go through our own processor (PyAV decoding, chunking, dynamic
resolution) inside the Mavors engine, so benchmarks see exactly what training saw.
"""
from __future__ import annotations

from pathlib import Path

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from curation.sources import VIDEO_EXTENSIONS
from evaluation.metrics import TRUNCATION_MARK
from inference import ChatRequest, EngineConfig, SamplingParams, load_engine
from model.conversation import conversation_to_messages


def manifest():
    """Entry point payload: registers model id ``mavors`` with lmms-eval's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mavors", simple_class_path="evaluation.lmms_model.MavorsLmms")


def _as_bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}


class MavorsLmms(lmms):
    """lmms-eval ``simple`` model over a Mavors export (``save_pretrained`` of model + processor).

    Generation and log-likelihood go through the Mavors engine (:class:`inference.mavors_engine.MavorsEngine`),
    the one inference path of our checkpoints, one request at a time (no padding, so a score does not depend
    on its batch). ``llm_backend``: where the language model runs (``transformers``, or ``vllm`` on a cluster).
    ``mark_truncated``: append ``<|truncated|>`` to outputs cut by the token limit so our held-out tasks can
    measure termination (leave off for third-party benchmarks).
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str = "cpu", dtype: str = "float32", max_new_tokens: int = 128,
                 mark_truncated: bool = False, llm_backend: str = "transformers", **kwargs) -> None:
        super().__init__()
        self.engine = load_engine(EngineConfig(
            backend="mavors", model_path=Path(pretrained), device=device, dtype=dtype, llm_backend=llm_backend,
            modalities=["text", "image", "video"], batch_size=1))
        self.max_new_tokens = int(max_new_tokens)
        self.mark_truncated = _as_bool(mark_truncated)

    # -- inputs ------------------------------------------------------------------------------
    def _request(self, name: str, context: str, visuals: list, answer: str | None = None) -> ChatRequest:
        """LLaVA-style turns with one placeholder per visual (videos by file suffix, everything else an image),
        rendered as the processor renders catalog conversations."""
        kinds = ["video" if isinstance(v, (str, Path)) and Path(v).suffix.lower() in VIDEO_EXTENSIONS else "image"
                 for v in visuals]
        conv = [{"from": "human", "value": "".join(f"<{k}>\n" for k in kinds) + context}]
        if answer is not None:
            conv.append({"from": "gpt", "value": answer})
        media = [str(v) if isinstance(v, Path) else v for v in visuals]
        return ChatRequest(name, conversation_to_messages(conv, media, name))

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return visuals if isinstance(visuals, list) else [visuals]

    def _sampling(self, gen_kwargs: dict) -> SamplingParams:
        until = gen_kwargs.get("until") or []
        return SamplingParams(temperature=float(gen_kwargs.get("temperature") or 0),
                              top_p=float(gen_kwargs.get("top_p") or 1.0),
                              max_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                              stop=tuple(s for s in ([until] if isinstance(until, str) else until) if s))

    # -- lmms API ----------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        outputs = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            request = self._request(f"{task}/{doc_id}", context, self._visuals(doc_to_visual, task, split, doc_id))
            [result] = self.engine.generate([request], self._sampling(gen_kwargs))
            completion = result.completions[0]
            text = completion.text
            if self.mark_truncated and completion.finish_reason == "length":
                text += TRUNCATION_MARK
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return outputs

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of log-probs of the continuation's tokens (the assistant turn's text, without its end
        token) and whether greedy decoding would have produced exactly them."""
        results = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            request = self._request(f"{task}/{doc_id}", context, self._visuals(doc_to_visual, task, split, doc_id),
                                    answer=str(continuation))
            [score] = self.engine.score([request])
            scored = [(lp, g) for lp, g, m in zip(score.logprobs, score.greedy, score.mask) if m]
            results.append((sum(lp for lp, _ in scored), all(g for _, g in scored)))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        return self.generate_until(requests)
