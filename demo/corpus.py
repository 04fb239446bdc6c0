"""A small, deterministic demo corpus shaped like the paper's training mixtures (Appendix A).

    mavors demo-data mavors-work/demo --seed 0        # ~2 MB, a few seconds on 2 cores

Writes, under DIR:

* ``video_qa/``        LLaVA-Video-style multi-turn video QA (``llava_json``, a JSON list);
* ``image_captions/``  LAION/CC-style image captions (``caption_jsonl``) and ``image_captions_parquet/``;
* ``image_qa/``        LLaVA-OneVision-style image QA, one multi-image item (``llava_json`` as JSONL);
* ``kinetics_like/``   videos whose "captions" are bare action labels (what caption synthesis replaces);
* ``wds_images/``      a WebDataset tar as img2dataset writes it (``key.jpg`` + ``key.txt`` + ``key.json``);
* ``composite/``       new texts on media of the other sources: byte-identical reuse (same file or a
  copy) and near duplicates (resized/re-encoded), recorded in ``planted_duplicates.json``;
* ``manifests/*.yaml`` one source manifest per set; ``corpus.json`` the generation truth
  (per media file: kind, size, fps, frames, codec; per refused item: the expected quarantine reason).

Videos are moving coloured shapes, encoded with PyAV (h264 or mpeg4) at varied size,
aspect ratio, frame rate and length; captions and answers describe what is really drawn.
Each bad-input kind appears once: zero-byte, truncated JPEG/PNG, decompression bomb,
truncated / non-video MP4, missing media, non-UTF-8 and malformed JSON lines, a
conversation without an answer, a placeholder mismatch, tar members escaping the folder.
"""
from __future__ import annotations

import io
import json
import random
import shutil
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square")
DIRECTIONS = {  # name -> (start (x, y), end (x, y)) as fractions of the frame
    "left to right": ((0.15, 0.5), (0.85, 0.5)),
    "right to left": ((0.85, 0.5), (0.15, 0.5)),
    "top to bottom": ((0.5, 0.15), (0.5, 0.85)),
    "bottom to top": ((0.5, 0.85), (0.5, 0.15)),
    "top left to bottom right": ((0.15, 0.15), (0.85, 0.85)),
}
VIDEO_SIZES = ((64, 48), (96, 64), (128, 72), (192, 108), (112, 112), (64, 112), (160, 96))
VIDEO_FPS = (8, 12, 15, 24, 30)
IMAGE_SIZES = ((64, 64), (96, 72), (128, 96), (72, 128), (160, 120), (200, 100))


@dataclass
class Scene:
    """What a clip or picture shows: one shape of one colour moving (or placed) on a background."""

    shape: str
    color: str
    background: str
    direction: str

    def caption(self, kind: str) -> str:
        if kind == "image":
            return f"A {self.color} {self.shape} on a plain {self.background} background."
        return (f"A {self.color} {self.shape} moves steadily from {self.direction} across a plain "
                f"{self.background} background; nothing else changes in the scene.")

    def qa(self) -> list[tuple[str, str]]:
        return [
            (f"What shape moves in the video?", f"A {self.color} {self.shape}."),
            ("In which direction does it move?", f"It moves from {self.direction}."),
            ("What colour is the background?", f"The background is {self.background}."),
        ]


def random_scene(rng: random.Random) -> Scene:
    color, background = rng.sample(sorted(COLORS), 2)
    return Scene(rng.choice(SHAPES), color, background, rng.choice(sorted(DIRECTIONS)))


