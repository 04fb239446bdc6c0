"""Stage specs: one YAML per training stage (``manifests/stages/*.yaml``) loaded into pydantic.

    python -c "from trainers.spec import load_stage; print(load_stage('manifests/stages/stage1.yaml'))"

A spec says where the weights come from (base components or a previous stage's
export), which data it reads, which of the four Mavors modules train and at which
fraction of the base LR, the schedule, the batch arithmetic, the budget, the loss
and the checkpoint cadence. Everything that can be checked without a model is
checked on load, so a bad spec fails before any process starts, naming file and field.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from core.config import ConfigError, ConfigModel, config_path, load_yaml, validate

# Data-flow order of Mavors' submodules: video → IVE → IFA → projector → LLM.
MODULES: tuple[str, ...] = ("ive", "ifa", "projector", "llm")


class ModuleSpec(ConfigModel):
    trainable: bool
    """Whether the module's parameters are updated. Frozen: ``requires_grad=False``, no optimizer state."""
    lr_scale: float | None = Field(None, gt=0)
    """Multiplier on ``optim.lr`` for this module (paper: 0.1 for IVE and IFA, 1 for projector and LLM).
    Only for trainable modules; a scale on a frozen module is an error (it would silently do nothing)."""

    @model_validator(mode="after")
    def _scale_only_when_trainable(self) -> "ModuleSpec":
        if not self.trainable and self.lr_scale is not None:
            raise ValueError("lr_scale is set on a frozen module (trainable: false); remove it or unfreeze")
        return self

    @property
    def scale(self) -> float:
        return 1.0 if self.lr_scale is None else self.lr_scale


class InitSpec(ConfigModel):
    """Where the stage's starting weights come from; exactly one of the three."""

    components: dict[str, str] | None = None
    """Build from separate checkpoints: ``{vision: <SigLIP dir>, llm: <Qwen2.5 dir>}`` (paths as in every config
    file: relative to the spec's folder, ``{work_dir}/...``, or absolute). Stage 1 only. Embedded default: the tiny
    models of ``mavors models make-tiny`` (``{work_dir}/models/...``)."""
    from_stage: str | None = None
    """Name of the previous stage (its spec's ``name``) whose Hugging Face export this stage starts from."""
    pretrained: str | None = None
    """A Mavors checkpoint directory (``save_pretrained`` layout) to start from."""
    config_overrides: dict[str, Any] = {}
    """MavorsConfig fields for a build from ``components`` (paper defaults otherwise: F=16, 3 IFA layers, ...).
    The demo uses the tiny settings (F=4, 2 IFA layers)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "InitSpec":
        given = [k for k in ("components", "from_stage", "pretrained") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of components, from_stage, pretrained (got {given or 'none'})")
        if self.config_overrides and self.components is None:
            raise ValueError("config_overrides only apply to a build from components")
        if self.components is not None:
            missing = {"vision", "llm"} - set(self.components)
            extra = set(self.components) - {"vision", "llm"}
            if missing or extra:
                raise ValueError(f"components needs keys vision and llm (missing {sorted(missing)}, "
                                 f"unknown {sorted(extra)})")
        return self


class SyntheticData(ConfigModel):
    """Random token conversations of a fixed length; for smoke tests and benchmarks, never for real runs."""

    n_samples: int = Field(256, ge=1)
    """Number of distinct samples; the stream cycles over them with a seeded shuffle per epoch."""
    seq_len: int = Field(64, ge=4)
    """Tokens per sample (prompt + answer)."""
    answer_len: int = Field(16, ge=1)
    """Trailing tokens that count as the answer (the only positions with labels); words with an image."""
    image_px: int | None = None
    """With a Mavors model: each sample is a conversation about a random square image of this size, encoded
    by the processor (``seq_len``/``answer_len`` count words then). None: token ids only."""


class BlendSource(ConfigModel):
    """One shard set of a weighted blend (``data.blend``)."""

    shards: str
    """Directory of WebDataset shards, as for ``data.shards``."""
    weight: float = Field(gt=0)
    """Share of the global order: over any run of positions the set gives ``weight / sum of weights`` of the
    samples, within one sample (smooth weighted round-robin, :mod:`trainers.data`). Weights need not add to 1."""
    name: str | None = None
    """Key of the set's position in the saved loader state (default: the ``shards`` text as written). Resuming
    finds each set by its name: keep it when a weight changes, give a new one when the set's shards change."""

    @property
    def key(self) -> str:
        return self.name if self.name is not None else self.shards


