"""Start-up hook that makes ``import torchvision`` work where its compiled ops cannot load (CUDA wheel on a CPU torch).

PyPI ships torchvision 0.28.0 only as a CUDA build. With a CPU build of torch its ``_C`` extension fails to load,
and the fake-op registrations in ``torchvision/_meta_registrations.py`` then raise ``operator torchvision::nms does
not exist`` at import, which breaks lightning, transformers, diffusers, open_clip and lpips, because they all import
torchvision when it is installed.

The fix defines the two op schemas torchvision registers fakes for, just before torchvision is first imported.
Models and transforms then work; compiled ops (nms, roi_align, image io) still raise, and this project uses none
of them. It is a no-op where the real ops load.

This file is part of the install step, not of the library: ``tools/install_torchvision_fix.py`` copies it into the
environment's site-packages as ``_vip5_pmg_torchvision_fix.py`` and adds a ``.pth`` line that imports it at every
interpreter start (pytest, DDP workers, console scripts). It imports nothing of the project, and touches torch only
when torchvision is first imported, so a plain ``python -c 'print(1)'`` does not pay torch's import time.
"""

import importlib.abc
import importlib.util
import os
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping the Library object would unregister the schemas


def _native_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to fix
    import torch

    folder = list(spec.submodule_search_locations)[0]
    for name in os.listdir(folder):
        if name.startswith("_C") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(folder, name))
                return True
            except OSError:
                return False
    return False


def apply() -> bool:
    """Register placeholder schemas if torchvision's native ops are unusable. Returns True if applied."""
    global _library
    if _library is not None:
        return True
    try:
        if _native_ops_load():
            return False
        import torch

        _library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS.values():
            _library.define(schema)
        return True
    except Exception:  # never break interpreter start-up from a .pth hook
        return False


class _TorchvisionFixFinder(importlib.abc.MetaPathFinder):
    """Runs :func:`apply` just before torchvision is first imported, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        apply()
        return None


if __name__ == "_vip5_pmg_torchvision_fix":  # imported by the .pth line of an installed environment
    sys.meta_path.insert(0, _TorchvisionFixFinder())
