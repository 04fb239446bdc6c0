"""Perplexity of each sample's text conditioned on its media, under a VLM, through the engine interface.

    mavors ppl score manifests/dedup/scorers/tiny-qwen2vl.yaml

The paper (Appendix A) ranks samples that share media by the PPL of their text
under Qwen2VL-72B. Here a sample's LLaVA conversation becomes a
:class:`~inference.ChatRequest` (``<image>``/``<video>`` placeholders
become media parts pointing at the catalog's ``media.storage_path``), the
engine returns per-token prompt log-probs with a mask of the scored roles'
content tokens, and::

    mean_nll = -mean(logprob[mask])        ppl = exp(mean_nll)

``text_scope: answer`` scores the assistant turns given media and user turns;
``all`` scores every turn's text. Work is spread with Ray Data (a CPU stage
decodes each request's media, :func:`decode_requests`, while an actor pool,
one engine per actor, scores the batches already decoded; the ``mavors`` backend
plans and decodes its own frames); the driver writes each finished batch to ``ppl_scores``
(and refusals to ``quarantine``, stage ``ppl``) in one transaction, so a killed
run loses at most the batches in flight and a rerun skips every sample that
already has a score or was quarantined.

Refusals, never scores: media missing on disk or failing to decode, a
conversation whose placeholders do not match its media, no token to score, and
a NaN/inf result.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from core.catalog import Catalog
from core.config import ConfigModel, load_yaml
from core.settings import RaySettings
from model.conversation import ConversationError, conversation_to_messages
from inference import ChatRequest, EngineConfig, PromptScore
from inference.chat import media_payload, payload_media
from inference.isolation import error_text, per_request
from inference.pool import EngineStage, MapStage, Stage, run_stages

# Bump when the LLaVA -> chat conversion changes: scores keyed by an older version are not reused.
TEMPLATE_VERSION = "llava2chat-v1"
STAGE = "ppl"
SCORE_ROLES = {"answer": ("assistant",), "all": ("system", "user", "assistant")}
RESULT_KEYS = ("sample_id", "ok", "mean_nll", "ppl", "n_tokens", "reason", "detail")
"""What :func:`score_requests` returns per request."""


class ScorerConfig(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Scorer name stored in ``ppl_scores.scorer`` (and named by dedup policies). Cluster: ``qwen2vl-72b``."""
    engine: EngineConfig
    """The VLM and backend (``transformers`` or ``vllm``); ``num_replicas`` actors each load one engine,
    ``batch_size`` requests go through one ``score`` call. Score in float32 when comparing backends."""
    text_scope: Literal["answer", "all"] = "answer"
    """``answer``: NLL of the assistant turns given media and user turns (paper). ``all``: of every turn."""
    rows_per_commit: int = Field(64, ge=1)
    """Samples per Ray batch; each finished batch is written in one catalog transaction."""
    decode_cpus: float = Field(0.25, gt=0)
    """CPUs each Ray decode task reserves. Cluster: 1 (a GPU node has far more cores than engines)."""


def load_scorer_config(path: str | Path, work_dir: str | Path | None = None) -> ScorerConfig:
    """A scorer YAML; its engine's paths resolve as in every config (:data:`core.config.ConfigPath`)."""
    return load_yaml(path, ScorerConfig, work_dir)


