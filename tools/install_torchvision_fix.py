"""Install common/torchvision_fix.py as a .pth start-up hook in the current environment.

A ``.pth`` line starting with ``import`` runs at every interpreter start, so pytest, DDP workers and
console scripts all get the fix without importing anything of ours first. The hook is lazy: it only
touches torch when torchvision is first imported (an import hook on ``torchvision``), so a plain
``python -c 'print(1)'`` does not pay torch's import time.
"""

import pathlib
import sysconfig

HOOK = '''\
import importlib.abc, importlib.machinery, sys


class _TorchvisionFixFinder(importlib.abc.MetaPathFinder):
    """Runs common.torchvision_fix.apply() just before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            from common import torchvision_fix

            torchvision_fix.apply()
        except Exception:
            pass
        return None


sys.meta_path.insert(0, _TorchvisionFixFinder())
'''


def main() -> None:
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    (site / "_vip5_pmg_torchvision_fix.py").write_text(HOOK)
    (site / "vip5_pmg_torchvision_fix.pth").write_text("import _vip5_pmg_torchvision_fix\n")
    print(f"torchvision fix hook installed in {site}")


if __name__ == "__main__":
    main()
