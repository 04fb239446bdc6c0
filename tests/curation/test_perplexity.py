"""Tests of PPL scoring (curation/perplexity.py) against a plain transformers forward on the tiny Qwen2-VL.

    pytest tests/curation/test_perplexity.py -q        # ~1.5 min: tiny models, Ray actor pool, import vllm

The reference renders each conversation with the processor's chat template,
runs ``Qwen2VLForConditionalGeneration`` once per sample, applies
``log_softmax`` by hand and averages over the answer tokens it locates itself
(between ``<|im_start|>assistant\\n`` and ``<|im_end|>``).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from core.catalog import Catalog
from inference import ChatRequest, EngineConfig, EngineError, PromptScore, load_engine
from curation.perplexity import (
    STAGE, TEMPLATE_VERSION, SampleRefused, ScorerConfig, pending_samples, run_scoring, score_requests,
    to_chat_request,
)

MODALITIES = ["text", "image", "video"]
N_FRAMES = 4


def write_video(path: Path, frames: np.ndarray) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Media files and LLaVA samples: 6 scorable (image, video, two images, text-only, multi-turn) + 3 bad."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ppl-corpus")
    rng = np.random.RandomState(0)
    media = {}
    for name, (h, w) in {"a.png": (56, 70), "b.jpg": (64, 48)}.items():
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(root / name)
        media[name] = "image"
    write_video(root / "v.mp4", (rng.rand(N_FRAMES, 56, 56, 3) * 255).astype("uint8"))
    media["v.mp4"] = "video"
    (root / "broken.jpg").write_bytes((root / "b.jpg").read_bytes()[:200])  # truncated JPEG
    media["broken.jpg"] = "image"
    q = lambda v: {"from": "human", "value": v}  # noqa: E731
    a = lambda v: {"from": "gpt", "value": v}  # noqa: E731
    samples = {
        "src1/img": ([q("<image>\nWhat shape is shown?"), a("A red circle on a blue background.")], ["a.png"]),
        "src1/vid": ([q("<video>\nDescribe the clip."), a("A square moves left, then stops.")], ["v.mp4"]),
        "src2/img": ([q("<image>\nWhat colour?"), a("Green.")], ["a.png"]),
        "src2/two": ([q("Compare <image> and <image> please."), a("The first is larger than the second.")],
                     ["a.png", "b.jpg"]),
        "src2/text": ([q("Count to three."), a("One two three.")], []),
        "src3/turns": ([q("<image>\nHow many shapes?"), a("Two."), q("Which colours?"), a("Red and yellow.")],
                       ["b.jpg"]),
        # refused:
        "bad/broken": ([q("<image>\nWhat is it?"), a("A cat.")], ["broken.jpg"]),
        "bad/missing": ([q("<image>\nWhat is it?"), a("A dog.")], ["gone.jpg"]),
        "bad/mismatch": ([q("<video>\nWhat is it?"), a("A car.")], ["a.png"]),
    }
    return root, media, samples


def make_catalog(path: Path, corpus) -> Catalog:
    import hashlib

    root, media, samples = corpus
    cat = Catalog(path)
    hashes = {}
    for name in list(media) + ["gone.jpg"]:
        file = root / name
        data = file.read_bytes() if file.exists() else name.encode()
        hashes[name] = hashlib.sha256(data).hexdigest()
        cat.insert("media", [{"media_hash": hashes[name], "kind": media.get(name, "image"), "bytes": len(data),
                              "storage_path": str(file)}], on_conflict="ignore")
    for sid, (conv, files) in samples.items():
        source, item = sid.split("/")
        cat.insert("samples", [{"sample_id": sid, "source": source, "item": item, "task": "qa",
                                "conversation": conv, "media_hashes": [hashes[f] for f in files],
                                "content_sha256": "-"}])
    return cat


def scorer(tiny_models, **engine) -> ScorerConfig:
    return ScorerConfig(name="tiny", rows_per_commit=4, engine=EngineConfig(**{
        "backend": "transformers", "model_path": tiny_models["qwen2vl"], "modalities": MODALITIES,
        "video_frames": N_FRAMES, "batch_size": 4, **engine}))


# -- the independent reference -------------------------------------------------------------------

def reference_nll(model_dir: Path, conversation: list[dict], files: list[Path]) -> tuple[float, int]:
    """(mean NLL over answer tokens, token count) from a plain forward + manual log_softmax."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    cache = reference_nll.__dict__.setdefault("cache", {})
    if model_dir not in cache:
        cache[model_dir] = (AutoProcessor.from_pretrained(model_dir),
                            Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval())
    processor, model = cache[model_dir]
    messages, images, videos, it = [], [], [], iter(files)
    for turn in conversation:
        role = {"human": "user", "gpt": "assistant"}[turn["from"]]
        parts = []
        for k, piece in enumerate(turn["value"].replace("<video>", "<image>").split("<image>")):
            if k:
                f = next(it)
                if f.suffix == ".mp4":
                    with av.open(str(f)) as c:
                        videos.append(np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]))
                    parts.append({"type": "video"})
                else:
                    from PIL import Image

                    images.append(Image.open(f).convert("RGB"))
                    parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(text=[text], images=images or None, videos=videos or None, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()  # (L, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    ids = inputs["input_ids"][0].tolist()
    tok = processor.tokenizer
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    positions, answers = [], []
    for i, t in enumerate(ids):
        if t == start and ids[i + 1:i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            k = ids.index(end, j)
            positions.extend(range(j, k))
            answers.append(tok.decode(ids[j:k]))
    assert answers == [t["value"] for t in conversation if t["from"] == "gpt"]  # located the right tokens
    nll = [-logprobs[p - 1, ids[p]].item() for p in positions]
    return sum(nll) / len(nll), len(nll)


# -- tests ---------------------------------------------------------------------------------------

def test_llava_conversation_to_chat_request():
    conv = [{"from": "human", "value": "Compare <image> and\n<video> now"}, {"from": "gpt", "value": "Same."}]
    req = to_chat_request("s/1", conv, [("image", "/m/a.jpg"), ("video", "/m/v.mp4")])
    assert req.messages == [
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image", "image": "/m/a.jpg"},
                                     {"type": "text", "text": " and\n"}, {"type": "video", "video": "/m/v.mp4"},
                                     {"type": "text", "text": " now"}]},
        {"role": "assistant", "content": "Same."}]
    for media, match in [([("image", "x")], "more <image>"), ([("video", "x"), ("video", "y")], "is a video"),
                         ([("image", "x"), ("video", "y"), ("image", "z")], "without a placeholder")]:
        with pytest.raises(SampleRefused, match=match):
            to_chat_request("s/1", conv, media)
    with pytest.raises(SampleRefused, match="role 'bot'"):
        to_chat_request("s/1", [{"from": "bot", "value": "x"}], [])


