"""Install tools/torchvision_fix.py as a start-up hook in the current environment (part of ``make install``).

The hook module is copied into site-packages as ``_vip5_pmg_torchvision_fix.py``, and a ``.pth`` line starting
with ``import`` runs it at every interpreter start, so pytest, DDP workers and console scripts all get the fix
without importing anything of ours first. Rerunning replaces an older hook.
"""

import pathlib
import shutil
import sysconfig

HOOK = pathlib.Path(__file__).with_name("torchvision_fix.py")


def main() -> None:
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    shutil.copyfile(HOOK, site / "_vip5_pmg_torchvision_fix.py")
    (site / "vip5_pmg_torchvision_fix.pth").write_text("import _vip5_pmg_torchvision_fix\n")
    print(f"torchvision fix hook installed in {site}")


if __name__ == "__main__":
    main()
