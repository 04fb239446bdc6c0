"""Configuration of a DPO pair build: sampling per domain, judges, scoring, and where pairs go.

One :class:`DpoConfig` describes how pairs are made; together with the policy
checkpoint's content hash it names the pair set (``pair_set_id``), so changing any
field here, or the checkpoint, builds a new set beside the old ones.

    python -c "from curation.preference.config import DpoConfig; print(DpoConfig().model_dump_json(indent=1))"
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config import ConfigModel, ConfigPath
from inference import EngineConfig, SamplingParams


class Sampling(ConfigModel):
    """Sampling of one generation call (maps onto the engine's ``SamplingParams``)."""

    temperature: float = Field(0.7, ge=0)
    """Softmax temperature; 0 is greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_tokens: int = Field(256, ge=1)
    """Token limit; a completion that hits it is ``finish_reason=length`` (not terminated)."""
    n: int = Field(1, ge=1)
    """Completions per input, drawn in one call."""
    stop: list[str] = []
    """Extra stop strings (EOS always stops). Empty for real models."""

    def params(self, seed: int) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              n=self.n, seed=seed, stop=tuple(self.stop))


class JudgeConfig(ConfigModel):
    """The judge model: decides open-ended QA correctness and rates captions."""

    engine: EngineConfig | None = None
    """Judge checkpoint and backend. None: the policy model judges itself (embedded demo only; a
    production build points this at a strong instruct model). Cluster: a 70B instruct model on vLLM."""
    mode: Literal["generate", "logprob"] = "generate"
    """``generate``: the judge answers in words, the answer is parsed (unparseable: judge failure, no pair).
    ``logprob``: the judge's log-probabilities of each allowed answer are compared (always decides;
    G-Eval-style expected rating for scores)."""
    max_tokens: int = Field(8, ge=1)
    """Tokens a ``generate`` judge may use for its verdict or rating."""
    rating_scale: int = Field(5, ge=2, le=10)
    """Caption ratings are integers 1..rating_scale, normalized to [0, 1]."""
    see_media: bool = True
    """Pass the image/video to the judge with the caption (needs a multimodal judge)."""


class QAConfig(ConfigModel):
    """Open-ended QA (paper App. A 1): a correct, well-sized, terminated answer vs a worse one."""

    enabled: bool = True
    """Build this domain."""
    positive: Sampling = Sampling(temperature=0.3, n=2)
    """Sampling of positive candidates (low temperature)."""
    negative: Sampling = Sampling(temperature=1.2, n=4)
    """Sampling of negative candidates from the same input at a higher temperature."""
    min_words: int = Field(3, ge=1)
    """A positive has at least this many words (the Stage-2 model answers too briefly)."""
    max_words: int = Field(200, ge=1)
    """A positive has at most this many words."""
    brief_words: int = Field(2, ge=0)
    """A negative candidate with at most this many words is "too brief" (a valid negative even if correct)."""
    short_reference_words: int = Field(3, ge=1)
    """References with at most this many words are judged by normalized match; longer ones by the judge model."""
    max_pairs: int = Field(1, ge=1)
    """Pairs per question (distinct positives and negatives are used at most once each)."""

    @model_validator(mode="after")
    def _bounds(self) -> QAConfig:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} > max_words {self.max_words}")
        if self.negative.temperature <= self.positive.temperature:
            raise ValueError("negative.temperature must be higher than positive.temperature (paper App. A)")
        return self


class Scorer(ConfigModel):
    """One term of the caption score: ``weight * value``; penalties take negative weights."""

    name: Literal["judge", "coverage", "non_termination", "repetition"]
    """``judge``: judge-model rating in [0,1]; ``coverage``: share of the reference caption's content words
    the candidate mentions; ``non_termination``: 1 when cut by the token limit; ``repetition``: share of
    repeated word 3-grams."""
    weight: float
    """Multiplier (penalties negative)."""


class ImageCaptionConfig(ConfigModel):
    """Image captions (paper App. A 2): N high-temperature candidates, ranked, higher vs lower."""

    enabled: bool = True
    """Build this domain."""
    prompt: str = "Describe this image in detail."
    """Instruction shown with the image."""
    sampling: Sampling = Sampling(temperature=1.0, n=6, max_tokens=256)
    """Candidate sampling (``n`` candidates per image in one call)."""
    scorers: list[Scorer] = [Scorer(name="judge", weight=1.0), Scorer(name="coverage", weight=1.0),
                             Scorer(name="non_termination", weight=-1.0), Scorer(name="repetition", weight=-1.0)]
    """Score = sum of weighted terms."""
    min_margin: float = Field(0.2, ge=0)
    """A pair needs chosen score >= rejected score + min_margin."""
    max_pairs: int = Field(1, ge=1)
    """Pairs per image: best vs worst, second best vs second worst, ... while the margin holds."""

    @model_validator(mode="after")
    def _scorers(self) -> ImageCaptionConfig:
        names = [s.name for s in self.scorers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"scorers must be non-empty and distinct, got {names}")
        return self


class VideoCaptionConfig(ConfigModel):
    """Video captions (paper App. A 3): caption of the video vs caption of its shuffled-segment copy."""

    enabled: bool = True
    """Build this domain."""
    prompt: str = "Describe this video in detail."
    """Instruction shown with the video."""
    sampling: Sampling = Sampling(temperature=0.3, n=1)
    """Caption sampling, the same parameters for the original and the shuffled video."""
    seeds: Literal["independent", "shared"] = "independent"
    """``independent`` (the paper's recipe): each video's caption is its own sample from the policy.
    ``shared``: both captions draw the same random numbers, so they differ only where the policy's output
    depends on the frame order (a cleaner order-only signal, fewer pairs: an order-blind policy gives
    identical captions, refused as ``shuffled_identical_to_original``)."""
    n_segments: int = Field(4, ge=2)
    """Equal-duration segments the video is cut into (four in the paper)."""
    min_frames_per_segment: int = Field(4, ge=1)
    """Shorter videos are refused (``video_too_short``)."""
    require_terminated: bool = True
    """The chosen caption must end by EOS (the Stage-2 model fails to stop on descriptions)."""
    min_words: int = Field(3, ge=1)
    """Captions shorter than this are not used."""


class DpoConfig(ConfigModel):
    """A DPO pair build: the three domains, judge, engine placement, output."""

    seed: int = 0
    """Base seed; each input's sampling seed and shuffle permutation derive from (seed, sample id)."""
    backend: Literal["auto", "transformers", "vllm", "mavors"] = "auto"
    """Policy engine backend. ``auto``: ``mavors`` for a checkpoint whose config ``model_type`` is mavors,
    else ``auto_vlm_backend``."""
    auto_vlm_backend: Literal["transformers", "vllm"] = "transformers"
    """Backend ``auto`` picks for a non-Mavors VLM checkpoint. Cluster: ``vllm``."""
    engine: dict = {}
    """Extra :class:`EngineConfig` fields for the policy (dtype, device, batch_size, video_frames, ...)."""
    judge: JudgeConfig = JudgeConfig()
    """Judge model."""
    qa: QAConfig = QAConfig()
    """Open-ended QA domain."""
    image_caption: ImageCaptionConfig = ImageCaptionConfig()
    """Image-caption domain."""
    video_caption: VideoCaptionConfig = VideoCaptionConfig()
    """Video-caption domain."""
    batch_inputs: int = Field(8, ge=1)
    """Inputs generated per engine call; each batch is written in one catalog transaction."""
    max_pairs_per_shard: int = Field(1000, ge=1)
    """WebDataset shard size in pairs."""
    output_dir: ConfigPath | None = None
    """Where shards and shuffled videos go (relative: to the config file's folder); default ``<work_dir>/dpo``."""

    @model_validator(mode="after")
    def _engine_keys(self) -> DpoConfig:
        bad = set(self.engine) & {"backend", "model_path"}
        unknown = set(self.engine) - set(EngineConfig.model_fields)
        if bad or unknown:
            raise ValueError(f"engine: {sorted(bad)} come from the checkpoint, {sorted(unknown)} are not "
                             "EngineConfig fields")
        return self
