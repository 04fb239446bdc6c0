"""Image-caption pairs (paper App. A 2): N high-temperature captions per image, ranked, higher vs lower.

Candidates are scored by :class:`~curation.preference.scoring.CaptionScorer`; pairs are
best vs worst, second best vs second worst, ... (at most ``max_pairs``), each only
while ``chosen.score >= rejected.score + min_margin``. Empty captions and captions
whose judge rating failed are refused before ranking.

    outcome = decide_image_captions(inp, candidates, ImageCaptionConfig())   # candidates already scored
"""
from __future__ import annotations

from curation.preference.config import ImageCaptionConfig
from curation.preference.decisions import Candidate, DpoInput, Outcome, Pair


def refuse_empty(candidates: list[Candidate]) -> None:
    """Mark empty or whitespace-only captions refused (done before scoring, so they cost no judge call)."""
    for c in candidates:
        if c.is_empty:
            c.refuse("empty_generation")


def decide_image_captions(inp: DpoInput, candidates: list[Candidate], config: ImageCaptionConfig) -> Outcome:
    """Pair scored candidates high vs low with the configured margin."""
    outcome = Outcome(inp, candidates)
    ranked = sorted((c for c in candidates if c.status != "refused" and c.score is not None),
                    key=lambda c: (-c.score, c.candidate_id))
    for c in ranked:
        c.accept("ranked")
    pairs = []
    for i in range(config.max_pairs):
        j = len(ranked) - 1 - i
        if j <= i:
            break
        hi, lo = ranked[i], ranked[j]
        if hi.score < lo.score + config.min_margin:
            break
        pairs.append(Pair(hi, lo))
    if pairs:
        outcome.take(pairs)
        return outcome
    if len(ranked) < 2:
        reasons = sorted({c.reason for c in candidates if c.status == "refused"})
        if "judge_failed" in reasons:
            detail = next(c.detail for c in candidates if c.reason == "judge_failed")
            return outcome.no_pair("judge_failed", detail)
        if all(c.is_empty for c in candidates):
            return outcome.no_pair("empty_generations", f"all {len(candidates)} captions empty")
        return outcome.no_pair("too_few_candidates", f"{len(ranked)} scored; refused: {', '.join(reasons)}")
    return outcome.no_pair("below_margin", f"best {ranked[0].score:.3f} - worst {ranked[-1].score:.3f} "
                           f"< margin {config.min_margin}")
