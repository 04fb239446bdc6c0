"""Near-duplicate media by a perceptual signature (optional: dedup groups by identical bytes unless a policy
says ``grouping: phash``).

    mavors dedup phash --max-distance 32         # sign new media, rebuild clusters at that threshold
    mavors dedup run POLICY.yaml                 # with `grouping: phash` and `phash_max_distance: 32`

Signature: a 16x16 RGB thumbnail (box-filtered, so it is the mean colour of 256
cells) of an image, or of ``frames`` frames of a video taken at the centres of
equal slices of the clip (relative positions: the same content at another frame
rate lands on the same moments). Distance between two media of the same kind
and frame count: the largest absolute difference of any thumbnail value, over
all cells, channels and frames (0-255 scale). Linked when the distance is at most
``max_distance``; clusters are connected components (union-find) and the
cluster key is the smallest ``media_hash`` in it.

Why thumbnails and not a DCT pHash with Hamming distance: on low-texture
content (flat backgrounds with a few shapes -- the demo corpus, screen
recordings, cartoons) the pHash median threshold flips on noise. Measured on the
demo corpus: a clip and its half-resolution re-encode were 8-30 bits apart per
frame, while two different pictures were 0-8 bits apart. A mean-difference
distance fails the same way (a shape on a flat background moves the mean by
little). The largest cell difference does not: on the demo corpus the planted
copies are 21 (resized + JPEG q70) and 32 (half resolution, other codec) apart,
the closest two unrelated media 34, the next 36 and then 59 or more. So the
margin is thin on heavily re-encoded low-resolution video: tune
``max_distance`` on a labelled sample of your data.

Candidates: ``|mean(a) - mean(b)| <= mean|a - b| <= distance(a, b)``, so
media are bucketed by ``floor(mean / max_distance)`` and compared only with
their own and the next bucket -- no pair within the threshold is missed. This
blocking prunes by one dimension only: fine to ~1e5 media per kind; beyond,
run it per source pair or put the thumbnails in a vector index.

What it catches (threshold 32): re-encodes (JPEG quality, another video
codec or bitrate), resizes and aspect-preserving rescales, format changes,
mild brightness/colour shifts, small overlays, the same clip at another frame
rate, and mild crops of a few percent of the border.

What it misses: mirrors/flips and rotations, crops beyond a few percent,
added or removed letterboxing, picture-in-picture and collages, trimmed or
re-cut videos (the sampled moments move), speed changes, large overlays or
colour grading. It also merges media that look alike without being copies
(two near-uniform pictures of one colour), one reason it is off by default;
and chains A~B~C can link A and C farther apart than the threshold.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from core.catalog import Catalog

THUMB = 16             # thumbnail side in pixels
DEFAULT_FRAMES = 5     # sampled frames per video


def method_name(frames: int) -> str:
    return f"thumb{THUMB}-f{frames}"


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """``(THUMB, THUMB, 3)`` uint8 box-filtered thumbnail of one ``(H, W, 3)`` uint8 picture."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).convert("RGB").resize((THUMB, THUMB), Image.Resampling.BOX))


def sign_media(kind: str, path: str, frames: int = DEFAULT_FRAMES) -> np.ndarray:
    """``(F, THUMB, THUMB, 3)`` thumbnails: F = 1 for an image, ``frames`` for a video. Raises on decode errors."""
    if kind == "image":
        from PIL import Image

        with Image.open(path) as im:
            return thumbnail(np.asarray(im.convert("RGB")))[None]
    from model.media import frame_index, frames_at

    index = frame_index(path, path)  # only the picked frames are decoded
    n = len(index.times)
    picks = [min(n - 1, int((j + 0.5) * n / frames)) for j in range(frames)]
    return np.stack(frames_at(path, index, index.offsets(picks), thumbnail, path))