@pytest.fixture(scope="module")
def scored(tiny_models, corpus, tmp_path_factory):
    """A catalog of the corpus scored once in-process with the transformers backend: (path, counts)."""
    path = tmp_path_factory.mktemp("ppl-scored") / "c.duckdb"
    with make_catalog(path, corpus) as cat:
        counts = run_scoring(cat, scorer(tiny_models), use_ray=False, run_id="r1")
    return path, counts


def test_scores_equal_plain_forward_and_bad_samples_are_quarantined(tiny_models, corpus, scored, tmp_path):
    root, _, samples = corpus
    config = scorer(tiny_models)
    path = tmp_path / "c.duckdb"
    shutil.copy(scored[0], path)
    assert scored[1] == {"pending": 9, "scored": 6, "quarantined": 3}
    with Catalog(path) as cat:
        rows = {r["sample_id"]: r for r in cat.query("SELECT * FROM ppl_scores")}
        assert set(rows) == {s for s in samples if not s.startswith("bad/")}
        for sid, row in rows.items():
            conv, files = samples[sid]
            nll, n = reference_nll(tiny_models["qwen2vl"], conv, [root / f for f in files])
            assert row["n_tokens"] == n, sid
            assert row["mean_nll"] == pytest.approx(nll, rel=1e-5, abs=1e-6), sid
            assert row["ppl"] == pytest.approx(math.exp(nll), rel=1e-5), sid
            assert (row["scorer"], row["template_version"], row["text_scope"], row["backend"], row["run_id"]) == \
                ("tiny", TEMPLATE_VERSION, "answer", "transformers", "r1")
        refused = {(r["source"] + "/" + r["item"]): r for r in cat.query("SELECT * FROM quarantine")}
        assert {k: v["reason"] for k, v in refused.items()} == {
            "bad/broken": "media_decode_failed", "bad/missing": "media_missing", "bad/mismatch": "placeholder_mismatch"}
        assert all(r["stage"] == STAGE for r in refused.values())
        assert "broken.jpg" in refused["bad/broken"]["detail"]
        # a rerun finds nothing to do and writes nothing twice
        assert pending_samples(cat, config) == []
        assert run_scoring(cat, config, use_ray=False) == {"pending": 0, "scored": 0, "quarantined": 0}
        assert cat.scalar("SELECT count(*) FROM ppl_scores") == 6


