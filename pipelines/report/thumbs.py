"""Thumbnails for the run report: an image scaled to a fixed height, a video as a strip of frames (the middle
of each of N equal parts, decoded with the processor's seeking frame reader, so an hour-long video costs a
few GOPs), both as JPEG bytes.

    python -c "from pipelines.report.thumbs import thumbnail; open('t.jpg','wb').write(thumbnail('video', 'a.mp4'))"
"""
from __future__ import annotations

import io

HEIGHT = 72
"""Thumbnail height in pixels (a video's strip: each frame this high)."""


def _scaled(picture):
    """A PIL image scaled to :data:`HEIGHT` pixels high, aspect kept."""
    from PIL import Image

    width = max(1, round(picture.width * HEIGHT / max(1, picture.height)))
    return picture.convert("RGB").resize((width, HEIGHT), Image.Resampling.BILINEAR)


def thumbnail(kind: str, path: str, frames: int = 4) -> bytes:
    """JPEG bytes of an image's thumbnail or a video's ``frames``-frame strip; raises ``OSError`` or
    ``model.preprocessing.MediaError`` on a missing or undecodable file."""
    from PIL import Image

    if kind == "image":
        with Image.open(path) as im:
            picture = _scaled(im)
    else:
        from model.media import frame_index, frames_at

        index = frame_index(path, path)
        n = len(index.times)
        picks = [min(n - 1, int((j + 0.5) * n / frames)) for j in range(frames)]
        shots = frames_at(path, index, index.offsets(picks), lambda rgb: _scaled(Image.fromarray(rgb)), path)
        gap = 3
        picture = Image.new("RGB", (sum(s.width for s in shots) + gap * (len(shots) - 1), HEIGHT), "white")
        x = 0
        for shot in shots:
            picture.paste(shot, (x, 0))
            x += shot.width + gap
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=80)
    return buf.getvalue()