class SampleRefused(ValueError):
    """A sample that cannot be scored; ``reason`` is a short countable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def to_chat_request(sample_id: str, conversation: list[dict[str, str]],
                    media: list[tuple[str, str]]) -> ChatRequest:
    """A LLaVA conversation + its media ``[(kind, path)]`` (placeholder order) as a ``ChatRequest``
    (:func:`model.conversation.conversation_to_messages`). Raises :class:`SampleRefused` on unknown roles
    or when placeholders and media disagree in number or kind."""
    try:
        messages = conversation_to_messages(conversation, [path for _, path in media], sample_id,
                                            kinds=[kind for kind, _ in media])
    except ConversationError as e:
        raise SampleRefused(e.reason, e.detail) from None
    return ChatRequest(request_id=sample_id, messages=messages)


def score_row(score: PromptScore) -> dict[str, Any]:
    """``{mean_nll, ppl, n_tokens}`` of one engine score; raises :class:`SampleRefused` if not finite."""
    n = score.n_scored
    if n == 0:
        raise SampleRefused("no_scored_tokens", f"{score.request_id}: no token of the scored roles")
    values = [lp for lp, m in zip(score.logprobs, score.mask) if m]
    mean_nll = -math.fsum(values) / n
    if not math.isfinite(mean_nll):
        bad = sum(1 for v in values if not math.isfinite(v))
        raise SampleRefused("nonfinite_score",
                            f"{score.request_id}: mean NLL is {mean_nll} ({bad} of {n} token log-probs not finite)")
    ppl = math.exp(mean_nll) if mean_nll < 700 else math.inf
    if not math.isfinite(ppl):
        raise SampleRefused("nonfinite_score", f"{score.request_id}: PPL overflows (mean NLL {mean_nll:.1f})")
    return {"mean_nll": max(mean_nll, 0.0), "ppl": max(ppl, 1.0), "n_tokens": n}


def probe_media(kind: str, path: str) -> str | None:
    """None if the file decodes fully, else why not (used to name the cause of a failed request)."""
    try:
        if kind == "image":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
        else:
            import av

            with av.open(path) as container:
                if not container.streams.video:
                    return f"{path}: no video stream"
                n = sum(1 for _ in container.decode(video=0))
                if n == 0:
                    return f"{path}: no decodable frame"
    except Exception as e:  # noqa: BLE001 - any decoder error is the answer
        return f"{path}: {type(e).__name__}: {e}"
    return None


def score_requests(engine, requests: list[ChatRequest], text_scope: str) -> list[dict[str, Any]]:
    """Score a batch; one result dict per request: ``{sample_id, ok, mean_nll, ppl, n_tokens, reason, detail}``.

    If the batch fails, each request runs alone (``inference.isolation.per_request``) so one bad sample does
    not sink the others; a
    request that fails alone is refused with ``media_decode_failed`` when one of its media does not
    decode, else ``score_failed`` with the engine's error.
    """
    roles = SCORE_ROLES[text_scope]
    scores = per_request(lambda batch: engine.score(batch, score_roles=roles), requests)
    out = []
    for request, score in zip(requests, scores, strict=True):
        row: dict[str, Any] = dict.fromkeys(RESULT_KEYS) | {"sample_id": request.request_id, "ok": False}
        try:
            if isinstance(score, Exception):
                broken = [msg for kind, path in request.media()
                          if isinstance(path, (str, Path)) and (msg := probe_media(kind, str(path)))]
                if broken:
                    raise SampleRefused("media_decode_failed", f"{request.request_id}: {broken[0]}")
                raise SampleRefused("score_failed", f"{request.request_id}: {type(score).__name__}: {score}")
            row.update(score_row(score), ok=True)
        except SampleRefused as refused:
            row.update(reason=refused.reason, detail=refused.detail)
        out.append(row)
    return out


# -- catalog side ------------------------------------------------------------------------------

def pending_samples(cat: Catalog, config: ScorerConfig, *, limit: int | None = None,
                    sample_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Samples with no score under (scorer, template, scope) and not quarantined at this stage, with media.

    Rows: sample_id, source, item, conversation (list), media [(kind, path)].
    """
    sql = """
        SELECT s.sample_id, s.source, s.item, s.conversation,
               list(struct_pack(kind := m.kind, path := m.storage_path, hash := h.media_hash) ORDER BY h.i)
                   FILTER (WHERE h.media_hash IS NOT NULL) AS media
        FROM samples s
        LEFT JOIN (SELECT sample_id, unnest(media_hashes) AS media_hash,
                          generate_subscripts(media_hashes, 1) AS i FROM samples) h ON h.sample_id = s.sample_id
        LEFT JOIN media m ON m.media_hash = h.media_hash
        WHERE NOT EXISTS (SELECT 1 FROM ppl_scores p WHERE p.sample_id = s.sample_id AND p.scorer = ?
                            AND p.template_version = ? AND p.text_scope = ?)
          AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.source = s.source AND q.item = s.item
                            AND q.stage = ?)
    """
    params: list[Any] = [config.name, TEMPLATE_VERSION, config.text_scope, STAGE]
    if sample_ids is not None:
        sql += " AND s.sample_id IN (SELECT unnest(?::TEXT[]))"
        params.append(sample_ids)
    sql += " GROUP BY s.sample_id, s.source, s.item, s.conversation ORDER BY s.sample_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = cat.query(sql, params)
    for row in rows:
        row["conversation"] = json.loads(row["conversation"])
        row["media"] = [{**m, "path": None if m["path"] is None else str(cat.resolved(m["path"]))}
                        for m in row["media"] or []]
    return rows


