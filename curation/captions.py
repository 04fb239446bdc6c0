"""Caption synthesis: several VLMs describe each media file, a reasoning LLM merges their captions.

    mavors captions run manifests/captioners/demo.yaml --source kinetics_like

Paper, Appendix A: for sources without good captions (Kinetics' bare action
labels, ...), Qwen2VL-72B, InternVL2.5-78B-MPO and Tarsier-34B (videos only)
caption each media file and DeepSeek-R1-Distill-Llama-70B merges the captions,
resolving disagreements in its chain of thought. Here:

1. **Raw captions** (``captions`` table), keyed by (media hash, captioner, prompt
   hash, sampling parameters): a rerun finds every key present and runs no
   engine; a captioner added to the roster computes only its own captions.
2. **Quality gates** on every output, with the reason stored: ``empty``,
   ``truncated`` (finish reason ``length``), ``repetition`` (a span repeated many
   times in a row), ``wrong_language``. Rejected captions stay in the table (so
   they are not recomputed) and are never merged.
3. **Merge** (``merged_captions``): the merger's prompt lists every accepted raw
   caption of the media; its ``<think>…</think>`` is cut from the caption and
   kept in ``reasoning``. A merge is keyed by the raw captions it saw, so a new
   raw caption triggers a new merge.
4. **Caption samples**: each accepted merge becomes (or updates) the sample
   ``<source>+synth/<item>`` in ``samples`` (task ``caption``), linked to its merge
   through ``caption_samples``.

Execution is :func:`inference.pool.run_stages` (Ray Data, or in-process): a CPU
stage decodes media (frames sampled here, never in the engine actors), then one
actor pool per captioner holds one engine per actor (``engine.num_replicas``
actors, ``engine.gpus_per_replica`` GPUs each). Workers return rows; the driver
writes each finished batch in one transaction.
An engine error on an item is retried with exponential backoff, then the item
is quarantined (stage ``captions``) and skipped; the next run retries it.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from core.catalog import Catalog
from core.config import ConfigModel, config_path, read_yaml, validate
from inference import ChatRequest, EngineConfig, GenerationResult, SamplingParams, load_engine, load_engine_config
from inference.chat import media_payload, payload_media
from inference.isolation import error_text, per_request
from inference.pool import EngineStage, MapStage, Stage, run_stages

STAGE = "captions"
Kind = Literal["image", "video"]
PLACEHOLDER = {"image": "<image>", "video": "<video>"}
# Function words of English: a caption in English uses some of them (the language gate's evidence).
_ENGLISH = frozenset(
    "a an the and or of in on at to with from by is are was were it its this that there these those as "
    "while then after before into over under across for not no which who what where when".split())


# -- configuration -------------------------------------------------------------------------------

class SamplingConfig(ConfigModel):
    temperature: float = Field(0.0, ge=0)
    """0: greedy. Cluster: 0.7 for captioners (varied wording), 0.6 for the R1 merger (its recommended value)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_tokens: int = Field(512, ge=1)
    """Longest output; an output that hits it is rejected as ``truncated``. Cluster: 1024 (merger: 4096,
    the reasoning counts)."""
    seed: int | None = 0
    """Per-request seed: the same media gets the same caption on every run and backend replica."""
    stop: list[str] = []
    """Strings that end the output early (not included in it)."""

    def params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=self.seed, stop=tuple(self.stop))


class GateConfig(ConfigModel):
    empty: bool = True
    """Reject an output with no visible text (after reasoning is removed)."""
    truncated: bool = True
    """Reject an output cut by ``max_tokens`` (finish reason ``length``)."""
    max_repeats: int | None = Field(6, ge=2)
    """Reject an output in which one span (1–32 characters) occurs this many times in a row. None: off."""
    language: Literal["en"] | None = "en"
    """Expected language: English needs ≥ 90 % ASCII among its letters and, from 5 words on, at least one
    English function word (a heuristic that needs no model; a fastText LID can replace it). None: off."""


