"""QA acceptance, image-caption ranking and judges on hand-built generations (no model).

    pytest tests/curation/preference/test_decisions.py -q
"""
from __future__ import annotations

import math

import pytest

from inference import Completion, PromptScore
from curation.preference.config import ImageCaptionConfig, JudgeConfig, QAConfig, Scorer, VideoCaptionConfig
from curation.preference.decisions import Candidate, DpoInput
from curation.preference.image_captions import decide_image_captions, refuse_empty
from curation.preference.judges import JudgeItem, ModelJudge, RateItem, RoutedJudge, Verdict
from curation.preference.qa import decide_qa
from curation.preference.scoring import CaptionScorer
from curation.preference.text import coverage, repetition
from curation.preference.video_captions import decide_video_captions
from curation.preference.segments import ShuffledVideo

QA = DpoInput("video_qa/q1", "qa", "What shape moves in the video?", "A red circle.", [("video", "v.mp4")], ["h"])
CFG = QAConfig(min_words=3, max_words=20, brief_words=2)


def stop(text):
    return Completion(text, "stop", len(text.split()) + 1)


def cut(text):
    return Completion(text, "length", 64)


def run_qa(positives, negatives, judge=None, inp=QA):
    return decide_qa(inp, positives, negatives, judge or RoutedJudge(None, 3), CFG, seeds=(1, 2))


def test_text_measures_by_hand():
    # reference content words {red, circle, plain, blue, background}; candidate mentions red, circle, blue
    assert coverage("a red circle near blue water", "A red circle on a plain blue background.") == pytest.approx(3 / 5)
    assert repetition("a b c a b c") == pytest.approx(1 - 3 / 4)  # 3-grams abc bca cab abc: one repeat of 4
    assert repetition("one two") == 0.0


def test_qa_correct_terminated_vs_one_word():
    out = run_qa([stop("It is a red circle moving.")], [stop("Circle.")])
    assert out.reason == "paired" and len(out.pairs) == 1
    pair = out.pairs[0]
    assert pair.chosen.reason == "correct_terminated" and pair.rejected.reason == "too_brief"
    assert pair.rejected.temperature > pair.chosen.temperature


def test_truncated_correct_answer_is_not_a_positive():
    out = run_qa([cut("It is a red circle and it keeps moving and moving")], [stop("A blue square, I think.")])
    assert out.pairs == [] and out.reason == "no_valid_positive"
    assert out.candidates[0].status == "refused" and out.candidates[0].reason == "not_terminated"
    assert out.candidates[1].reason == "incorrect" and out.candidates[1].status == "valid_unused"


def test_one_word_correct_answer_is_a_valid_negative_and_correct_long_one_is_not():
    out = run_qa([stop("The red circle moves.")], [stop("red circle"), stop("There is a red circle here.")])
    assert out.reason == "paired"
    assert out.pairs[0].rejected.text == "red circle" and out.pairs[0].rejected.reason == "too_brief"
    assert out.candidates[2].reason == "correct_not_brief" and out.candidates[2].status == "refused"


def test_positive_too_short_too_long_incorrect_and_empty():
    out = run_qa([stop("red circle"), stop("a red circle " + "very " * 30), stop("A green square moves."),
                  stop("   ")], [stop("No.")])
    reasons = [c.reason for c in out.candidates]
    assert reasons[:4] == ["too_short", "too_long", "incorrect", "empty_generation"]
    assert out.reason == "no_valid_positive" and "too_short=1" in out.detail

    empty = run_qa([stop(" ")], [stop("\n")])
    assert empty.reason == "empty_generations" and not empty.pairs


def test_open_ended_reference_without_judge_model_fails_with_reason():
    long_ref = DpoInput("s/2", "qa", "Where does it go?", "It moves from left to right across the frame.", [], [])
    out = run_qa([stop("It goes from the left side to the right side.")], [stop("Up there somewhere, maybe.")],
                 inp=long_ref)
    assert out.reason == "judge_failed" and "judge_unavailable" in out.detail and not out.pairs