class DataSpec(ConfigModel):
    """The stage's training data; exactly one of ``shards``, ``blend``, ``mixture``, ``synthetic``."""

    shards: str | None = None
    """Directory of WebDataset shards (``{work_dir}/...``, relative to the spec's folder, or absolute), as written
    by ``mavors shards build`` or the DPO pair builder; the only data source a rank reads."""
    blend: list[BlendSource] | None = None
    """Several shard sets mixed by weight into one order (e.g. the Stage-2 mixture at 0.9 and a Stage-1.5
    replay share at 0.1): ``[{shards: DIR, weight: W, name: N}, ...]``. Each set runs through its own epochs (a
    small set repeats while a large one is still in its first pass); resuming continues every set where it was.
    Next-token stages only. Embedded default: none; cluster: the paper's Stage-2 mixture is one built set."""
    mixture: str | None = None
    """A mixture manifest (relative to the spec's folder: ``../mixtures/<name>.yaml``, or absolute) whose
    ``mixture_stage`` the stage trains on. The driver resolves it once to the folder that stage's shards were
    built into (the curate flow's result, or the catalog's ``shards`` table: ``trainers.chain.mixture_data``)
    and hands the ranks that folder as ``shards``; ranks never derive it."""
    mixture_stage: str | None = None
    """Which stage of the mixture (``1``, ``1.5``, ``2``, ``dpo``); required with ``mixture``."""
    synthetic: SyntheticData | None = None
    """Random token data (tests, benchmarks)."""
    seed: int = 0
    """Seed of the sample order (shuffle per epoch); resume replays the same order, on any world size."""
    shuffle_window: int = Field(1000, ge=1)
    """Samples shuffled together: the order is shuffled within each run of this many consecutive positions
    (after the shard slices are shuffled). Larger mixes more, at no memory cost in the loader (it reads by
    offset). Embedded default 1000; cluster value 10000."""
    workers: int = Field(0, ge=0)
    """DataLoader worker processes per rank that read and decode micro-batches (the order does not depend on it;
    ``benchmarks/loader.py`` measures the gain). Embedded default 0 (in the rank's process); cluster value 4."""
    slice_size: int = Field(64, ge=1)
    """Consecutive samples of a shard kept together when an epoch's slices are shuffled; with the window this
    sets how far a shard's neighbours spread (Energon's ``max_samples_per_sequence``). Embedded and cluster 64."""
    deal: Literal["strided", "vision"] = "strided"
    """How each step's ``global_size`` samples (one block of the global order, the same whatever the world size)
    go to ranks (:mod:`trainers.data`). ``strided``: rank r takes positions r, r+W, ...; ``vision``: balanced by
    visual tokens planned from the records' media metadata before decoding (longest first to the least-loaded
    rank, equal sample counts), so no rank waits on another's vision tower; the metrics' ``vision_imbalance``
    measures the result. Shard data only (curated shards carry every medium's width/height, which ``vision``
    needs). Embedded default ``strided``; cluster value ``vision``."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "DataSpec":
        given = [k for k in ("shards", "blend", "mixture", "synthetic") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of shards, blend, mixture, synthetic (got {given or 'none'})")
        if (self.mixture is None) != (self.mixture_stage is None):
            raise ValueError("mixture and mixture_stage go together")
        if self.deal == "vision" and self.synthetic is not None:
            raise ValueError("deal vision plans from shard records; synthetic data deals strided")
        if self.blend is not None:
            keys = [b.key for b in self.blend]
            if not keys or len(set(keys)) != len(keys):
                raise ValueError(f"blend needs one or more shard sets with distinct names (got {keys})")
        return self


class ScheduleSpec(ConfigModel):
    kind: Literal["constant", "cosine"] = "constant"
    """``constant`` (paper Stages 1, 1.5) or ``cosine`` decay to ``min_ratio`` of the peak (Stage 2, DPO)."""
    min_ratio: float = Field(1.0, gt=0, le=1)
    """Final LR as a fraction of the peak for ``cosine`` (paper: 0.1). Must be 1 for ``constant``."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup from 1/warmup to 1 over this many optimizer steps (paper: not stated; 0)."""

    @model_validator(mode="after")
    def _ratio_matches_kind(self) -> "ScheduleSpec":
        if self.kind == "constant" and self.min_ratio != 1.0:
            raise ValueError("min_ratio only applies to the cosine schedule")
        return self


