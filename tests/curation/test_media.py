"""Media hashing and probing against independent truth: hashlib, the generator's parameters, frame-by-frame decoding.

    pytest tests/curation/test_media.py -q
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from demo.corpus import Scene, decompression_bomb_png, write_video
from curation.media import MAX_IMAGE_PIXELS, HASH_CHUNK, file_sha256, hash_and_probe
from model.preprocessing import MediaError


def test_streaming_sha256_equals_hashlib_over_the_whole_file(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * HASH_CHUNK + 12345)  # several chunks and a partial one
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_probe_matches_generation_truth(demo_corpus):
    truth = json.loads((demo_corpus / "corpus.json").read_text())["media"]
    checked = 0
    for rel, t in truth.items():
        if ".tar:" in rel:
            continue  # inside a tar: checked through ingest
        path = demo_corpus / rel
        info = hash_and_probe(path, t["kind"])
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (info.path, info.ext) == (str(path), path.suffix[1:])
        assert info.bytes == path.stat().st_size
        assert (info.width, info.height, info.n_frames, info.codec) == (t["width"], t["height"], t["n_frames"], t["codec"]), rel
        if t["kind"] == "video":
            assert info.fps == t["fps"]
            assert info.duration_s == pytest.approx(t["n_frames"] / t["fps"], abs=1e-6)
        checked += 1
    assert checked >= 40


@pytest.mark.parametrize("rel, kind, reason", [
    ("video_qa/videos/bad_truncated.mp4", "video", "undecodable_video"),
    ("video_qa/videos/bad_notvideo.mp4", "video", "not_a_video"),
    ("video_qa/videos/bad_zero.mp4", "video", "zero_byte"),
    ("video_qa/videos/does_not_exist.mp4", "video", "missing_media"),
    ("image_captions/images/bad_zero.jpg", "image", "zero_byte"),
    ("image_captions/images/bad_truncated.jpg", "image", "truncated_image"),
    ("image_captions/images/bad_truncated.png", "image", "truncated_image"),
    ("image_captions/images/bad_bomb.png", "image", "decompression_bomb"),
    ("video_qa/annotations.json", "image", "undecodable_image"),
])
def test_bad_media_reasons(demo_corpus, rel, kind, reason):
    with pytest.raises(MediaError) as e:
        hash_and_probe(demo_corpus / rel, kind)
    assert e.value.reason == reason and e.value.detail


def test_a_text_file_named_mp4_and_a_truncated_mp4_get_different_reasons(demo_corpus):
    truncated, text = (demo_corpus / "video_qa" / "videos" / f"bad_{n}.mp4" for n in ("truncated", "notvideo"))
    assert truncated.read_bytes()[4:8] == b"ftyp" and text.read_bytes().startswith(b"this is a text file")
    with pytest.raises(MediaError) as cut:
        hash_and_probe(truncated, "video")
    with pytest.raises(MediaError) as not_video:
        hash_and_probe(text, "video")
    assert (cut.value.reason, not_video.value.reason) == ("undecodable_video", "not_a_video")
    assert "mp4 container, truncated or damaged" in cut.value.detail
    assert "no video container signature (starts with b'this is a text f')" in not_video.value.detail


def test_image_just_over_the_pixel_limit_is_a_bomb_not_decoded(tmp_path):
    """Between the limit and 2x the limit Pillow only warns; we refuse it too."""
    side = int((MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    path = tmp_path / "big.png"
    path.write_bytes(decompression_bomb_png(side, side))
    with pytest.raises(MediaError) as e:
        hash_and_probe(path, "image")
    assert e.value.reason == "decompression_bomb"


def test_truncated_faststart_video_is_refused(tmp_path):
    """moov at the front: the index survives a cut, the frames do not."""
    import av

    path = tmp_path / "clip.mp4"
    scene = Scene("circle", "red", "blue", "left to right")
    write_video(path, scene, 96, 64, 12, 36)
    with av.open(str(path)) as src, av.open(str(tmp_path / "fast.mp4"), "w", options={"movflags": "faststart"}) as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        for packet in src.demux(s_in):
            if packet.dts is not None:
                packet.stream = s_out
                dst.mux(packet)
    data = (tmp_path / "fast.mp4").read_bytes()
    assert hash_and_probe(tmp_path / "fast.mp4", "video").n_frames == 36
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(MediaError) as e:
        hash_and_probe(tmp_path / "cut.mp4", "video")
    assert e.value.reason == "undecodable_video"


def test_truncated_image_is_refused_even_when_another_library_allows_truncated_loads(demo_corpus):
    """lmms-eval sets Pillow's process-wide LOAD_TRUNCATED_IMAGES at import; the probe must not care."""
    from PIL import ImageFile

    from curation.media import probe_image

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(MediaError) as err:
            probe_image(demo_corpus / "image_captions" / "images" / "bad_truncated.jpg")
        assert err.value.reason == "truncated_image"
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is left as it was found
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