def draw(scene: Scene, width: int, height: int, t: float) -> np.ndarray:
    """One RGB frame, (H, W, 3) uint8, with the shape at fraction ``t`` of its path."""
    (x0, y0), (x1, y1) = DIRECTIONS[scene.direction]
    cx, cy = (x0 + (x1 - x0) * t) * width, (y0 + (y1 - y0) * t) * height
    r = max(4.0, 0.18 * min(width, height))
    ys, xs = np.mgrid[0:height, 0:width]
    if scene.shape == "circle":
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    else:
        mask = (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = COLORS[scene.background]
    frame[mask] = COLORS[scene.color]
    return frame


def _grain(frame: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Add Gaussian grain (std ``noise`` in 0..255 units): camera-like texture that makes files realistically large."""
    if not noise:
        return frame
    grain = np.random.default_rng(seed).normal(0.0, noise, frame.shape)
    return np.clip(frame + grain, 0, 255).astype(np.uint8)


def write_video(path: Path, scene: Scene, width: int, height: int, fps: int, n_frames: int,
                codec: str = "h264", noise: float = 0.0, keyint: int | None = None) -> dict:
    """Encode a clip with PyAV; returns its generation truth (kind, size, fps, frames, codec).

    ``keyint``: frames between h264 keyframes (None: x264's default, 250: a short clip is one GOP)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1  # single-threaded encoding: identical bytes every run
        if codec == "h264":
            stream.options = {"preset": "ultrafast", "crf": "28", "bf": "0", **({"g": str(keyint)} if keyint else {})}
        for i in range(n_frames):
            pixels = _grain(draw(scene, width, height, i / max(1, n_frames - 1)), noise, i)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"kind": "video", "width": width, "height": height, "fps": fps, "n_frames": n_frames,
            "duration_s": n_frames / fps, "codec": codec}


def write_image(path: Path, scene: Scene, width: int, height: int, noise: float = 0.0) -> dict:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(_grain(draw(scene, width, height, 0.5), noise, 0))
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    im.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return {"kind": "image", "width": width, "height": height, "n_frames": 1, "codec": fmt}


def decompression_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A ~1 KB PNG that declares 30000x30000 pixels (900 MP): opening it must be refused, not decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _Corpus:
    """Accumulates files, annotations, expected refusals and planted duplicates while generating."""

    def __init__(self, root: Path, seed: int):
        self.root, self.rng = root, random.Random(seed)
        self.media: dict[str, dict] = {}          # relative path -> generation truth
        self.scenes: dict[str, Scene] = {}        # relative path -> what it shows
        self.quarantine: dict[str, str] = {}      # sample_id -> expected reason
        self.exact: dict[str, set[str]] = {}      # relative media path -> sample ids using those bytes
        self.near: list[dict] = []

    def video(self, rel: str, *, seconds: float | None = None, fps: int | None = None,
              size: tuple[int, int] | None = None, codec: str | None = None) -> str:
        scene = random_scene(self.rng)
        fps = fps or self.rng.choice(VIDEO_FPS)
        width, height = size or self.rng.choice(VIDEO_SIZES)
        seconds = seconds or self.rng.choice((1.0, 1.5, 2.0, 2.5, 3.0, 4.0))
        codec = codec or self.rng.choice(("h264", "h264", "mpeg4"))
        self.media[rel] = write_video(self.root / rel, scene, width, height, fps, round(seconds * fps), codec)
        self.scenes[rel] = scene
        return rel

    def image(self, rel: str) -> str:
        scene = random_scene(self.rng)
        width, height = self.rng.choice(IMAGE_SIZES)
        self.media[rel] = write_image(self.root / rel, scene, width, height)
        self.scenes[rel] = scene
        return rel

    def bad(self, rel: str, data: bytes) -> str:
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).write_bytes(data)
        return rel

    def truncated(self, rel: str, of: str, keep: float) -> str:
        data = (self.root / of).read_bytes()
        return self.bad(rel, data[: int(len(data) * keep)])

    def use(self, rel: str, sample_id: str) -> None:
        self.exact.setdefault(rel, set()).add(sample_id)


def _qa_conversation(tag: str, scene: Scene, rng: random.Random, n_turns: int) -> list[dict]:
    turns = []
    for i, (q, a) in enumerate(rng.sample(scene.qa(), n_turns)):
        turns += [{"from": "human", "value": (f"{tag}\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    return turns


def _write_jsonl(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _j(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _manifest(root: Path, name: str, **fields) -> None:
    path = root / "manifests" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# Demo source '{name}' (generated by `mavors demo-data`); paths are relative to this file.\n"
    path.write_text(head + yaml.safe_dump({"name": name, **fields}, sort_keys=False))


def _video_qa(c: _Corpus) -> None:
    """Video QA (LLaVA-Video-178K style): JSON list, multi-turn."""
    root = c.root
    items = []
    clips = [c.video(f"video_qa/videos/vqa_{i:02d}.mp4", seconds=(2.0 if i < 4 else None)) for i in range(8)]
    clips.append(c.video("video_qa/videos/vqa_long.mp4", seconds=24.0, fps=8, size=(64, 48), codec="h264"))
    for i, rel in enumerate(clips):
        sid = f"vqa-{i:04d}"
        items.append({"id": sid, "video": rel.removeprefix("video_qa/"), "data_source": "demo",
                      "conversations": _qa_conversation("<video>", c.scenes[rel], c.rng, 1 + i % 3)})
        c.use(rel, f"video_qa/{sid}")
    good = clips[0]
    for sid, rel, data, reason in (
        ("vqa-bad-truncated", "video_qa/videos/bad_truncated.mp4", None, "undecodable_video"),
        ("vqa-bad-notvideo", "video_qa/videos/bad_notvideo.mp4", b"this is a text file, not an mp4\n" * 20,
         "not_a_video"),
        ("vqa-bad-zero", "video_qa/videos/bad_zero.mp4", b"", "zero_byte"),
        ("vqa-bad-missing", "video_qa/videos/does_not_exist.mp4", None, "missing_media"),
    ):
        if sid == "vqa-bad-truncated":
            c.truncated(rel, good, 0.6)
        elif data is not None:
            c.bad(rel, data)
        items.append({"id": sid, "video": rel.removeprefix("video_qa/"),
                      "conversations": _qa_conversation("<video>", c.scenes[good], c.rng, 1)})
        c.quarantine[f"video_qa/{sid}"] = reason
    items.append({"id": "vqa-bad-noanswer", "video": clips[1].removeprefix("video_qa/"),
                  "conversations": [{"from": "human", "value": "<video>\nWhat happens in this video?"}]})
    c.quarantine["video_qa/vqa-bad-noanswer"] = "no_answer_turn"
    (root / "video_qa" / "annotations.json").write_text(json.dumps(items, indent=1))
    _manifest(root, "video_qa", modality="video", task="qa", format="llava_json", path="../video_qa/annotations.json",
              media_root="../video_qa", stage_hints=["2"], license="CC-BY-4.0 (synthetic demo)",
              notes="LLaVA-Video-178K-style open-ended video QA; includes one corrupt file of each video kind.")


def _image_captions(c: _Corpus) -> None:
    """Image captions (LAION/CC style): JSONL with a local path and a caption."""
    root = c.root
    lines = []
    for i in range(10):
        rel = c.image(f"image_captions/images/cap_{i:02d}.{'png' if i % 3 == 0 else 'jpg'}")
        lines.append(_j({"id": f"cap-{i:04d}", "media": rel.removeprefix("image_captions/"),
                         "caption": c.scenes[rel].caption("image"), "width": c.media[rel]["width"]}))
        c.use(rel, f"image_captions/cap-{i:04d}")
    jpg = "image_captions/images/cap_01.jpg"
    png = "image_captions/images/cap_00.png"
    for sid, rel, reason in (
        ("cap-bad-zero", c.bad("image_captions/images/bad_zero.jpg", b""), "zero_byte"),
        ("cap-bad-truncjpg", c.truncated("image_captions/images/bad_truncated.jpg", jpg, 0.55), "truncated_image"),
        ("cap-bad-truncpng", c.truncated("image_captions/images/bad_truncated.png", png, 0.55), "truncated_image"),
        ("cap-bad-bomb", c.bad("image_captions/images/bad_bomb.png", decompression_bomb_png()), "decompression_bomb"),
    ):
        lines.append(_j({"id": sid, "media": rel.removeprefix("image_captions/"), "caption": "A broken picture."}))
        c.quarantine[f"image_captions/{sid}"] = reason
    lines.insert(3, '{"id": "cap-bad-utf8", "media": "images/cap_03.jpg", "caption": "caf\xe9"}'.encode("latin-1"))
    lines.insert(6, b'{"id": "cap-bad-json", "media": "images/cap_04.jpg", "caption": ')
    c.quarantine["image_captions/captions.jsonl:4"] = "not_utf8"  # FILE:LINE of a line that does not parse
    c.quarantine["image_captions/captions.jsonl:7"] = "bad_json"
    _write_jsonl(root / "image_captions" / "captions.jsonl", lines)
    _manifest(root, "image_captions", modality="image", task="caption", format="caption_jsonl",
              path="../image_captions/captions.jsonl", stage_hints=["1"], license="CC-BY-4.0 (synthetic demo)",
              notes="LAION/CC-style alt-text captions; one bad file and one bad line of each kind.")


def _image_captions_parquet(c: _Corpus) -> None:
    """The same layout as Parquet (img2dataset's other output)."""
    root = c.root
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(6):
        rel = c.image(f"image_captions_parquet/images/pq_{i:02d}.jpg")
        rows.append({"key": f"{i:09d}", "image_path": rel.removeprefix("image_captions_parquet/"),
                     "text": c.scenes[rel].caption("image")})
        c.use(rel, f"image_captions_parquet/{i:09d}")
    (root / "image_captions_parquet").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "image_captions_parquet" / "captions.parquet")
    _manifest(root, "image_captions_parquet", modality="image", task="caption", format="caption_parquet",
              path="../image_captions_parquet/captions.parquet", stage_hints=["1"],
              fields={"id": "key", "media": "image_path", "caption": "text"},
              license="CC-BY-4.0 (synthetic demo)", notes="img2dataset-style parquet: key, image_path, text.")


def _image_qa(c: _Corpus) -> None:
    """Image QA (LLaVA-OneVision style): JSONL, one multi-image item."""
    root = c.root
    lines = []
    pics = [c.image(f"image_qa/images/iqa_{i:02d}.jpg") for i in range(6)]
    for i, rel in enumerate(pics):
        s = c.scenes[rel]
        conv = [{"from": "human", "value": "<image>\nWhat shape is in the picture, and what colour is it?"},
                {"from": "gpt", "value": f"A {s.color} {s.shape}."}]
        if i == 1:  # no placeholder: LLaVA puts the image before the first question
            conv[0]["value"] = conv[0]["value"].removeprefix("<image>\n")
        lines.append(_j({"id": f"iqa-{i:04d}", "image": rel.removeprefix("image_qa/"), "conversations": conv}))
        c.use(rel, f"image_qa/iqa-{i:04d}")
    a, b = c.scenes[pics[2]], c.scenes[pics[3]]
    lines.append(_j({"id": "iqa-multi", "image": [pics[2].removeprefix("image_qa/"), pics[3].removeprefix("image_qa/")],
                     "conversations": [{"from": "human", "value": "<image>\n<image>\nDo the two pictures show the same shape?"},
                                       {"from": "gpt", "value": "Yes." if a.shape == b.shape else
                                        f"No: the first shows a {a.shape}, the second a {b.shape}."}]}))
    c.use(pics[2], "image_qa/iqa-multi")
    c.use(pics[3], "image_qa/iqa-multi")
    lines.append(_j({"id": "iqa-bad-noanswer", "image": pics[0].removeprefix("image_qa/"),
                     "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "  "}]}))
    lines.append(_j({"id": "iqa-bad-placeholders", "image": pics[0].removeprefix("image_qa/"),
                     "conversations": [{"from": "human", "value": "<image>\n<image>\nCompare them."},
                                       {"from": "gpt", "value": "They match."}]}))
    lines.append(_j({"id": "iqa-bad-missing", "image": "images/gone.jpg",
                     "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A shape."}]}))
    c.quarantine.update({"image_qa/iqa-bad-noanswer": "no_answer_turn",
                         "image_qa/iqa-bad-placeholders": "placeholder_mismatch",
                         "image_qa/iqa-bad-missing": "missing_media"})
    _write_jsonl(root / "image_qa" / "annotations.jsonl", lines)
    _manifest(root, "image_qa", modality="image", task="qa", format="llava_json", path="../image_qa/annotations.jsonl",
              stage_hints=["1.5", "2"], license="CC-BY-4.0 (synthetic demo)",
              notes="LLaVA-OneVision-style image QA (JSONL), one multi-image item.")


def _kinetics_like(c: _Corpus) -> None:
    """Kinetics-like: label-only "captions" that caption synthesis should replace."""
    root = c.root
    lines = []
    for i in range(6):
        rel = c.video(f"kinetics_like/videos/kin_{i:02d}.mp4")
        s = c.scenes[rel]
        lines.append(_j({"id": f"kin-{i:04d}", "media": rel.removeprefix("kinetics_like/"),
                         "caption": f"{s.shape} moving {s.direction.split(' to ')[-1]}"}))
        c.use(rel, f"kinetics_like/kin-{i:04d}")
    _write_jsonl(root / "kinetics_like" / "labels.jsonl", lines)
    _manifest(root, "kinetics_like", modality="video", task="caption", format="caption_jsonl",
              path="../kinetics_like/labels.jsonl", stage_hints=["1"], license="CC-BY-4.0 (synthetic demo)",
              caption_prompt="What action does this {kind} show?",
              notes="Kinetics-like: the only text is an action label; captions need synthesis (paper §5.1).")


def _wds_images(c: _Corpus) -> None:
    """WebDataset tar as img2dataset writes it."""
    root = c.root
    tar_path = root / "wds_images" / "shard-000000.tar"
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    staging = root / "wds_images" / ".staging"

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(5):
            rel = c.image(f"wds_images/.staging/{i:09d}.jpg")
            key = f"{i:09d}"
            cap = c.scenes[rel].caption("image")
            add(tar, f"{key}.jpg", (root / rel).read_bytes())
            add(tar, f"{key}.txt", cap.encode())
            add(tar, f"{key}.json", _j({"key": key, "caption": cap, "status": "success"}))
            c.media[f"wds_images/shard-000000.tar:{key}.jpg"] = c.media.pop(rel)
            c.use(f"wds_images/shard-000000.tar:{key}.jpg", f"wds_images/shard-000000/{key}")
        evil = (root / "wds_images/.staging/000000000.jpg").read_bytes()
        add(tar, "../escape.jpg", evil)
        add(tar, "/tmp/absolute.jpg", evil)
    shutil.rmtree(staging)
    c.quarantine["wds_images/shard-000000/../escape.jpg"] = "unsafe_tar_member"
    c.quarantine["wds_images/shard-000000//tmp/absolute.jpg"] = "unsafe_tar_member"
    _manifest(root, "wds_images", modality="image", task="caption", format="webdataset",
              path="../wds_images/*.tar", stage_hints=["1"], license="CC-BY-4.0 (synthetic demo)",
              notes="img2dataset-style shard: key.jpg + key.txt + key.json; two members escape the folder.")


def _composite(c: _Corpus) -> None:
    """Composite: other sources' media with new texts (planted duplicates)."""
    root = c.root
    items = []
    (root / "composite/media").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "image_captions/images/cap_05.jpg", root / "composite/media/copy_of_cap_05.jpg")
    c.media["composite/media/copy_of_cap_05.jpg"] = c.media["image_captions/images/cap_05.jpg"]
    reused = [("video_qa/videos/vqa_00.mp4", "video"), ("video_qa/videos/vqa_03.mp4", "video"),
              ("kinetics_like/videos/kin_02.mp4", "video"), ("image_captions/images/cap_02.jpg", "image"),
              ("image_qa/images/iqa_04.jpg", "image"), ("composite/media/copy_of_cap_05.jpg", "image")]
    for i, (rel, kind) in enumerate(reused):
        s = c.scenes.get(rel) or c.scenes["image_captions/images/cap_05.jpg"]
        sid = f"comp-{i:04d}"
        conv = [{"from": "human", "value": f"<{kind}>\nSummarise the {kind} in one sentence."},
                {"from": "gpt", "value": f"There is a {s.color} {s.shape} against {s.background}."}]
        items.append({"id": sid, kind: rel, "conversations": conv})
        c.use("image_captions/images/cap_05.jpg" if rel.startswith("composite/") else rel, f"composite/{sid}")
    # near duplicates: the same picture resized and re-encoded, the same clip at another size and codec
    from PIL import Image

    src = "image_captions/images/cap_07.jpg"
    with Image.open(root / src) as im:
        small = im.resize((im.width * 3 // 4, im.height * 3 // 4))
    small.save(root / "composite/media/near_cap_07.jpg", quality=70)
    c.media["composite/media/near_cap_07.jpg"] = {"kind": "image", "width": small.width, "height": small.height,
                                                  "n_frames": 1, "codec": "JPEG"}
    vsrc = "video_qa/videos/vqa_05.mp4"
    t = c.media[vsrc]
    w, h = (t["width"] // 2) // 2 * 2 or 32, (t["height"] // 2) // 2 * 2 or 32
    c.media["composite/media/near_vqa_05.mp4"] = write_video(
        root / "composite/media/near_vqa_05.mp4", c.scenes[vsrc], w, h, t["fps"], t["n_frames"],
        "mpeg4" if t["codec"] == "h264" else "h264")
    for sid, rel, orig, orig_sid, kind in (
        ("comp-near-img", "composite/media/near_cap_07.jpg", src, "image_captions/cap-0007", "image"),
        ("comp-near-vid", "composite/media/near_vqa_05.mp4", vsrc, "video_qa/vqa-0005", "video"),
    ):
        s = c.scenes[orig]
        items.append({"id": sid, kind: rel, "conversations": [
            {"from": "human", "value": f"<{kind}>\nWhat do you see?"},
            {"from": "gpt", "value": f"I see a {s.color} {s.shape}."}]})
        c.use(rel, f"composite/{sid}")
        c.near.append({"samples": sorted([orig_sid, f"composite/{sid}"]), "media": [orig, rel],
                       "how": "resized to 3/4 and re-encoded as JPEG q70" if kind == "image"
                       else "half resolution, other codec"})
    (root / "composite" / "annotations.json").write_text(json.dumps(items, indent=1))
    _manifest(root, "composite", modality="mixed", task="qa", format="llava_json", path="../composite/annotations.json",
              media_root="..", stage_hints=["2"], license="CC-BY-4.0 (synthetic demo)",
              notes="Reuses media of the other demo sources with new texts: planted cross-dataset duplicates.")


def _write_truth(c: _Corpus, seed: int) -> None:
    """The planted duplicates and the generation truth (``corpus.json``) that the tests check against."""
    root = c.root
    exact = [{"media": rel, "samples": sorted(sids)} for rel, sids in sorted(c.exact.items()) if len(sids) > 1]
    (root / "planted_duplicates.json").write_text(json.dumps({"exact": exact, "near": c.near}, indent=1))
    (root / "corpus.json").write_text(json.dumps(
        {"seed": seed, "media": dict(sorted(c.media.items())), "quarantine": dict(sorted(c.quarantine.items()))},
        indent=1))


SOURCES = (_video_qa, _image_captions, _image_captions_parquet, _image_qa, _kinetics_like, _wds_images, _composite)
"""Source writers, in generation order."""


def generate(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the demo corpus into ``out_dir`` (replacing a previous one); returns ``out_dir``.

    The sources are written in this order from one seeded generator, so the same seed gives the same bytes."""
    root = Path(out_dir)
    for sub in ("video_qa", "image_captions", "image_captions_parquet", "image_qa", "kinetics_like",
                "wds_images", "composite", "manifests"):
        shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    c = _Corpus(root, seed)
    for write_source in SOURCES:
        write_source(c)
    _write_truth(c, seed)
    return root
