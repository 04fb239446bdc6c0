"""Held-out evaluation sets reserved from the catalog before any mixture is sampled.

    mavors eval split --per-family 8 --seed 0       # reserve, then export JSONL + lmms-eval task files

Four task families, as the paper's Table 5 tracks them: image QA (MMMU-like), image
captions (CapsBench-like), video QA (Video-MME-like), video captions (DREAM-1K-like).
A family draws single-media samples of its task and media kind in a seeded hash order.
The reservation is written to the ``heldout`` table with one row per media hash, and
mixture sampling (curation/mixtures.py) never draws a held-out sample nor any other
sample that shares its media, so no held-out image or video reaches training by
another dataset's text either. ``curation.leakage`` proves it on the shards.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from string import Template

from core.catalog import Catalog
from core.paths import MANIFESTS

FAMILIES: dict[str, tuple[str, str]] = {
    "image_qa": ("qa", "image"),
    "image_caption": ("caption", "image"),
    "video_qa": ("qa", "video"),
    "video_caption": ("caption", "video"),
}
TASK_TEMPLATES = MANIFESTS / "eval" / "tasks"


class HeldoutError(RuntimeError):
    """The held-out set cannot be reserved as asked."""


@dataclass
class HeldoutSplit:
    name: str
    seed: int
    counts: dict[str, int]
    created: bool


def reserve_heldout(cat: Catalog, per_family: int = 8, seed: int = 0) -> HeldoutSplit:
    """Reserve up to ``per_family`` samples per family; a rerun with the same seed is a no-op.

    Refuses when mixtures were already sampled (their members could be held out after the fact)
    or when a split with another seed exists.
    """
    name = f"heldout-s{seed}"
    existing = cat.query("SELECT DISTINCT split, seed FROM heldout")
    if existing:
        if existing != [{"split": name, "seed": seed}]:
            raise HeldoutError(f"{cat.path}: a held-out split already exists ({existing[0]['split']}); "
                               "held-out sets are reserved once, before mixtures")
        counts = {r["family"]: r["n"] for r in cat.query(
            "SELECT family, count(DISTINCT sample_id) AS n FROM heldout GROUP BY family")}
        return HeldoutSplit(name, seed, counts, created=False)
    if cat.has_table("mixture_members") and cat.scalar("SELECT count(*) FROM mixture_members"):
        raise HeldoutError(f"{cat.path}: mixtures were already sampled; reserve the held-out set first "
                           "(mavors eval split), then sample mixtures")
    rows = []
    for family, (task, kind) in FAMILIES.items():
        picked = cat.query(
            """SELECT s.sample_id, s.media_hashes[1] AS media_hash
               FROM samples s JOIN media m ON m.media_hash = s.media_hashes[1]
               WHERE s.task = $task AND m.kind = $kind AND len(s.media_hashes) = 1
                 AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.source = s.source AND q.item = s.item)
               ORDER BY md5($seed || ':' || s.sample_id) LIMIT $n""",
            {"task": task, "kind": kind, "seed": str(seed), "n": per_family})
        rows += [{"family": family, "sample_id": r["sample_id"], "media_hash": r["media_hash"], "split": name,
                  "seed": seed} for r in picked]
    # A media drawn by two families stays held out once (it belongs to the first family that drew it).
    unique = {}
    for r in rows:
        unique.setdefault((r["sample_id"], r["media_hash"]), r)
    with cat.transaction() as con:
        cat.insert("heldout", list(unique.values()), con=con)
    counts = {}
    for r in unique.values():
        counts[r["family"]] = counts.get(r["family"], 0) + 1
    return HeldoutSplit(name, seed, counts, created=True)


def heldout_records(cat: Catalog, family: str) -> list[dict]:
    """The family's held-out docs: id, sample id, media kind and path, question and reference answer."""
    rows = cat.query(
        """SELECT h.sample_id, s.conversation, m.kind, m.storage_path
           FROM heldout h JOIN samples s USING (sample_id) JOIN media m ON m.media_hash = h.media_hash
           WHERE h.family = ? ORDER BY h.sample_id""", [family])
    docs = []
    for i, r in enumerate(rows):
        conv = json.loads(r["conversation"]) if isinstance(r["conversation"], str) else r["conversation"]
        human = next(t["value"] for t in conv if t["from"] == "human")
        answer = next(t["value"] for t in conv if t["from"] == "gpt")
        question = human.replace("<image>", "").replace("<video>", "").strip()
        docs.append({"id": i, "sample_id": r["sample_id"], "kind": r["kind"],
                     "media": str(cat.resolved(r["storage_path"])),
                     "question": question, "answer": answer})
    return docs


def export_heldout(cat: Catalog, out_dir: str | Path) -> Path:
    """Write ``<family>.jsonl`` per family and the lmms-eval task files pointing at them; returns the task dir.

    The task YAMLs in ``manifests/eval/tasks/`` are templates (``${data_dir}``), rendered here so
    lmms-eval reads this catalog's held-out files (``TaskManager(include_path=<returned dir>)``).
    """
    out = Path(out_dir).resolve()
    data_dir = out / "data"
    task_dir = out / "tasks"
    data_dir.mkdir(parents=True, exist_ok=True)
    task_dir.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES:
        docs = heldout_records(cat, family)
        (data_dir / f"{family}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    for template in sorted(TASK_TEMPLATES.glob("*.yaml")):
        text = Template(template.read_text()).substitute(data_dir=str(data_dir))
        (task_dir / template.name).write_text(text)
    shutil.copy(TASK_TEMPLATES / "utils.py", task_dir / "utils.py")
    return task_dir