def test_whole_text_scope_scores_user_turns_too(tiny_models, corpus, tmp_path):
    root, _, samples = corpus
    config = scorer(tiny_models)
    config.text_scope = "all"
    with make_catalog(tmp_path / "c.duckdb", corpus) as cat:
        run_scoring(cat, config, use_ray=False, sample_ids=["src2/text"])
        row = cat.query("SELECT * FROM ppl_scores")[0]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["qwen2vl"])
    conv = samples["src2/text"][0]
    assert row["text_scope"] == "all"
    assert row["n_tokens"] == sum(len(tok(t["value"], add_special_tokens=False)["input_ids"]) for t in conv)


def test_batched_equals_one_by_one(tiny_models, corpus, tmp_path):
    with make_catalog(tmp_path / "c.duckdb", corpus) as cat:
        from curation.perplexity import prepare

        work, _ = prepare(pending_samples(cat, scorer(tiny_models)))
    requests = [ChatRequest(w["sample_id"], json.loads(w["request_json"])) for w in work
                if not w["sample_id"].startswith("bad/")]
    batched = load_engine(scorer(tiny_models, batch_size=4).engine)
    single = load_engine(scorer(tiny_models, batch_size=1).engine)
    a = score_requests(batched, requests, "answer")
    b = [score_requests(single, [r], "answer")[0] for r in requests]
    assert [r["ok"] for r in a] == [r["ok"] for r in b] == [True] * len(requests)
    for x, y in zip(a, b):
        assert x["n_tokens"] == y["n_tokens"]
        assert x["mean_nll"] == pytest.approx(y["mean_nll"], rel=1e-6, abs=1e-7)


class _FakeEngine:
    """Returns fixed log-probs: for the checks of NaN/inf and of failure isolation."""

    def __init__(self, logprobs: dict[str, list[float]], fail: set[str] = frozenset()):
        self.logprobs, self.fail = logprobs, fail

    def score(self, requests, score_roles=("assistant",)):
        if any(r.request_id in self.fail for r in requests):
            raise EngineError("boom")
        return [PromptScore(r.request_id, list(range(len(self.logprobs[r.request_id]))),
                            self.logprobs[r.request_id], [False] + [True] * (len(self.logprobs[r.request_id]) - 1))
                for r in requests]


def test_nonfinite_scores_are_refused_and_one_failure_does_not_sink_the_batch():
    engine = _FakeEngine({"ok": [math.nan, -1.0, -3.0], "inf": [math.nan, -math.inf, -1.0],
                          "nan": [math.nan, math.nan, -1.0], "empty": [math.nan], "x": [math.nan, -1.0]},
                         fail={"x"})
    reqs = [ChatRequest(i, [{"role": "user", "content": "q"}]) for i in ("ok", "inf", "nan", "empty", "x")]
    out = {r["sample_id"]: r for r in score_requests(engine, reqs, "answer")}
    assert out["ok"]["ok"] and out["ok"]["mean_nll"] == pytest.approx(2.0) and out["ok"]["n_tokens"] == 2
    assert out["ok"]["ppl"] == pytest.approx(math.exp(2.0))
    assert (out["inf"]["reason"], out["nan"]["reason"]) == ("nonfinite_score", "nonfinite_score")
    assert out["empty"]["reason"] == "no_scored_tokens"
    assert out["x"]["reason"] == "score_failed" and "boom" in out["x"]["detail"]


def test_missing_checkpoint_fails_before_any_work(tiny_models, corpus, tmp_path):
    config = scorer(tiny_models)
    config.engine.model_path = tmp_path / "no-such-model"
    with make_catalog(tmp_path / "c.duckdb", corpus) as cat:
        with pytest.raises(EngineError, match="no-such-model"):
            run_scoring(cat, config, use_ray=False)
        assert cat.scalar("SELECT count(*) FROM quarantine") == 0
        assert cat.scalar("SELECT count(*) FROM ppl_scores") == 0