class FakeEngine:
    """Returns canned replies / per-option log-probs; records what it was asked."""

    def __init__(self, replies=None, option_logprobs=None, fail=False):
        self.replies, self.option_logprobs, self.fail = replies or [], option_logprobs or {}, fail
        self.config = type("C", (), {"model_path": "judge-model", "modalities": ["text"]})()

    def generate(self, requests, params):
        if self.fail:
            raise RuntimeError("judge out of memory")
        from inference import GenerationResult
        return [GenerationResult(r.request_id, [Completion(self.replies[i % len(self.replies)], "stop", 2)], 10)
                for i, r in enumerate(requests)]

    def score(self, requests, score_roles=("assistant",)):
        out = []
        for r in requests:
            option = r.messages[-1]["content"]
            lp = self.option_logprobs[option]
            out.append(PromptScore(r.request_id, [1, 2, 3], [math.nan, -0.5, lp], [False, False, True]))
        return out


def test_model_judge_generate_logprob_and_failure():
    items = [JudgeItem("q", "long reference answer here", "a"), JudgeItem("q", "long reference answer here", "b")]
    v = ModelJudge(FakeEngine(replies=["Yes, it agrees.", "maybe"]), JudgeConfig()).judge(items)
    assert v[0].correct is True and v[1].correct is None and "unparseable" in v[1].detail
    v = ModelJudge(FakeEngine(option_logprobs={"yes": -3.0, "no": -1.0}), JudgeConfig(mode="logprob")).judge(items)
    assert [x.correct for x in v] == [False, False]
    v = ModelJudge(FakeEngine(fail=True), JudgeConfig()).judge(items)
    assert all(x.correct is None and "out of memory" in x.detail for x in v)
    # Ratings: "4" on a 1..5 scale -> 0.75; logprob mode: expected rating over softmax, by hand.
    r = ModelJudge(FakeEngine(replies=["4 out of 5"]), JudgeConfig(rating_scale=5)).rate([RateItem("d", "cap")])
    assert r[0].score == pytest.approx(0.75)
    lps = {"1": -5.0, "2": -5.0, "3": -1.0, "4": -1.0, "5": -5.0}
    r = ModelJudge(FakeEngine(option_logprobs=lps), JudgeConfig(mode="logprob")).rate([RateItem("d", "cap")])
    w = {k: math.exp(v) for k, v in lps.items()}
    expected = sum(int(k) * x for k, x in w.items()) / sum(w.values())
    assert r[0].score == pytest.approx((expected - 1) / 4)


def test_routed_judge_sends_long_references_to_the_model():
    model = ModelJudge(FakeEngine(replies=["no"]), JudgeConfig())
    judge = RoutedJudge(model, short_reference_words=3)
    v = judge.judge([JudgeItem("q", "Red.", "it is red"), JudgeItem("q", "It moves from left to right.", "up")])
    assert v[0] == Verdict(True, "normalized_match") and v[1].correct is False and v[1].judge == model.name


IMG = DpoInput("image_captions/c1", "image_caption", "Describe this image in detail.",
               "A red circle on a plain blue background.", [("image", "i.jpg")], ["h"])


def caption_candidates(texts_and_finish):
    return [Candidate.from_completion("sample", k, Completion(t, f, 10), 1.0, 5)
            for k, (t, f) in enumerate(texts_and_finish)]


def test_image_caption_pairs_respect_margin_and_penalties():
    cfg = ImageCaptionConfig(scorers=[Scorer(name="coverage", weight=1.0), Scorer(name="non_termination", weight=-1.0),
                                      Scorer(name="repetition", weight=-1.0)], min_margin=0.3, max_pairs=2)
    cands = caption_candidates([
        ("A red circle on a plain blue background.", "stop"),          # coverage 1
        ("A red circle sits in the middle.", "stop"),                    # 2/5
        ("red red red red red red red red", "length"),                   # 1/5 - 1 - repetition 5/6
        ("   ", "stop"),                                                  # refused
        ("A blue background.", "stop"),                                  # 2/5
    ])
    refuse_empty(cands)
    CaptionScorer(cfg.scorers).score([IMG], [cands], cfg.prompt)
    assert cands[0].score == pytest.approx(1.0)
    assert cands[2].score == pytest.approx(1 / 5 - 1 - 5 / 6)
    out = decide_image_captions(IMG, cands, cfg)
    assert cands[3].reason == "empty_generation" and cands[3].status == "refused"
    # best vs worst; the 2nd pair (sample-1 vs sample-4, both 2/5) is below the margin and is not made
    assert [(p.chosen.candidate_id, p.rejected.candidate_id) for p in out.pairs] == [("sample-0", "sample-2")]
    for p in out.pairs:
        assert p.chosen.score >= p.rejected.score + cfg.min_margin

    flat = caption_candidates([("A red circle.", "stop"), ("A red circle!", "stop")])
    CaptionScorer(cfg.scorers).score([IMG], [flat], cfg.prompt)
    assert decide_image_captions(IMG, flat, cfg).reason == "below_margin"


