"""Build a DPO pair set from a policy checkpoint: generate, judge, decide, record, shard.

    mavors dpo build --checkpoint mavors-work/checkpoints/stage2/export --mixture manifests/mixtures/dpo.yaml

A pair set is named by ``hash(checkpoint content, DpoConfig, mixture selection)``: a
rerun with the same checkpoint finds its ``dpo_inputs`` rows and skips those inputs;
a new checkpoint makes a new set beside the old ones, linked by ``previous_pair_set``.
Each batch of inputs is decided and written in one catalog transaction (candidates,
pairs, the input's reason), so a crash loses at most the batch in flight. Bad inputs
(video too short or undecodable, empty generations, a failing judge) get a row with
the reason and no pair; undecodable or missing media are also quarantined (stage
``dpo``). Refusals that only concern DPO (too short to shuffle) are not quarantined:
the sample stays good training data for other stages.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core import progress
from core.catalog import Catalog
from inference import (
    ChatRequest, Engine, EngineConfig, EngineError, GenerationResult, SamplingParams, load_engine,
)
from inference.isolation import error_text, per_request
from curation.preference.config import DpoConfig
from curation.preference.decisions import DOMAINS, Candidate, DpoInput, Outcome, derive_seed
from curation.preference.image_captions import decide_image_captions, refuse_empty
from curation.preference.judges import ModelJudge, RoutedJudge
from curation.preference.qa import decide_qa
from curation.preference.records import pair_rows, write_pair_shards
from curation.preference.scoring import CaptionScorer
from curation.preference.video_captions import decide_video_captions, shuffle_for
from curation.preference.segments import SegmentRefusal

log = logging.getLogger(__name__)

STAGE = "dpo"
# Input-level reasons that mean the media itself is bad (quarantined), not just unfit for DPO.
QUARANTINE_REASONS = {"undecodable_video", "missing_media"}


# -- checkpoint and pair-set identity ---------------------------------------------------------------
# The trainer's run record beside an export (wall-clock times, resume step): not part of the policy.
RUN_RECORDS = {"stage.json"}


def checkpoint_sha256(path: str | Path) -> str:
    """Content hash of a checkpoint directory: every file's relative name and bytes, in sorted order,
    except run records, so the same weights trained twice (or resumed after a crash) are one policy."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in RUN_RECORDS):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def checkpoint_model_type(path: str | Path) -> str | None:
    config = Path(path) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint directory (no config.json)")
    return json.loads(config.read_text()).get("model_type")


def pick_backend(config: DpoConfig, model_type: str | None) -> str:
    """The policy's engine backend: as configured, or by the checkpoint's ``model_type`` for ``auto``."""
    if config.backend != "auto":
        return config.backend
    return "mavors" if model_type == "mavors" else config.auto_vlm_backend