def test_ray_actor_pool_matches_in_process_and_resumes(tiny_models, corpus, scored, tmp_path, ray_local):
    config = scorer(tiny_models)
    with Catalog(scored[0], read_only=True) as cat:
        local = {r["sample_id"]: r["mean_nll"] for r in cat.query("SELECT * FROM ppl_scores")}
    with make_catalog(tmp_path / "ray.duckdb", corpus) as cat:
        # a first run that stopped after two samples, then the rest through Ray
        run_scoring(cat, config, use_ray=False, sample_ids=["src1/img", "src2/two"])
        counts = run_scoring(cat, config, use_ray=True)
        assert counts == {"pending": 7, "scored": 4, "quarantined": 3}
        remote = {r["sample_id"]: r["mean_nll"] for r in cat.query("SELECT * FROM ppl_scores")}
    assert remote.keys() == local.keys()
    for sid in local:
        assert remote[sid] == pytest.approx(local[sid], rel=1e-6), sid


def test_vllm_backend_equals_transformers_in_float32(tiny_models, scored, tmp_path):
    pytest.importorskip("vllm")
    vl = scorer(tiny_models, backend="vllm", max_model_len=512, max_images_per_prompt=2)
    vl.name = "tiny-vllm"
    shutil.copy(scored[0], tmp_path / "c.duckdb")
    with Catalog(tmp_path / "c.duckdb") as cat:
        assert run_scoring(cat, vl, use_ray=False)["scored"] == 6
        rows = cat.query("SELECT a.sample_id, a.mean_nll AS hf, b.mean_nll AS vl, a.n_tokens AS n_hf, "
                         "b.n_tokens AS n_vl FROM ppl_scores a JOIN ppl_scores b USING (sample_id) "
                         "WHERE a.scorer = 'tiny' AND b.scorer = 'tiny-vllm'")
    assert len(rows) == 6
    for r in rows:
        assert r["n_hf"] == r["n_vl"], r
        assert r["vl"] == pytest.approx(r["hf"], rel=1e-4, abs=1e-5), r


def test_interrupted_run_keeps_finished_batches_and_resumes(tiny_models, corpus, tmp_path, monkeypatch):
    import inference

    calls = {"n": 0, "die_at": 2}

    class DyingEngine:
        """Scores everything as two tokens of log-prob -1, -2; dies on its second call (a killed worker)."""

        def score(self, requests, score_roles=("assistant",)):
            calls["n"] += 1
            if calls["n"] == calls["die_at"]:
                raise KeyboardInterrupt
            return [PromptScore(r.request_id, [0, 1, 2], [math.nan, -1.0, -2.0], [False, True, True])
                    for r in requests]

        def close(self):
            pass

    monkeypatch.setattr(inference, "load_engine", lambda config: DyingEngine())
    config = scorer(tiny_models)  # rows_per_commit 4 = engine batch 4: one score call per committed unit
    with make_catalog(tmp_path / "c.duckdb", corpus) as cat:
        with pytest.raises(KeyboardInterrupt):
            run_scoring(cat, config, use_ray=False)
        # the first unit of 4, whole (scores, and the truncated JPEG refused by the decode stage); none of the second
        first = cat.scalar("SELECT count(*) FROM ppl_scores")
        decode_refused = cat.scalar("SELECT count(*) FROM quarantine WHERE reason = 'media_decode_failed'")
        assert first + decode_refused == 4
        calls["die_at"] = -1
        counts = run_scoring(cat, config, use_ray=False)
        assert counts["pending"] == 7 - 4 and counts["scored"] == 6 - first  # 7 reach the engines' stage, 6 scorable
        assert cat.scalar("SELECT count(*) FROM ppl_scores") == cat.scalar(
            "SELECT count(DISTINCT sample_id) FROM ppl_scores") == 6
        assert cat.scalar("SELECT count(*) FROM quarantine") == 3  # missing, mismatch, and the broken JPEG
        assert cat.scalar("SELECT min(mean_nll) FROM ppl_scores") == pytest.approx(1.5)
