"""``vip5`` command line: fit / validate / test / predict (LightningCLI).

    vip5 fit                                    # embedded offline default (demo data, tiny T5)
    vip5 fit --config configs/beauty.yaml       # t5-small + CLIP ViT-B/32 features on Amazon Beauty
    vip5 test --config configs/beauty.yaml --ckpt_path <ckpt>
    vip5 fit --help                             # every option, with its documentation
"""

from __future__ import annotations

from pathlib import Path

from common.cli import FrameworkCLI, run

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


class VIP5CLI(FrameworkCLI):
    """The ``vip5`` program: a candidate list is the target plus the data module's fixed negatives."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        parser.link_arguments("data.init_args.n_negatives", "model.prompts.n_candidates", compute_fn=_plus_one)


def _plus_one(n_negatives: int) -> int:
    return n_negatives + 1


def main(args: list[str] | None = None, run_cli: bool = True):
    """Run the CLI (``args=None`` reads sys.argv). With ``run_cli=False`` return the instantiated CLI (tests)."""
    from vip5.lit_module import VIP5LitModule

    cli = run(VIP5LitModule, DEFAULT_CONFIG, args=args, run=run_cli, cli_class=VIP5CLI)
    return None if run_cli else cli


if __name__ == "__main__":
    main()