def pair_set_id(checkpoint_hash: str, config: DpoConfig, mixture_sha256: str | None) -> str:
    key = json.dumps({"checkpoint": checkpoint_hash, "config": config.model_dump(mode="json", exclude={"output_dir"}),
                      "mixture": mixture_sha256}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# -- inputs --------------------------------------------------------------------------------------------
def _strip_placeholders(text: str) -> str:
    return " ".join(text.replace("<image>", " ").replace("<video>", " ").split())


def load_inputs(cat: Catalog, sample_ids: Iterable[str], config: DpoConfig) -> tuple[list[DpoInput], list[dict]]:
    """Catalog samples as DPO inputs; samples that fit no domain come back as refusal rows."""
    ids = sorted(set(sample_ids))
    if not ids:
        return [], []
    rows = cat.query(
        """SELECT s.sample_id, s.task, s.conversation, s.media_hashes,
                  list(m.kind ORDER BY u.pos) AS kinds, list(m.storage_path ORDER BY u.pos) AS paths
           FROM samples s
           LEFT JOIN (SELECT sample_id, unnest(media_hashes) AS media_hash,
                             generate_subscripts(media_hashes, 1) AS pos FROM samples) u USING (sample_id)
           LEFT JOIN media m ON m.media_hash = u.media_hash
           WHERE s.sample_id IN (SELECT unnest($ids))
           GROUP BY ALL ORDER BY s.sample_id""", {"ids": ids})
    inputs, refused = [], []
    found = {r["sample_id"] for r in rows}
    refused += [dict(sample_id=s, domain="qa", reason="unknown_sample", detail="not in the catalog")
                for s in ids if s not in found]
    for r in rows:
        conv = json.loads(r["conversation"]) if isinstance(r["conversation"], str) else r["conversation"]
        kinds = [k for k in (r["kinds"] or []) if k is not None]
        paths = [str(cat.resolved(p)) for p in (r["paths"] or []) if p is not None]
        human = next((t["value"] for t in conv if t["from"] == "human"), "")
        answer = next((t["value"] for t in conv if t["from"] == "gpt"), "")
        if r["task"] == "caption" and kinds == ["image"]:
            domain, question = "image_caption", config.image_caption.prompt
        elif r["task"] == "caption" and kinds == ["video"]:
            domain, question = "video_caption", config.video_caption.prompt
        else:
            domain, question = "qa", _strip_placeholders(human)
        base = dict(sample_id=r["sample_id"], domain=domain)
        if r["task"] not in ("qa", "caption") or not kinds:
            refused.append(base | dict(reason="unsupported_sample",
                                       detail=f"task {r['task']!r} with media {kinds}: no DPO domain"))
        elif missing := [p for p in paths if not Path(p).is_file()]:
            refused.append(base | dict(reason="missing_media", detail=f"{missing[0]} does not exist"))
        elif not answer.strip() or not question:
            refused.append(base | dict(reason="no_reference", detail="no question or reference answer"))
        else:
            inputs.append(DpoInput(r["sample_id"], domain, question, answer.strip(), list(zip(kinds, paths)),
                                   list(r["media_hashes"])))
    return inputs, refused


# -- generation helpers -------------------------------------------------------------------------------
def _request(inp: DpoInput, tag: str, text: str | None = None, media: list[tuple[str, str]] | None = None) -> ChatRequest:
    content = DpoInput(inp.sample_id, inp.domain, inp.question, inp.reference, media or inp.media,
                       inp.media_hashes).prompt_content(text)
    return ChatRequest(f"{inp.sample_id}#{tag}", [{"role": "user", "content": content}])


def generate_each(engine: Engine, requests: list[ChatRequest],
                  params: SamplingParams) -> list[GenerationResult | str]:
    """Generate a batch; a request that fails alone (``inference.isolation.per_request``) gets its error text.

    When every request of a batch fails on its own too, the fault is the engine's, not
    the inputs': that raises, nothing of the batch is recorded, and a rerun retries it.
    """
    out = [error_text(r) if isinstance(r, Exception) else r
           for r in per_request(lambda batch: engine.generate(batch, params), requests)]
    if all(isinstance(o, str) for o in out):
        raise EngineError(f"every request of a batch of {len(requests)} failed, e.g. {requests[0].request_id}: "
                          f"{out[0]}")
    return out


def _batch_seed(seed: int, pool: str, inputs: list[DpoInput]) -> int:
    return derive_seed(seed, pool, *[i.sample_id for i in inputs])


@dataclass
class Builder:
    """Decides batches of inputs of one domain with a loaded policy and judge."""

    config: DpoConfig
    policy: Engine
    judge: ModelJudge
    audit_dir: Path

    def decide(self, domain: str, batch: list[DpoInput]) -> list[Outcome]:
        return {"qa": self._qa, "image_caption": self._image, "video_caption": self._video}[domain](batch)

    def _qa(self, batch: list[DpoInput]) -> list[Outcome]:
        cfg = self.config.qa
        seeds = (_batch_seed(self.config.seed, "qa-positive", batch), _batch_seed(self.config.seed, "qa-negative", batch))
        pos = generate_each(self.policy, [_request(i, "pos") for i in batch], cfg.positive.params(seeds[0]))
        neg = generate_each(self.policy, [_request(i, "neg") for i in batch], cfg.negative.params(seeds[1]))
        judge = RoutedJudge(self.judge, cfg.short_reference_words)
        out = []
        for inp, p, n in zip(batch, pos, neg):
            if isinstance(p, str) or isinstance(n, str):
                out.append(Outcome(inp).no_pair("generation_failed", p if isinstance(p, str) else n))
            else:
                out.append(decide_qa(inp, p.completions, n.completions, judge, cfg, seeds))
        return out

    def _image(self, batch: list[DpoInput]) -> list[Outcome]:
        cfg = self.config.image_caption
        seed = _batch_seed(self.config.seed, "image-caption", batch)
        results = generate_each(self.policy, [_request(i, "cap") for i in batch], cfg.sampling.params(seed))
        done: dict[str, Outcome] = {}
        live, cands = [], []
        for inp, res in zip(batch, results):
            if isinstance(res, str):
                done[inp.sample_id] = Outcome(inp).no_pair("generation_failed", res)
                continue
            cs = [Candidate.from_completion("sample", k, c, cfg.sampling.temperature, seed)
                  for k, c in enumerate(res.completions)]
            refuse_empty(cs)
            live.append(inp)
            cands.append(cs)
        CaptionScorer(cfg.scorers, self.judge).score(live, cands, cfg.prompt)
        for inp, cs in zip(live, cands):
            done[inp.sample_id] = decide_image_captions(inp, cs, cfg)
        return [done[i.sample_id] for i in batch]

    def _video(self, batch: list[DpoInput]) -> list[Outcome]:
        cfg = self.config.video_caption
        done: dict[str, Outcome] = {}
        ready = []
        for inp in batch:
            try:
                shuffled = shuffle_for(inp, self.audit_dir, cfg, self.config.seed)
            except SegmentRefusal as e:
                done[inp.sample_id] = Outcome(inp).no_pair(e.reason, e.detail)
                continue
            ready.append((inp, shuffled))
        inputs = [i for i, _ in ready]
        seed = _batch_seed(self.config.seed, "video-caption", inputs)
        shuffled_seed = seed if cfg.seeds == "shared" else _batch_seed(self.config.seed, "video-caption-shuffled",
                                                                       inputs)
        originals = generate_each(self.policy, [_request(i, "orig") for i in inputs],
                                  cfg.sampling.params(seed)) if ready else []
        shuffleds = generate_each(self.policy, [_request(i, "shuf", media=[("video", str(s.path))]) for i, s in ready],
                                  cfg.sampling.params(shuffled_seed)) if ready else []
        for (inp, shuffled), orig, shuf in zip(ready, originals, shuffleds):
            if isinstance(orig, str) or isinstance(shuf, str):
                done[inp.sample_id] = Outcome(inp, audit_path=str(shuffled.path)).no_pair(
                    "generation_failed", orig if isinstance(orig, str) else shuf)
                continue
            done[inp.sample_id] = decide_video_captions(inp, orig.completions[0], shuf.completions[0], shuffled,
                                                        cfg, seed, shuffled_seed)
        return [done[i.sample_id] for i in batch]


# -- recording --------------------------------------------------------------------------------------
def record_outcomes(cat: Catalog, set_id: str, outcomes: list[Outcome], checkpoint_hash: str,
                    run_id: str | None) -> None:
    """Write a batch's decisions (inputs, candidates, pairs, quarantine) in one transaction."""
    inputs, cands, pairs, quarantine = [], [], [], []
    for o in outcomes:
        inputs.append({"pair_set_id": set_id, "sample_id": o.input.sample_id, "domain": o.input.domain,
                       "n_pairs": len(o.pairs), "reason": o.reason, "detail": o.detail or None,
                       "audit_path": o.audit_path, "extra": o.extra or None, "run_id": run_id})
        for c in o.candidates:
            cands.append({"pair_set_id": set_id, "sample_id": o.input.sample_id, "candidate_id": c.candidate_id,
                          "pool": c.pool, "text": c.text, "finish_reason": c.finish_reason, "n_tokens": c.n_tokens,
                          "temperature": c.temperature, "seed": c.seed, "status": c.status, "reason": c.reason,
                          "detail": c.detail or None, "score": c.score, "scores": c.scores or None,
                          "judge": c.judge})
        pairs += pair_rows(set_id, o, checkpoint_hash, run_id)
        if o.reason in QUARANTINE_REASONS:
            source, _, item = o.input.sample_id.partition("/")
            quarantine.append({"source": source, "item": item, "reason": o.reason, "detail": o.detail,
                               "stage": STAGE, "run_id": run_id})
    with cat.transaction() as con:
        cat.insert("dpo_inputs", inputs, con=con)
        cat.insert("dpo_candidates", cands, con=con)
        cat.insert("dpo_pairs", pairs, con=con)
        cat.quarantine(quarantine, con=con)


def refusal_outcomes(refused: list[dict]) -> list[Outcome]:
    return [Outcome(DpoInput(r["sample_id"], r["domain"], "", "", [], [])).no_pair(r["reason"], r["detail"])
            for r in refused]


@dataclass
class BuildReport:
    pair_set_id: str
    checkpoint_sha256: str
    backend: str
    skipped: int = 0
    decided: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """domain -> reason -> inputs, over the whole pair set."""
    shards: list[str] = field(default_factory=list)


def register_pair_set(cat: Catalog, *, set_id: str, checkpoint: Path, checkpoint_hash: str, model_type: str | None,
                      backend: str, judge_name: str, config: DpoConfig, mixture: str | None,
                      mixture_sha256: str | None, run_id: str | None) -> None:
    if cat.scalar("SELECT count(*) FROM dpo_pair_sets WHERE pair_set_id = ?", [set_id]):
        return
    # Lineage: the set this one supersedes is the newest earlier set built for the same mixture.
    previous = cat.scalar("SELECT pair_set_id FROM dpo_pair_sets WHERE mixture IS NOT DISTINCT FROM ? "
                          "ORDER BY created_at DESC LIMIT 1", [mixture])
    cat.insert("dpo_pair_sets", [{
        "pair_set_id": set_id, "checkpoint_path": str(checkpoint), "checkpoint_sha256": checkpoint_hash,
        "model_type": model_type, "backend": backend, "judge": judge_name, "config": config.model_dump(mode="json"),
        "mixture": mixture, "mixture_sha256": mixture_sha256, "seed": config.seed, "previous_pair_set": previous,
        "run_id": run_id,
    }])


def mixture_inputs(cat: Catalog, mixture: str) -> tuple[list[str], str | None]:
    """The sample ids of a selected mixture's ``dpo`` stage and the mixture's selection hash."""
    ids = [r["sample_id"] for r in cat.query(
        "SELECT sample_id FROM mixture_members WHERE mixture = ? AND stage = 'dpo' ORDER BY sample_id", [mixture])]
    return ids, cat.scalar("SELECT config_sha256 FROM mixtures WHERE name = ?", [mixture])


def build_pair_set(cat: Catalog, checkpoint: str | Path, sample_ids: Iterable[str], config: DpoConfig, *,
                   out_dir: str | Path, mixture: str | None = None, mixture_sha256: str | None = None,
                   run_id: str | None = None,
                   engine_factory: Callable[[EngineConfig], Engine] = load_engine) -> BuildReport:
    """Decide every not-yet-decided input of the pair set for ``checkpoint``; shard the set's pairs.

    ``sample_ids``: the inputs (a mixture's ``dpo`` stage members). ``out_dir``: shards go to
    ``<out_dir>/<pair_set_id>/shards/<domain>/``, shuffled videos to ``.../shuffled_videos/``.
    ``engine_factory`` builds the policy and judge engines (tests pass a wrapper).
    """
    checkpoint = Path(checkpoint)
    model_type = checkpoint_model_type(checkpoint)
    ck_hash = checkpoint_sha256(checkpoint)
    backend = pick_backend(config, model_type)
    set_id = pair_set_id(ck_hash, config, mixture_sha256)
    judge_cfg = config.judge.engine
    judge_name = f"{config.judge.mode}:{judge_cfg.model_path if judge_cfg else 'policy'}"
    register_pair_set(cat, set_id=set_id, checkpoint=checkpoint, checkpoint_hash=ck_hash, model_type=model_type,
                      backend=backend, judge_name=judge_name, config=config, mixture=mixture,
                      mixture_sha256=mixture_sha256, run_id=run_id)
    report = BuildReport(set_id, ck_hash, backend)
    set_dir = Path(out_dir) / set_id
    done = {r["sample_id"] for r in cat.query("SELECT sample_id FROM dpo_inputs WHERE pair_set_id = ?", [set_id])}
    todo_ids = [s for s in sorted(set(sample_ids)) if s not in done]
    report.skipped = len(set(sample_ids)) - len(todo_ids)
    inputs, refused = load_inputs(cat, todo_ids, config)
    enabled = {d for d in DOMAINS if getattr(config, d).enabled}
    inputs = [i for i in inputs if i.domain in enabled]
    if refused:
        record_outcomes(cat, set_id, refusal_outcomes(refused), ck_hash, run_id)
        report.decided += len(refused)
    if inputs:
        policy = engine_factory(EngineConfig(backend=backend, model_path=checkpoint,
                                             modalities=["text", "image", "video"], **config.engine))
        judge_engine = engine_factory(judge_cfg) if judge_cfg else policy
        try:
            builder = Builder(config, policy, ModelJudge(judge_engine, config.judge, name=judge_name),
                              set_dir / "shuffled_videos")
            with progress.task("DPO pairs", total=len(inputs)) as bar:
                for domain in DOMAINS:
                    pending = [i for i in inputs if i.domain == domain]
                    for start in range(0, len(pending), config.batch_inputs):
                        batch = pending[start:start + config.batch_inputs]
                        record_outcomes(cat, set_id, builder.decide(domain, batch), ck_hash, run_id)
                        report.decided += len(batch)
                        bar.advance(len(batch))
                        log.info("dpo %s: %s %d/%d decided", set_id, domain, start + len(batch), len(pending))
        finally:
            if judge_engine is not policy:
                judge_engine.close()
            policy.close()
    for r in cat.query("SELECT domain, reason, count(*) AS n FROM dpo_inputs WHERE pair_set_id = ? "
                       "GROUP BY ALL ORDER BY ALL", [set_id]):
        report.counts.setdefault(r["domain"], {})[r["reason"]] = r["n"]
    report.shards = write_pair_shards(cat, set_id, set_dir / "shards", max_samples=config.max_pairs_per_shard,
                                      run_id=run_id)
    cat.con.execute("UPDATE dpo_pair_sets SET shard_dir = ? WHERE pair_set_id = ?",
                    [cat.stored(set_dir / "shards"), set_id])
    return report