def prepare(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(work items ``{sample_id, source, item, request_json}``, refusals) from pending rows.

    Media whose row is missing from ``media`` or whose file is gone are refused here, before any model runs.
    """
    work, refused = [], []
    for row in rows:
        try:
            for m in row["media"]:
                if m["kind"] is None:
                    raise SampleRefused("media_missing", f"{row['sample_id']}: media {m['hash']} not in the catalog")
                if not Path(m["path"]).is_file():
                    raise SampleRefused("media_missing", f"{row['sample_id']}: {m['path']} does not exist")
            request = to_chat_request(row["sample_id"], row["conversation"],
                                      [(m["kind"], m["path"]) for m in row["media"]])
        except SampleRefused as e:
            refused.append({"sample_id": row["sample_id"], "source": row["source"], "item": row["item"],
                            "reason": e.reason, "detail": e.detail})
            continue
        work.append({"sample_id": row["sample_id"], "source": row["source"], "item": row["item"],
                     "request_json": json.dumps(request.messages)})
    return work, refused


def write_results(cat: Catalog, config: ScorerConfig, results: list[dict[str, Any]], run_id: str | None) -> None:
    """One transaction: scores into ``ppl_scores``, refusals into ``quarantine`` (stage ppl)."""
    scores = [{"sample_id": r["sample_id"], "scorer": config.name, "template_version": TEMPLATE_VERSION,
               "text_scope": config.text_scope, "ppl": r["ppl"], "mean_nll": r["mean_nll"],
               "n_tokens": r["n_tokens"], "backend": config.engine.backend,
               "model_path": str(config.engine.model_path), "run_id": run_id}
              for r in results if r["ok"]]
    refused = [{"source": r["source"], "item": r["item"], "reason": r["reason"], "detail": r["detail"],
                "stage": STAGE, "run_id": run_id} for r in results if not r["ok"]]
    with cat.transaction() as con:
        cat.insert("ppl_scores", scores, on_conflict="ignore", con=con)
        cat.quarantine(refused, con=con)


class ScoreStage:
    """Engine stage of :func:`inference.pool.run_stages`: one scorer engine; a batch of work items in, their
    results out (:data:`RESULT_KEYS`, plus ``source`` and ``item`` for the quarantine rows)."""

    def __init__(self, config_json: str):
        from inference import load_engine  # looked up at call time: tests swap in a fake engine

        self.config = ScorerConfig.model_validate_json(config_json)
        self.engine = load_engine(self.config.engine)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows: list[dict[str, Any] | None] = [None] * len(batch["sample_id"])
        requests, where = [], []
        for i, (sid, msg) in enumerate(zip(batch["sample_id"], batch["request_json"])):
            request = ChatRequest(sid, json.loads(msg))
            if "media" in batch:  # decoded by decode_requests
                if batch["decode_error"][i]:
                    rows[i] = dict.fromkeys(RESULT_KEYS) | {"sample_id": sid, "ok": False, "reason": "media_decode_failed",
                                                            "detail": f"{sid}: {batch['decode_error'][i]}"}
                    continue
                request = request.with_media([payload_media(kind, payload) for (kind, _), payload
                                              in zip(request.media(), batch["media"][i], strict=True)])
            requests.append(request)
            where.append(i)
        step = self.config.engine.batch_size
        scored = [r for start in range(0, len(requests), step)
                  for r in score_requests(self.engine, requests[start:start + step], self.config.text_scope)]
        for i, row in zip(where, scored, strict=True):
            rows[i] = row
        out = {key: [r[key] for r in rows] for key in RESULT_KEYS}
        return {**out, "source": batch["source"], "item": batch["item"]}


def decode_requests(batch: dict[str, list], video_frames: int) -> dict[str, list]:
    """Map stage (CPU): every request's media as :func:`inference.chat.media_payload` bytes (column ``media``,
    one list per request), so the engines get frames, not paths, and decoding overlaps scoring; a request
    whose media do not decode gets ``decode_error`` and is refused without reaching an engine."""
    payloads, errors = [], []
    for msg in batch["request_json"]:
        try:
            payloads.append([media_payload(kind, value, video_frames)
                             for kind, value in ChatRequest("", json.loads(msg)).media()])
            errors.append("")
        except Exception as e:  # noqa: BLE001 - the sample is refused with the decoder's message
            payloads.append([])
            errors.append(error_text(e))
    return {**batch, "media": payloads, "decode_error": errors}


def scoring_stages(config: ScorerConfig) -> list[Stage]:
    """Decode then score; the ``mavors`` backend decodes in its engine (its processor plans frames per chunk)."""
    score = EngineStage(ScoreStage, config.engine, (config.model_dump_json(),))
    if config.engine.backend == "mavors":
        return [score]
    return [MapStage(decode_requests, {"video_frames": config.engine.video_frames}, num_cpus=config.decode_cpus), score]


def run_scoring(cat: Catalog, config: ScorerConfig, *, use_ray: bool = True, limit: int | None = None,
                sample_ids: list[str] | None = None, run_id: str | None = None,
                ray_settings: RaySettings | None = None) -> dict[str, int]:
    """Score every pending sample and write the results batch by batch; returns counts.

    The checkpoint is checked before anything else (a missing scorer fails before any work starts).
    ``use_ray=False`` runs one engine in this process (the same :class:`ScoreStage` per batch).
    """
    from inference.loader import check_model_path

    check_model_path(Path(config.engine.model_path))
    rows = pending_samples(cat, config, limit=limit, sample_ids=sample_ids)
    work, refused = prepare(rows)
    counts = {"pending": len(rows), "scored": 0, "quarantined": 0}
    if refused:
        write_results(cat, config, [{**r, "ok": False} for r in refused], run_id)
        counts["quarantined"] += len(refused)
    if not work:
        return counts
    for results in run_stages(work, scoring_stages(config), batch_size=config.rows_per_commit, use_ray=use_ray,
                              ray_settings=ray_settings, label="perplexity"):
        write_results(cat, config, results, run_id)
        counts["scored"] += sum(1 for r in results if r["ok"])
        counts["quarantined"] += sum(1 for r in results if not r["ok"])
    return counts
