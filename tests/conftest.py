"""Shared fixtures. Everything offline; heavy things (tiny models, Ray) built once per session."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Offline and quiet, before any library reads its environment.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints (tokenizer, siglip, qwen2, qwen2vl, ...), written once per session."""
    from demo.tiny_models import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the whole session (starting one costs ~5 s)."""
    import ray

    from core.ray_runtime import ensure_ray
    from core.settings import RaySettings

    ensure_ray(RaySettings(num_cpus=2, object_store_mb=256))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_by_value(request):
    """Ray workers cannot import test modules: ship the requesting module's functions and classes by value
    (``pytestmark = pytest.mark.usefixtures("ray_by_value")``)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(request.module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(request.module)


@pytest.fixture
def catalog(tmp_path):
    """A fresh, migrated catalog file."""
    from core.catalog import Catalog

    with Catalog(tmp_path / "catalog.duckdb") as cat:
        yield cat


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """The demo corpus (``mavors demo-data``, seed 0), generated once: media, annotations, ``manifests/*.yaml``,
    ``corpus.json`` (generation truth, expected quarantine reasons) and ``planted_duplicates.json``."""
    from demo.corpus import generate

    return generate(tmp_path_factory.mktemp("demo-corpus") / "demo", seed=0)


@pytest.fixture(scope="session")
def demo_catalog(demo_corpus, ray_local, tmp_path_factory) -> Path:
    """Path of a catalog file with every demo source ingested (media of tars under ``<its folder>/media``).

    Shared by the session: a test that writes must copy it first (:func:`copy_catalog`).
    """
    from core.catalog import Catalog
    from curation.ingest import ingest
    from curation.sources import load_manifests

    path = tmp_path_factory.mktemp("demo-catalog") / "catalog.duckdb"
    with Catalog(path) as cat:
        ingest(load_manifests(sorted((demo_corpus / "manifests").glob("*.yaml"))), cat)
    return path


def copy_catalog(src: Path, dst: Path) -> Path:
    """A copy of catalog file ``src`` at ``dst`` that still finds its media: paths under the catalog's folder are
    stored relative to it (``media/..``), so the copy's folder gets a link to the original's ``media``."""
    dst = Path(shutil.copy(src, dst))
    media, link = Path(src).parent / "media", dst.parent / "media"
    if media.is_dir() and not link.exists():
        link.symlink_to(media, target_is_directory=True)
    return dst


@pytest.fixture
def demo_cat(demo_catalog, tmp_path):
    """A writable copy of the ingested demo catalog, open for the test."""
    from core.catalog import Catalog

    with Catalog(copy_catalog(demo_catalog, tmp_path / "catalog.duckdb")) as cat:
        yield cat


class Tmpfs:
    """Small file systems to fill: ``tmpfs(dir, size)`` mounts one at ``dir``; ``tmpfs.remount(dir, "size=16m")``
    or ``(dir, "ro")`` changes it in place. Skips the test where mounting is not allowed."""

    def __init__(self):
        self.mounted: list[Path] = []

    def __call__(self, path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                  capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            pytest.skip("no `mount` command on this machine: cannot make a small file system to fill")
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
        self.mounted.append(path)
        return path

    def remount(self, path: Path, *options: str) -> None:
        subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(path)], check=True, timeout=30)

    def unmount_all(self) -> None:
        """Unmount; a file system still busy (a file our code left open on it) fails the test."""
        busy = []
        for path in reversed(self.mounted):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
                busy.append(str(path))
        assert not busy, f"still busy after the test (a file left open on it): {busy}"


@pytest.fixture
def mount_tmpfs():
    """A :class:`Tmpfs`, unmounted after the test (Linux, root or CAP_SYS_ADMIN; skipped with a reason elsewhere)."""
    tmpfs = Tmpfs()
    yield tmpfs
    tmpfs.unmount_all()
