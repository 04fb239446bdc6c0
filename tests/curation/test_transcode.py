"""curation.transcode: shard images are checked with ingest's probe (serial-vs-Ray byte identity of transcoded
videos is tested with the shard build, tests/curation/shards/test_build_shards.py).

    pytest tests/curation/test_transcode.py -q
"""
from __future__ import annotations

import hashlib

import pytest
from PIL import Image, ImageFile

from curation.transcode import check_image
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