class CaptionerConfig(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Identity of the model in the ``captions`` key. Rename it when the weights or the media preparation
    (``engine.video_frames``) change: neither is part of the key, so old captions would be reused."""
    engine: EngineConfig
    """Backend and checkpoint (``engine.modalities`` must include the media kinds below)."""
    media: list[Kind] = ["image", "video"]
    """Kinds of media this captioner describes (Tarsier: ``[video]``)."""
    prompts: dict[Kind, str] = {}
    """Per-kind prompt overriding the roster's ``prompts``."""
    sampling: SamplingConfig = SamplingConfig()

    @model_validator(mode="after")
    def _engine_takes_media(self) -> CaptionerConfig:
        missing = [k for k in self.media if k not in self.engine.modalities]
        if missing:
            raise ValueError(f"captioner {self.name}: media {missing} not in engine.modalities")
        return self


class MergerConfig(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Identity of the merger model in the ``merged_captions`` key."""
    engine: EngineConfig
    """A text LLM (a reasoning model on the cluster)."""
    prompt: str = (
        "Below are {n} descriptions of the same {kind}, written by different models. Some may contain "
        "mistakes. Write one detailed, accurate description of the {kind} that keeps what the descriptions "
        "agree on and resolves their disagreements.\n\n{captions}")
    """Merger prompt: ``{kind}``, ``{n}`` and ``{captions}`` (every accepted raw caption, numbered)."""
    reasoning_start: str = "<think>"
    """Opening tag of the merger's reasoning (DeepSeek-R1: ``<think>``)."""
    reasoning_end: str = "</think>"
    """Closing tag: everything before it is reasoning, kept in ``merged_captions.reasoning``."""
    sampling: SamplingConfig = SamplingConfig(max_tokens=1024)


class RosterConfig(ConfigModel):
    captioners: list[CaptionerConfig] = Field(min_length=1)
    """The VLMs that describe each media file. Cluster: Qwen2VL-72B, InternVL2.5-78B-MPO, Tarsier-34B (video)."""
    merger: MergerConfig
    """The LLM that merges them. Cluster: DeepSeek-R1-Distill-Llama-70B."""
    prompts: dict[Kind, str] = {"image": "Describe this image in detail.",
                                "video": "Describe this video in detail, including how things move and change."}
    """Captioning prompt per media kind (text after the media)."""
    sources: list[str] = []
    """Sources whose media get captions when no ``--source`` is given (label-only or poorly captioned)."""
    sample_prompt: str = "Describe this {kind} in detail."
    """Human turn of the caption samples written to ``samples`` (the answer is the merged caption)."""
    gates: GateConfig = GateConfig()
    """Quality gates applied to raw and merged captions."""
    rows_per_commit: int = Field(8, ge=1)
    """Media per Ray batch; each finished batch is written in one catalog transaction."""
    max_retries: int = Field(2, ge=0)
    """Retries of an item whose engine call failed, before it is quarantined."""
    retry_backoff_s: float = Field(0.5, ge=0)
    """First retry delay; doubles at each retry."""
    decode_cpus: float = Field(0.25, gt=0)
    """CPUs per media-decoding task. Cluster: 1."""
    engine_cpus: float = Field(0.5, gt=0)
    """CPUs reserved by each engine actor (fractional locally so decoding and several pools fit 2 cores)."""

    @model_validator(mode="after")
    def _unique_names(self) -> RosterConfig:
        names = [c.name for c in self.captioners]
        if len(set(names)) != len(names):
            raise ValueError(f"captioner names repeat: {names}")
        return self

    def prompt(self, captioner: CaptionerConfig, kind: str) -> str:
        return captioner.prompts.get(kind) or self.prompts[kind]


def load_roster(path: str | Path, work_dir: str | Path | None = None) -> RosterConfig:
    """A roster YAML; an ``engine:`` given as a string is an engine YAML path relative to the roster file (whose
    own paths are relative to it, as in every config file); ``work_dir`` is what ``{work_dir}`` means."""
    path = Path(path)
    data = read_yaml(path) or {}
    entries = [*data.get("captioners", []), data.get("merger")]
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("engine"), str):
            entry["engine"] = load_engine_config(config_path(entry["engine"], path.parent), work_dir)
    return validate(RosterConfig, data, path, base=path.absolute().parent, work_dir=work_dir)


# -- keys, gates, reasoning ----------------------------------------------------------------------

def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def caption_key(media_hash: str, captioner: str, prompt: str, sampling: SamplingParams) -> str:
    """The ``captions`` primary key: what was asked of which model about which media."""
    return sha256(json.dumps([media_hash, captioner, sha256(prompt), sampling.as_dict()], sort_keys=True))


def merge_key(media_hash: str, merger: str, prompt_template: str, sampling: SamplingParams,
              raw_ids: list[str]) -> str:
    return sha256(json.dumps([media_hash, merger, sha256(prompt_template), sampling.as_dict(), raw_ids],
                             sort_keys=True))


def split_reasoning(text: str, start: str = "<think>", end: str = "</think>") -> tuple[str, str | None]:
    """``(answer, reasoning)``. Text before ``end`` is reasoning (R1 templates open ``<think>`` in the
    prompt, so only the closing tag may appear); an unclosed ``start`` leaves no answer."""
    if end in text:
        reasoning, answer = text.split(end, 1)
        return answer.strip(), reasoning.replace(start, "", 1).strip()
    if start in text:
        before, reasoning = text.split(start, 1)
        return before.strip(), reasoning.strip()
    return text.strip(), None


def gate(text: str, finish_reason: str, gates: GateConfig) -> str | None:
    """The first quality gate ``text`` fails, or None."""
    if gates.empty and not text.strip():
        return "empty"
    if gates.truncated and finish_reason == "length":
        return "truncated"
    if gates.max_repeats and re.search(r"(.{1,32}?)\1{%d,}" % (gates.max_repeats - 1), text, re.S):
        return "repetition"
    if gates.language == "en" and not looks_english(text):
        return "wrong_language"
    return None


def looks_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if letters and sum(c.isascii() for c in letters) / len(letters) < 0.9:
        return False
    words = re.findall(r"[a-z]+", text.lower())
    return len(words) < 5 or any(w in _ENGLISH for w in words)


def merger_prompt(merger: MergerConfig, kind: str, captions: list[str]) -> str:
    listed = "\n\n".join(f"Description {i}:\n{c}" for i, c in enumerate(captions, 1))
    return merger.prompt.format(kind=kind, n=len(captions), captions=listed)


# -- engine calls with retries -------------------------------------------------------------------

EngineFactory = Callable[[EngineConfig], Any]


def generate_with_retries(engine, requests: list[ChatRequest], params: SamplingParams, *, max_retries: int,
                          backoff_s: float) -> list[GenerationResult | str]:
    """Results in request order; an item that keeps failing alone (``inference.isolation.per_request``, retried
    with backoff) gets its error text instead."""
    results = per_request(lambda batch: engine.generate(batch, params), requests, retries=max_retries,
                          backoff_s=backoff_s)
    return [error_text(r) if isinstance(r, Exception) else r for r in results]


# -- pool stages (inference.pool: Ray Data or in-process) ---------------------------------------

def decode_media(batch: dict[str, Any], video_frames: int = 8) -> dict[str, Any]:
    """Map stage (CPU): each media file to :func:`inference.chat.media_payload` bytes; errors to text."""
    payloads, errors, seconds = [], [], []
    for kind, path in zip(batch["kind"], batch["storage_path"]):
        t0 = time.perf_counter()
        try:
            payloads.append(media_payload(kind, path, video_frames))
            errors.append("")
        except Exception as e:  # noqa: BLE001 - quarantined by the driver
            payloads.append(b"")
            errors.append(f"{type(e).__name__}: {e}")
        seconds.append(time.perf_counter() - t0)
    return {**batch, "media": payloads, "decode_error": errors, "decode_s": seconds}


class CaptionStage:
    """Engine stage of :func:`inference.pool.run_stages`: one captioner engine, captions the rows that need it.

    Adds columns ``raw::<name>`` (JSON of the result, "" when the row did not need this captioner)
    and ``seconds::<name>`` (engine time of the batch, spread evenly over its rows).
    """

    def __init__(self, roster_json: str, name: str, factory: EngineFactory = load_engine):
        self.roster = RosterConfig.model_validate_json(roster_json)
        self.captioner = next(c for c in self.roster.captioners if c.name == name)
        self.engine = factory(self.captioner.engine)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        c = self.captioner
        params = c.sampling.params()
        todo = [i for i, (needs, err) in enumerate(zip(batch["needs"], batch["decode_error"]))
                if c.name in json.loads(needs) and not err]
        out = [""] * len(batch["kind"])
        t0 = time.perf_counter()
        for start in range(0, len(todo), c.engine.batch_size):
            rows = todo[start:start + c.engine.batch_size]
            requests = [ChatRequest(batch["media_hash"][i], [{"role": "user", "content": [
                {"type": batch["kind"][i], batch["kind"][i]: payload_media(batch["kind"][i], batch["media"][i])},
                {"type": "text", "text": self.roster.prompt(c, batch["kind"][i])}]}]) for i in rows]
            results = generate_with_retries(self.engine, requests, params, max_retries=self.roster.max_retries,
                                            backoff_s=self.roster.retry_backoff_s)
            for i, result in zip(rows, results):
                out[i] = json.dumps(result_row(result))
        spent = (time.perf_counter() - t0) / max(1, len(todo))
        return {**batch, f"raw::{c.name}": out,
                f"seconds::{c.name}": [spent if o else 0.0 for o in out]}


class MergeStage:
    """Engine stage of :func:`inference.pool.run_stages`: one merger engine, one merged caption per row's prompt."""

    def __init__(self, roster_json: str, factory: EngineFactory = load_engine):
        self.roster = RosterConfig.model_validate_json(roster_json)
        self.engine = factory(self.roster.merger.engine)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        m = self.roster.merger
        t0 = time.perf_counter()
        out = []
        for start in range(0, len(batch["media_hash"]), m.engine.batch_size):
            hashes = list(batch["media_hash"][start:start + m.engine.batch_size])
            prompts = list(batch["prompt"][start:start + m.engine.batch_size])
            requests = [ChatRequest(h, [{"role": "user", "content": p}]) for h, p in zip(hashes, prompts)]
            results = generate_with_retries(self.engine, requests, m.sampling.params(),
                                            max_retries=self.roster.max_retries, backoff_s=self.roster.retry_backoff_s)
            out.extend(json.dumps(result_row(r)) for r in results)
        spent = (time.perf_counter() - t0) / max(1, len(out))
        return {**batch, "merged": out, "seconds::merge": [spent] * len(out)}


def result_row(result: GenerationResult | str) -> dict[str, Any]:
    if isinstance(result, str):
        return {"error": result}
    c = result.completions[0]
    return {"text": c.text, "finish_reason": c.finish_reason, "n_tokens": c.n_tokens,
            "prompt_tokens": result.prompt_tokens}


# -- planning: what is new -----------------------------------------------------------------------

def media_to_caption(cat: Catalog, sources: list[str]) -> list[dict[str, Any]]:
    """One row per distinct media of single-media samples of ``sources``: hash, kind, path, source, item."""
    known = {r["name"] for r in cat.query("SELECT name FROM sources")}
    missing = [s for s in sources if s not in known]
    if missing:
        raise ValueError(f"sources not in the catalog: {missing} (ingest them first)")
    rows = cat.query(
        "SELECT s.source, min(s.item) AS item, min(s.sample_id) AS sample_id, m.media_hash, m.kind, "
        "       m.storage_path, any_value(s.stage_hints) AS stage_hints "
        "FROM samples s JOIN media m ON m.media_hash = s.media_hashes[1] "
        "WHERE s.source IN (SELECT unnest(?::TEXT[])) AND len(s.media_hashes) = 1 "
        "GROUP BY s.source, m.media_hash, m.kind, m.storage_path ORDER BY s.source, item",
        [sources])
    return [{**r, "storage_path": str(cat.resolved(r["storage_path"]))} for r in rows]


@dataclass
class StageStats:
    """Per-stage counters: items through it, failures, and busy seconds (decode or engine time)."""

    items: int = 0
    failures: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        rate = self.items / self.seconds if self.seconds else 0.0
        return {"items": self.items, "failures": self.failures, "seconds": round(self.seconds, 3),
                "items_per_s": round(rate, 3)}


@dataclass
class CaptionReport:
    raw_new: int = 0
    raw_rejected: int = 0
    merged_new: int = 0
    merged_rejected: int = 0
    samples_written: int = 0
    quarantined: int = 0
    stages: dict[str, StageStats] = field(default_factory=lambda: defaultdict(StageStats))
    wall_s: dict[str, float] = field(default_factory=dict)  # wall time of the raw and merge passes

    def as_dict(self) -> dict[str, Any]:
        return {"raw_new": self.raw_new, "raw_rejected": self.raw_rejected, "merged_new": self.merged_new,
                "merged_rejected": self.merged_rejected, "samples_written": self.samples_written,
                "quarantined": self.quarantined, "stages": {k: v.as_dict() for k, v in self.stages.items()},
                "wall_s": self.wall_s}


# -- the run -------------------------------------------------------------------------------------

def run_captions(cat: Catalog, roster: RosterConfig, sources: list[str] | None = None, *, use_ray: bool = True,
                 run_id: str | None = None, factory: EngineFactory = load_engine, ray_settings=None) -> CaptionReport:
    """Caption, gate, merge and publish every media of ``sources`` (default: the roster's); returns counts.

    Every checkpoint path is checked before any work; raw captions first (one Ray Data pass for all
    captioners), then merges of media whose accepted raw captions changed.
    """
    from inference.loader import check_model_path

    for engine in [c.engine for c in roster.captioners] + [roster.merger.engine]:
        check_model_path(Path(engine.model_path))
    sources = sources or roster.sources
    if not sources:
        raise ValueError("no source to caption: give --source or list sources in the roster")
    report = CaptionReport()
    media = media_to_caption(cat, sources)
    t0 = time.perf_counter()
    _raw_pass(cat, roster, media, report, use_ray, run_id, factory, ray_settings)
    t1 = time.perf_counter()
    _merge_pass(cat, roster, media, report, use_ray, run_id, factory, ray_settings)
    report.wall_s = {"raw": round(t1 - t0, 3), "merge": round(time.perf_counter() - t1, 3)}
    return report


def _raw_pass(cat, roster, media, report, use_ray, run_id, factory, ray_settings) -> None:
    done = {r["caption_id"] for r in cat.query(
        "SELECT caption_id FROM captions WHERE media_hash IN (SELECT unnest(?::TEXT[]))",
        [[m["media_hash"] for m in media]])}
    work = []
    for m in media:
        needs = [c.name for c in roster.captioners if m["kind"] in c.media
                 and caption_key(m["media_hash"], c.name, roster.prompt(c, m["kind"]), c.sampling.params()) not in done]
        if needs:
            work.append({"media_hash": m["media_hash"], "kind": m["kind"], "storage_path": m["storage_path"],
                         "source": m["source"], "item": m["item"], "needs": json.dumps(needs)})
    if not work:
        return
    names = sorted({n for w in work for n in json.loads(w["needs"])})
    by_name, roster_json = {c.name: c for c in roster.captioners}, roster.model_dump_json()
    # frames are decoded once for every captioner, at the most any of them asks for
    frames = max(c.engine.video_frames for c in roster.captioners)
    stages: list[Stage] = [MapStage(decode_media, {"video_frames": frames}, num_cpus=roster.decode_cpus)] + [
        EngineStage(CaptionStage, by_name[n].engine, (roster_json,), {"name": n, "factory": factory},
                    num_cpus=roster.engine_cpus) for n in names]
    for batch in run_stages(work, stages, batch_size=roster.rows_per_commit, use_ray=use_ray,
                            ray_settings=ray_settings, label=f"captions ({', '.join(names)})"):
        _write_raw(cat, roster, batch, report, run_id)


def _write_raw(cat: Catalog, roster: RosterConfig, batch: list[dict[str, Any]], report: CaptionReport,
               run_id: str | None) -> None:
    rows, refused = [], []
    by_name = {c.name: c for c in roster.captioners}
    for b in batch:
        report.stages["decode"].items += 1
        report.stages["decode"].seconds += b["decode_s"]
        if b["decode_error"]:
            report.stages["decode"].failures += 1
            refused.append({"source": b["source"], "item": b["item"], "reason": "undecodable_media",
                            "detail": b["decode_error"], "stage": STAGE, "run_id": run_id})
            continue
        for name in json.loads(b["needs"]):
            c, stats = by_name[name], report.stages[f"caption:{name}"]
            raw = json.loads(b[f"raw::{name}"])
            stats.items += 1
            stats.seconds += b[f"seconds::{name}"]
            if "error" in raw:
                stats.failures += 1
                refused.append({"source": b["source"], "item": b["item"], "reason": "engine_error",
                                "detail": f"{name}: {raw['error']}", "stage": STAGE, "run_id": run_id})
                continue
            prompt, params = roster.prompt(c, b["kind"]), c.sampling.params()
            reason = gate(raw["text"], raw["finish_reason"], roster.gates)
            rows.append({
                "caption_id": caption_key(b["media_hash"], name, prompt, params), "media_hash": b["media_hash"],
                "kind": b["kind"], "captioner": name, "model_path": str(c.engine.model_path),
                "backend": c.engine.backend, "prompt_sha256": sha256(prompt), "sampling": params.as_dict(),
                "text": raw["text"], "finish_reason": raw["finish_reason"], "n_tokens": raw["n_tokens"],
                "prompt_tokens": raw["prompt_tokens"], "status": "rejected" if reason else "ok",
                "reject_reason": reason, "run_id": run_id})
            report.raw_rejected += bool(reason)
    failed = {(r["source"], r["item"]) for r in refused}
    recovered = [(b["source"], b["item"]) for b in batch if (b["source"], b["item"]) not in failed]
    with cat.transaction() as con:
        cat.insert("captions", rows, on_conflict="ignore", con=con)
        cat.quarantine(refused, con=con)
        # an engine error of an earlier run that this run got past is no longer a refusal
        con.executemany("DELETE FROM quarantine WHERE source = ? AND item = ? AND stage = ? AND reason = 'engine_error'",
                        [[source, item, STAGE] for source, item in recovered])
    report.raw_new += len(rows)
    report.quarantined += len(refused)


def _merge_pass(cat, roster, media, report, use_ray, run_id, factory, ray_settings) -> None:
    m = roster.merger
    params = m.sampling.params()
    wanted = {}  # media_hash -> the current roster's caption keys for it
    for row in media:
        wanted[row["media_hash"]] = [caption_key(row["media_hash"], c.name, roster.prompt(c, row["kind"]),
                                                 c.sampling.params())
                                     for c in roster.captioners if row["kind"] in c.media]
    ok = defaultdict(list)
    for r in cat.query("SELECT caption_id, media_hash, text FROM captions WHERE status = 'ok' "
                       "AND caption_id IN (SELECT unnest(?::TEXT[]))", [[k for ks in wanted.values() for k in ks]]):
        ok[r["media_hash"]].append(r)
    merged = {r["merge_id"] for r in cat.query(
        "SELECT merge_id FROM merged_captions WHERE media_hash IN (SELECT unnest(?::TEXT[]))", [list(wanted)])}
    work = []
    for row in media:
        order = {k: i for i, k in enumerate(wanted[row["media_hash"]])}
        raws = sorted(ok[row["media_hash"]], key=lambda r: order[r["caption_id"]])  # roster order
        if not raws:
            continue  # nothing accepted yet (all rejected, failed, or not run): no merge
        raw_ids = [r["caption_id"] for r in raws]
        key = merge_key(row["media_hash"], m.name, m.prompt, params, raw_ids)
        if key in merged:
            continue
        work.append({**{k: row[k] for k in ("media_hash", "kind", "source", "item", "sample_id")},
                     "stage_hints": json.dumps(row["stage_hints"]), "merge_id": key, "raw_ids": json.dumps(raw_ids),
                     "prompt": merger_prompt(m, row["kind"], [r["text"] for r in raws])})
    if not work:
        return
    stage = EngineStage(MergeStage, m.engine, (roster.model_dump_json(),), {"factory": factory},
                        num_cpus=roster.engine_cpus)
    for batch in run_stages(work, [stage], batch_size=roster.rows_per_commit, use_ray=use_ray,
                            ray_settings=ray_settings, label=f"merge captions ({m.name})"):
        _write_merged(cat, roster, batch, report, run_id)


def _write_merged(cat: Catalog, roster: RosterConfig, batch: list[dict[str, Any]], report: CaptionReport,
                  run_id: str | None) -> None:
    from curation.ingest import content_sha256
    from curation.sources import synthesized_source

    m = roster.merger
    params = m.sampling.params()
    merges, samples, links, refused, synth_sources = [], [], [], [], set()
    stats = report.stages["merge"]
    for b in batch:
        raw = json.loads(b["merged"])
        stats.items += 1
        stats.seconds += b["seconds::merge"]
        if "error" in raw:
            stats.failures += 1
            refused.append({"source": b["source"], "item": b["item"], "reason": "engine_error",
                            "detail": f"{m.name}: {raw['error']}", "stage": STAGE, "run_id": run_id})
            continue
        text, reasoning = split_reasoning(raw["text"], m.reasoning_start, m.reasoning_end)
        reason = gate(text, raw["finish_reason"], roster.gates)
        merges.append({
            "merge_id": b["merge_id"], "media_hash": b["media_hash"], "merger": m.name,
            "model_path": str(m.engine.model_path), "prompt_sha256": sha256(m.prompt), "sampling": params.as_dict(),
            "raw_caption_ids": json.loads(b["raw_ids"]), "text": text, "reasoning": reasoning,
            "finish_reason": raw["finish_reason"], "n_tokens": raw["n_tokens"],
            "status": "rejected" if reason else "ok", "reject_reason": reason, "run_id": run_id})
        report.merged_rejected += bool(reason)
        if reason:
            continue
        synth = synthesized_source(b["source"])
        synth_sources.add((synth, b["source"], b["kind"]))
        conversation = [
            {"from": "human", "value": f"{PLACEHOLDER[b['kind']]}\n{roster.sample_prompt.format(kind=b['kind'])}"},
            {"from": "gpt", "value": text}]
        sample_id = f"{synth}/{b['item']}"
        samples.append({"sample_id": sample_id, "source": synth, "item": b["item"], "task": "caption",
                        "conversation": conversation, "media_hashes": [b["media_hash"]],
                        "stage_hints": json.loads(b["stage_hints"]),
                        "content_sha256": content_sha256(conversation, [b["media_hash"]])})
        links.append({"sample_id": sample_id, "media_hash": b["media_hash"], "from_sample": b["sample_id"],
                      "merge_id": b["merge_id"]})
    with cat.transaction() as con:
        for synth, source, kind in sorted(synth_sources):
            con.execute(
                "INSERT OR IGNORE INTO sources (name, modality, task, format, path, notes) "
                "SELECT ?, modality, 'caption', 'synthetic_captions', path, ? FROM sources WHERE name = ?",
                [synth, f"captions merged by {m.name} from {[c.name for c in roster.captioners]}", source])
        cat.insert("merged_captions", merges, on_conflict="ignore", con=con)
        cat.insert("samples", samples, on_conflict="replace", con=con)
        cat.insert("caption_samples", links, on_conflict="replace", con=con)
        cat.quarantine(refused, con=con)
    report.merged_new += len(merges)
    report.samples_written += len(samples)
    report.quarantined += len(refused)
