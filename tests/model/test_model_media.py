"""model/media.py: decoded images are writable arrays, so the processor's torch.from_numpy never warns."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from model.media import load_image


def test_a_decoded_image_is_a_writable_copy_with_the_pixels_pil_reads():
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    out = load_image(buf.getvalue(), "x.png")
    assert out.flags.writeable and out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels)  # PNG is lossless: the stock encoder's input comes back
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "The given NumPy array is not writable" would raise here
        torch.from_numpy(out)
