"""Engine configuration: which backend, which local checkpoint, how it is placed and batched.

Shipped examples live in ``manifests/engines/*.yaml`` (tiny local models for the
embedded demo, the paper's captioners for a GPU cluster). Load one with
``load_engine_config(path)``; pass it to :func:`inference.load_engine`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from core.config import ConfigModel, ConfigPath, load_yaml

Backend = Literal["transformers", "vllm", "mavors"]
Modality = Literal["text", "image", "video"]


class EngineConfig(ConfigModel):
    backend: Backend = "transformers"
    """``transformers`` (CPU or GPU, batched; tests and the embedded demo), ``vllm`` (``vllm.LLM``; the CPU
    build here, the CUDA build on clusters), or ``mavors`` (our checkpoints: vision in torch, LLM in vLLM).
    Cluster: ``vllm``."""
    model_path: ConfigPath
    """Local checkpoint directory (Hugging Face layout, processor/tokenizer beside the weights). Never a
    hub id: nothing is downloaded. Relative: to the YAML's folder; ``{work_dir}/models/...``: the tiny models
    ``mavors models make-tiny`` wrote under the work dir. Cluster: a path on the shared filesystem."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and activations. Scoring compares backends only in float32. Cluster: ``bfloat16``."""
    device: str = "cpu"
    """Torch device of the transformers backend and of the Mavors vision part (``cpu``, ``cuda``,
    ``cuda:1``). vLLM places itself. Cluster: ``cuda``."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one replica spans (vLLM ``tensor_parallel_size``); on a CUDA ``device`` also the GPUs each Ray
    actor of an engine pool asks for (:attr:`gpus_per_replica`).
    Cluster: 4 for a 72B model on 80 GB GPUs, 1 for small ones."""
    max_model_len: int = Field(4096, ge=16)
    """Longest prompt + completion in tokens; longer prompts are refused per request."""
    modalities: list[Modality] = ["text"]
    """Inputs the model accepts; a request carrying another one is refused before it reaches the model."""
    trust_remote_code: bool = False
    """Run Python code shipped inside the checkpoint (InternVL, Tarsier need it). Off unless said so."""
    batch_size: int = Field(8, ge=1)
    """Requests per forward pass (transformers) or per ``LLM.generate`` call (vLLM)."""
    num_replicas: int = Field(1, ge=1)
    """Engine actors in a Ray actor pool (one engine per actor). Cluster: GPUs / tensor_parallel_size."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """vLLM: share of each GPU's memory it may take (weights + KV cache)."""
    kv_cache_gb: int = Field(1, ge=1)
    """vLLM CPU build: KV cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``); ignored on GPUs."""
    max_images_per_prompt: int = Field(1, ge=0)
    """vLLM ``limit_mm_per_prompt`` for images (0: none)."""
    max_videos_per_prompt: int = Field(1, ge=0)
    """vLLM ``limit_mm_per_prompt`` for videos (0: none)."""
    video_frames: int = Field(8, ge=1)
    """Frames sampled uniformly from a video file before it reaches the model. Cluster: 16–64."""
    enforce_eager: bool = True
    """vLLM: skip CUDA graph capture (start-up time vs speed). Cluster: False."""
    torch_threads: int | None = Field(None, ge=1)
    """Torch intra-op threads for the transformers backend and the Mavors vision part (process-wide
    ``torch.set_num_threads`` while the engine lives; ``close`` restores the previous count). None: unchanged.
    On a shared, oversubscribed CPU, 1 avoids OpenMP spin-waits (measured 40x faster here under load); Ray
    actors already get one thread per CPU they hold."""
    llm_backend: Literal["vllm", "transformers"] = "vllm"
    """Backend ``mavors`` only: where the language model runs (vision always runs in torch). ``vllm``: fed
    with prompt embeddings; ``transformers``: HF generate on the same embeddings (no vLLM needed)."""
    seed: int = 0
    """Engine-level seed (vLLM ``seed``, torch seed of the transformers backend)."""

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one replica (one Ray actor of an engine pool) asks for: ``tensor_parallel_size`` on a CUDA
        ``device``, none on CPU (the vLLM CPU build and CPU torch must not wait for a GPU that never comes)."""
        return self.tensor_parallel_size if self.device.startswith("cuda") else 0

    @field_validator("modalities")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("modalities listed twice")
        return value


def load_engine_config(path: str | Path, work_dir: str | Path | None = None) -> EngineConfig:
    """An :class:`EngineConfig` from YAML; a relative ``model_path`` is relative to the file's folder,
    ``{work_dir}/...`` to ``work_dir`` (the settings' work dir)."""
    return load_yaml(path, EngineConfig, work_dir)
