"""``vip5`` command line: fit / validate / test / predict (LightningCLI).

    vip5 fit                                    # embedded offline default (demo data, tiny T5)
    vip5 fit --config configs/beauty.yaml       # t5-small + CLIP ViT-B/32 features on Amazon Beauty
    vip5 test --config configs/beauty.yaml --ckpt_path <ckpt>
    vip5 fit --help                             # every option, with its documentation
"""

from __future__ import annotations

from pathlib import Path

from common.cli import run

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


def main(args: list[str] | None = None, run_cli: bool = True):
    """Run the CLI (``args=None`` reads sys.argv). With ``run_cli=False`` return the instantiated CLI (tests)."""
    from vip5.lit_module import VIP5LitModule

    cli = run(VIP5LitModule, DEFAULT_CONFIG, args=args, run=run_cli)
    return None if run_cli else cli


if __name__ == "__main__":
    main()