class OptimSpec(ConfigModel):
    lr: float = Field(gt=0)
    """Base (peak) learning rate; each module gets ``lr * lr_scale`` (paper: 1e-5)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay on matrices; biases, norms and embeddings' 1-D params never decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip (DeepSpeed ``gradient_clipping``)."""


class BatchSpec(ConfigModel):
    global_size: int = Field(ge=1)
    """Samples per optimizer step over all ranks (paper: 6656 / 3328 / 1664)."""
    micro_size: int = Field(1, ge=1)
    """Samples per rank per forward/backward; accumulation = global / (micro * world). In ``tokens`` and
    ``packed`` modes it is the unit the data plan reads in (a step still consumes ``global_size`` samples, the
    same ones as in ``samples`` mode), and the forward/backward micro-batches are re-formed from them."""
    mode: Literal["samples", "tokens", "packed"] = "samples"
    """How a step's samples on a rank become micro-batches (:mod:`trainers.packing`). ``samples``: ``micro_size``
    samples each, padded to the longest. ``tokens``: samples sorted by length, each micro-batch padded to at most
    ``max_tokens`` LLM tokens (rows x longest row). ``packed``: samples concatenated into one row of at most
    ``max_tokens`` (first-fit decreasing), positions restarting per sample and attention kept inside each sample
    (no padding). Next-token stages only. Embedded default ``samples``; cluster value ``packed``."""
    max_tokens: int | None = Field(None, ge=1)
    """LLM input tokens (visual tokens included) per micro-batch in ``tokens``/``packed`` modes; a sample longer
    than this goes alone into its own micro-batch, with a warning. Cluster value 16384 (the longest video the
    processor makes, 64 chunks x 196 tokens, plus its text, fits one row)."""

    @model_validator(mode="after")
    def _budget_for_token_modes(self) -> "BatchSpec":
        if self.mode == "samples" and self.max_tokens is not None:
            raise ValueError("max_tokens only applies to batch modes tokens and packed")
        if self.mode != "samples" and self.max_tokens is None:
            raise ValueError(f"batch mode {self.mode} needs max_tokens")
        return self

    def accumulation(self, world_size: int, source: str = "spec") -> int:
        """Gradient accumulation steps for ``world_size`` ranks; a clear error when the batch does not divide."""
        per_step = self.micro_size * world_size
        if self.global_size % per_step:
            raise ConfigError(
                f"{source}: field 'batch.global_size': {self.global_size} is not divisible by "
                f"micro_size {self.micro_size} x world size {world_size} = {per_step}")
        return self.global_size // per_step


