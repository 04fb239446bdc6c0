"""Video-caption pairs (paper App. A 3): caption of the video (chosen) vs caption of its shuffled copy (rejected).

The shuffled copy is made by :func:`curation.preference.segments.shuffle_segments` (four equal
segments, seeded non-identity permutation) and kept as an audit artifact. Both
captions are sampled with the same parameters, with independent or shared seeds
(``VideoCaptionConfig.seeds``). The chosen caption must be
non-empty, at least ``min_words`` long and (``require_terminated``) end by EOS; the
rejected one must be non-empty and differ from the chosen text.

    shuffled = shuffle_for(inp, out_dir, config, seed)            # SegmentRefusal on a bad video
    outcome = decide_video_captions(inp, original, shuffled_caption, shuffled, config, seed, shuffled_seed)
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from inference import Completion
from curation.preference.config import VideoCaptionConfig
from curation.preference.decisions import Candidate, DpoInput, Outcome, Pair
from core.text import normalize_answer, words
from curation.preference.segments import ShuffledVideo, shuffle_segments


def shuffle_for(inp: DpoInput, out_dir: Path, config: VideoCaptionConfig, seed: int) -> ShuffledVideo:
    """The input's shuffled-segment video under ``out_dir`` (one file per sample; the name hashes its id)."""
    kind, path = inp.media[0]
    if kind != "video":
        raise ValueError(f"{inp.sample_id}: the video-caption domain needs a video, got {kind}")
    name = hashlib.sha256(inp.sample_id.encode()).hexdigest()[:24] + ".mp4"
    return shuffle_segments(path, out_dir / name, seed=seed, key=inp.sample_id, n_segments=config.n_segments,
                            min_frames_per_segment=config.min_frames_per_segment)


def decide_video_captions(inp: DpoInput, original: Completion, shuffled_caption: Completion,
                          shuffled: ShuffledVideo, config: VideoCaptionConfig, seed: int,
                          shuffled_seed: int) -> Outcome:
    """``seed``/``shuffled_seed``: the sampling seeds of the two captions (equal when seeds are shared)."""
    temperature = config.sampling.temperature
    chosen = Candidate.from_completion("original", 0, original, temperature, seed)
    rejected = Candidate.from_completion("shuffled", 0, shuffled_caption, temperature, shuffled_seed)
    outcome = Outcome(inp, [chosen, rejected], audit_path=str(shuffled.path),
                      extra={"permutation": list(shuffled.permutation), "segments": [list(s) for s in shuffled.segments],
                             "n_frames": shuffled.n_frames, "duration_s": shuffled.duration_s})
    n_words = len(words(chosen.text))
    if chosen.is_empty:
        chosen.refuse("empty_generation")
    elif config.require_terminated and chosen.finish_reason != "stop":
        chosen.refuse("not_terminated", f"finish_reason={chosen.finish_reason} after {chosen.n_tokens} tokens")
    elif n_words < config.min_words:
        chosen.refuse("too_short", f"{n_words} words < {config.min_words}")
    else:
        chosen.accept("original_order")
    if rejected.is_empty:
        rejected.refuse("empty_generation")
    elif normalize_answer(rejected.text) == normalize_answer(chosen.text):
        rejected.refuse("identical_to_original")
    else:
        rejected.accept("shuffled_order")
    if chosen.status == "refused":
        return outcome.no_pair(f"original_{chosen.reason}", chosen.detail)
    if rejected.status == "refused":
        return outcome.no_pair(f"shuffled_{rejected.reason}", rejected.detail)
    outcome.take([Pair(chosen, rejected)])
    return outcome