def distance(a: np.ndarray, b: np.ndarray) -> int:
    """Largest |a - b| over all cells, channels and frames of two ``(F, T, T, 3)`` signatures (0-255)."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def compute_signatures(cat: Catalog, frames: int = DEFAULT_FRAMES, commit_every: int = 256) -> dict[str, int]:
    """Sign every media without a signature; failures are quarantined (stage ``phash``) and left unsigned."""
    method = method_name(frames)
    todo = cat.query("SELECT m.media_hash, m.kind, m.storage_path FROM media m WHERE NOT EXISTS "
                     "(SELECT 1 FROM media_signatures s WHERE s.media_hash = m.media_hash AND s.method = ?) "
                     "ORDER BY m.media_hash", [method])
    counts = {"signed": 0, "failed": 0}
    for start in range(0, len(todo), commit_every):
        rows, failed = [], []
        for m in todo[start:start + commit_every]:
            try:
                sig = sign_media(m["kind"], str(cat.resolved(m["storage_path"])), frames)
            except Exception as e:  # noqa: BLE001 - any decoder error: record and go on
                failed.append({"source": "media", "item": m["media_hash"], "reason": "media_decode_failed",
                               "detail": f"{m['storage_path']}: {type(e).__name__}: {e}", "stage": "phash"})
                continue
            rows.append({"media_hash": m["media_hash"], "method": method, "kind": m["kind"],
                         "n_frames": len(sig), "signature": sig.tobytes()})
        with cat.transaction() as con:
            cat.insert("media_signatures", rows, on_conflict="replace", con=con)
            cat.quarantine(failed, con=con)
        counts["signed"] += len(rows)
        counts["failed"] += len(failed)
    return counts


def cluster(items: dict[str, tuple[str, np.ndarray]], max_distance: float) -> dict[str, str]:
    """media_hash -> cluster key (smallest media_hash of its connected component).

    ``items``: media_hash -> (kind, ``(F, T, T, 3)`` signature). Linked when kind and F match and
    :func:`distance` <= ``max_distance``.
    """
    parent = {h: h for h in items}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    width = max(float(max_distance), 1e-9)
    buckets: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for media_hash, (kind, sig) in sorted(items.items()):
        buckets[(kind, len(sig), int(sig.mean() // width))].append(media_hash)
    for (kind, n, b), members in buckets.items():
        neighbours = members + buckets.get((kind, n, b + 1), [])
        for i, a in enumerate(members):
            for other in neighbours[i + 1:]:
                ra, rb = find(a), find(other)
                if ra != rb and distance(items[a][1], items[other][1]) <= max_distance:
                    parent[max(ra, rb)] = min(ra, rb)
    return {h: find(h) for h in items}


def build_clusters(cat: Catalog, max_distance: int, frames: int = DEFAULT_FRAMES) -> dict[str, int]:
    """Rebuild ``media_clusters`` at ``max_distance`` for every media (unsigned media: clusters of one)."""
    rows = cat.query("SELECT m.media_hash, m.kind, s.n_frames, s.signature FROM media m "
                     "LEFT JOIN media_signatures s ON s.media_hash = m.media_hash AND s.method = ?",
                     [method_name(frames)])
    items = {r["media_hash"]: (r["kind"], np.frombuffer(r["signature"], np.uint8).reshape(
                 r["n_frames"], THUMB, THUMB, 3)) for r in rows if r["signature"] is not None}
    keys = cluster(items, max_distance)
    out = [{"media_hash": r["media_hash"], "max_distance": max_distance,
            "cluster_key": keys.get(r["media_hash"], r["media_hash"])} for r in rows]
    with cat.transaction() as con:
        con.execute("DELETE FROM media_clusters WHERE max_distance = ?", [max_distance])
        cat.insert("media_clusters", out, con=con)
    return {"media": len(out), "signed": len(items), "clusters": len({r["cluster_key"] for r in out}),
            "merged_media": sum(1 for r in out if r["cluster_key"] != r["media_hash"])}
