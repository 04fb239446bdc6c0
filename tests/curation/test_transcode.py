"""curation.transcode: shard images are checked with ingest's probe; a clip and its shard copy give the same
frames (one frame-count rule, model.preprocessing.resampled_frame_count) (serial-vs-Ray byte identity of transcoded
videos is tested with the shard build, tests/curation/shards/test_build_shards.py).

    pytest tests/curation/test_transcode.py -q
"""
from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np

import pytest
from PIL import Image, ImageFile

from curation.transcode import TranscodeConfig, check_image, transcode_video
from model.media import read_video
from model.preprocessing import MediaError


def test_check_image_refuses_a_truncated_file_even_when_pillow_is_told_to_accept_it(demo_corpus):
    """Shard building and ingest give one verdict; lmms-eval turns LOAD_TRUNCATED_IMAGES on process-wide."""
    path = demo_corpus / "image_captions" / "images" / "bad_truncated.jpg"
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(MediaError) as err:
            check_image(path)
        assert err.value.reason == "truncated_image" and str(path) in err.value.detail
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def test_check_image_describes_a_good_image_as_pillow_and_sha256_see_it(demo_corpus):
    path = sorted((demo_corpus / "image_captions" / "images").glob("cap_*.jpg"))[0]
    info = check_image(path)
    with Image.open(path) as im:
        assert (info.width, info.height, info.codec) == (*im.size, im.format)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and info.ext == "jpg"
    assert info.bytes == path.stat().st_size



@pytest.mark.parametrize("n_src, src_rate", [(120, Fraction(30000, 1001)), (61, Fraction(25))])
def test_a_clip_and_its_shard_copy_give_the_same_frames_and_chunks(tmp_path, n_src, src_rate):
    """Fractional durations: 120 frames at 29.97 fps last 4.004 s, 61 at 25 fps 2.44 s. At 2 fps the instants
    k/2 inside the clip are k = 0..8 (4.0 < 4.004) and k = 0..4 (2.0 < 2.44): 9 and 5 frames, counted by hand."""
    av = pytest.importorskip("av")
    src, dst = tmp_path / "src.mp4", tmp_path / "copy.mp4"
    with av.open(str(src), "w") as out:
        st = out.add_stream("mpeg4", rate=src_rate)
        st.width, st.height, st.pix_fmt = 32, 32, "yuv420p"
        for i in range(n_src):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 2 % 256, np.uint8), format="rgb24")
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    expected = {120: 9, 61: 5}[n_src]
    info = transcode_video(src, dst, TranscodeConfig(fps=2.0, gop=4))
    assert info.n_frames == expected
    plans = [read_video(p, 2.0, 4, 64, lambda a: a, str(p))[1] for p in (src, dst)]
    assert plans[0] == plans[1] and len(plans[0].chunk_positions) == math.ceil(expected / 4)
