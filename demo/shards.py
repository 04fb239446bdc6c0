"""One stage's shards of a mixture over the demo corpus, built in this process (no Ray, no flow).

    shards = stage_shards(generate(root / "demo"), load_mixture("manifests/mixtures/demo-stage2.yaml"), "2", root)

Ingest of the sources the stage draws from (the corpus's manifests, plus ``extra`` manifest files), the mixture
draw and the shard build, as ``mavors ingest`` + ``mavors shards build`` do, for tests and benchmarks that need
real shards without the curate flow.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.catalog import Catalog
from curation.ingest import ingest
from curation.mixtures import MixtureConfig, select_mixture
from curation.shards.build import build_shards
from curation.sources import load_manifest


def stage_shards(corpus: Path, mixture: MixtureConfig, stage: str, root: Path,
                 extra: Sequence[Path] = ()) -> Path:
    """Build ``mixture``'s ``stage`` under ``root`` (catalog, media store, shards); returns the shard folder."""
    extra_manifests = [load_manifest(p) for p in extra]
    given = {m.name for m in extra_manifests}
    names = dict.fromkeys(e.source for e in mixture.stages[stage] if e.source not in given)
    manifests = [load_manifest(Path(corpus) / "manifests" / f"{n}.yaml") for n in names] + extra_manifests
    with Catalog(Path(root) / "catalog.duckdb") as cat:
        ingest(manifests, cat, media_store=Path(root) / "store", workers=0)
        select_mixture(cat, mixture)
        (build,) = build_shards(cat, mixture, Path(root) / "shards", stages=[stage], parallel=False)
    return build.out_dir