def test_image_caption_judge_failure_refuses_candidates():
    cfg = ImageCaptionConfig(min_margin=0.0)
    cands = caption_candidates([("A red circle.", "stop"), ("A square.", "stop")])
    CaptionScorer(cfg.scorers, ModelJudge(FakeEngine(replies=["excellent"]), JudgeConfig())).score(
        [IMG], [cands], cfg.prompt)
    out = decide_image_captions(IMG, cands, cfg)
    assert out.reason == "judge_failed" and all(c.reason == "judge_failed" for c in cands)


def test_video_caption_decisions(tmp_path):
    inp = DpoInput("k/1", "video_caption", "Describe this video in detail.", "ref", [("video", "v.mp4")], ["h"])
    shuffled = ShuffledVideo(tmp_path / "v.mp4", tmp_path / "s.mp4", (2, 0, 3, 1), ((0, 4), (4, 8), (8, 12), (12, 16)),
                             16, 8, 2.0, "yuv420p")
    cfg = VideoCaptionConfig()
    ok = decide_video_captions(inp, stop("A circle moves left to right."), stop("A circle jumps around."),
                               shuffled, cfg, seed=3, shuffled_seed=3)
    assert ok.reason == "paired" and ok.pairs[0].chosen.pool == "original" and ok.audit_path.endswith("s.mp4")
    assert ok.extra["permutation"] == [2, 0, 3, 1]
    same = decide_video_captions(inp, stop("A circle moves."), stop("a circle moves"), shuffled, cfg,
                                 seed=3, shuffled_seed=3)
    assert same.reason == "shuffled_identical_to_original"
    loose = decide_video_captions(inp, cut("A circle moves and moves and"), stop("x y z"), shuffled, cfg,
                                  seed=3, shuffled_seed=3)
    assert loose.reason == "original_not_terminated"


class OrderBlindPolicy:
    """A policy whose caption depends only on the sampling seed, never on the frames: the worst case for
    shuffled-segment negatives. Records each call's (video, seed)."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.config = type("C", (), {"model_path": "policy", "modalities": ["text", "video"]})()

    def generate(self, requests, params):
        from inference import GenerationResult
        out = []
        for r in requests:
            (kind, video), = r.media()
            self.calls.append((video, params.seed))
            out.append(GenerationResult(r.request_id, [Completion(f"caption drawn with seed {params.seed}.", "stop", 6)], 9))
        return out


@pytest.mark.parametrize("seeds", ["independent", "shared"])
def test_video_caption_seeds_independent_or_shared(tmp_path, seeds):
    """Independent seeds (the paper's recipe) pair even an order-blind policy's captions; shared seeds
    isolate the frame order, so that policy's two captions are identical and refused."""
    from test_segments import write_video

    from curation.preference.build import Builder
    from curation.preference.config import DpoConfig

    video = tmp_path / "v.mp4"
    write_video(video, 32)
    inp = DpoInput("k/1", "video_caption", "Describe this video in detail.", "ref", [("video", str(video))], ["h"])
    policy = OrderBlindPolicy()
    cfg = DpoConfig.model_validate({"video_caption": {"seeds": seeds, "min_words": 1}})
    out, = Builder(cfg, policy, None, tmp_path / "audit").decide("video_caption", [inp])
    (orig_video, orig_seed), (shuf_video, shuf_seed) = policy.calls
    assert orig_video == str(video) and shuf_video == out.audit_path != str(video)
    chosen, rejected = out.candidates
    assert (chosen.seed, rejected.seed) == (orig_seed, shuf_seed)  # what was drawn is what is recorded
    if seeds == "shared":
        assert orig_seed == shuf_seed and out.reason == "shuffled_identical_to_original" and out.pairs == []
    else:
        assert orig_seed != shuf_seed and out.reason == "paired"
        assert out.pairs[0].chosen.text == f"caption drawn with seed {orig_seed}."