class BudgetSpec(ConfigModel):
    """How long the stage runs; exactly one of ``samples`` or ``steps``."""

    samples: int | None = Field(None, ge=1)
    """Training samples (paper: 127M / 52M / 19M); steps = ceil(samples / global batch)."""
    steps: int | None = Field(None, ge=1)
    """Optimizer steps."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "BudgetSpec":
        if (self.samples is None) == (self.steps is None):
            raise ValueError("give exactly one of samples, steps")
        return self


class LossSpec(ConfigModel):
    kind: Literal["ntp", "dpo"] = "ntp"
    """``ntp``: next-token loss on answer tokens; ``dpo``: sigmoid DPO loss against a frozen reference."""
    beta: float | None = Field(None, gt=0)
    """DPO temperature beta (TRL default 0.1); only for ``dpo``."""

    @model_validator(mode="after")
    def _beta_for_dpo(self) -> "LossSpec":
        if self.kind == "dpo" and self.beta is None:
            raise ValueError("loss kind dpo needs beta")
        if self.kind == "ntp" and self.beta is not None:
            raise ValueError("beta only applies to loss kind dpo")
        return self


class StageSpec(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Stage name; the export lands in ``<run dir>/<name>/export`` and later stages refer to it."""
    description: str = ""
    """What the stage is for (paper section)."""
    init: InitSpec
    """Starting weights."""
    data: DataSpec
    """Training data."""
    modules: dict[str, ModuleSpec]
    """Per-module ``{trainable, lr_scale}`` for all four of ``ive``, ``ifa``, ``projector``, ``llm``."""
    optim: OptimSpec
    """Optimizer (AdamW) settings."""
    schedule: ScheduleSpec = ScheduleSpec()
    """LR schedule, applied as one multiplicative factor to every group so module ratios hold."""
    batch: BatchSpec
    """Global and per-rank micro batch."""
    budget: BudgetSpec
    """Samples or steps."""
    loss: LossSpec = LossSpec()
    """Training objective."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 on GPU, fp32 on CPU (DeepSpeed's CPU path has no bf16 kernels worth using)."""
    zero_stage: Literal[0, 1, 2] = 2
    """DeepSpeed ZeRO stage (paper: 2)."""
    checkpoint_every: int = Field(1000, ge=1)
    """Save a DeepSpeed checkpoint (model, optimizer, schedule, data position) every N optimizer steps."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many recent DeepSpeed checkpoints to keep."""
    seed: int = 0
    """Torch seed for the stage (dropout etc.)."""
    log_every: int = Field(1, ge=1)
    """Write a metrics line every N optimizer steps."""
    log_sample_ids: bool = False
    """Put each step's sample ids (all ranks', gathered) in its metrics record: an audit of which samples trained
    at which step (resume checks). Embedded and cluster value false (thousands of ids per step)."""

    # Path fields keep their text as written (so the digest an export is checked against holds no absolute path
    # of the checkout or the work dir, and a moved work folder reruns); :meth:`path` resolves one when used.
    _source: Path | None = PrivateAttr(None)

    @field_validator("modules")
    @classmethod
    def _modules_complete(cls, modules: dict[str, ModuleSpec]) -> dict[str, ModuleSpec]:
        unknown = sorted(set(modules) - set(MODULES))
        if unknown:
            raise ValueError(f"unknown module(s) {unknown}; Mavors has {list(MODULES)}")
        missing = [m for m in MODULES if m not in modules]
        if missing:
            raise ValueError(f"missing {missing}; say trainable true/false for each of {list(MODULES)}")
        if not any(m.trainable for m in modules.values()):
            raise ValueError("no module is trainable")
        return modules

    def path(self, value: str, work_dir: str | Path) -> Path:
        """A path field's value made usable (:func:`core.config.config_path`): ``{work_dir}/...`` under
        ``work_dir``, relative to the spec file's folder, or absolute (a spec built in code: as given)."""
        return config_path(value, self._source.parent if self._source else None, work_dir)

    @model_validator(mode="after")
    def _token_modes_for_ntp(self) -> "StageSpec":
        if self.loss.kind == "dpo" and self.batch.mode != "samples":
            raise ValueError(f"batch mode {self.batch.mode} is for next-token stages; DPO pairs use mode samples")
        if self.loss.kind == "dpo" and self.data.blend is not None:
            raise ValueError("data.blend is for next-token stages; a DPO stage trains on one pair set (data.shards)")
        return self

    def digest(self) -> str:
        """sha256 of the canonical JSON (what makes two runs of a stage the same run)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def total_steps(self) -> int:
        """Optimizer steps of the whole stage."""
        if self.budget.steps is not None:
            return self.budget.steps
        return math.ceil(self.budget.samples / self.batch.global_size)

    def lr_of(self, module: str) -> float:
        """Peak LR of a trainable module."""
        return self.optim.lr * self.modules[module].scale

    @property
    def trainable_modules(self) -> list[str]:
        return [m for m in MODULES if self.modules[m].trainable]

    def with_data(self, data: dict[str, Any] | None, source: str | Path = "spec") -> "StageSpec":
        """This spec with its ``data`` section replaced (e.g. the DPO pair set a flow just built), validated
        again; the data seed is kept unless ``data`` names one. The chain's driver and its launched ranks
        both apply the same override, so they train on the same data."""
        if not data:
            return self
        spec = validate(StageSpec, {**self.model_dump(), "data": {"seed": self.data.seed, **data}},
                        f"{source}: data override {data}")
        spec._source = self._source
        return spec


def load_stage(path: str | Path) -> StageSpec:
    """Load and validate one stage YAML; errors name the file and field."""
    spec = load_yaml(path, StageSpec)
    spec._source = Path(path).absolute()
    return spec


def check_world_size(spec: StageSpec, world_size: int, source: str | Path = "spec") -> int:
    """Fail before training when ``world_size`` does not divide the batch; returns the accumulation steps."""
    return spec.batch.accumulation(world_size, str(source))
