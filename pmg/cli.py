"""``pmg`` command line: fit / validate / test / predict (LightningCLI).

    pmg fit                                      # embedded offline default (demo data, small models)
    pmg fit --config configs/pmg_pog.yaml        # Llama-2-7b-chat + SD-1.5 on POG
    pmg predict --ckpt_path <ckpt>               # images, JSON lines and contact sheets on disk
    pmg test --ckpt_path <ckpt>                  # LPIPS/SSIM to target and history images
"""

from __future__ import annotations

from pathlib import Path

from common.cli import FrameworkCLI, run

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


class PMGCLI(FrameworkCLI):
    """The ``pmg`` program: the keyword extractor takes its keyword counts from ``model.data``."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        parser.link_arguments("model.data.n_preference_keywords", "model.keywords.init_args.n_preference")
        parser.link_arguments("model.data.n_target_keywords", "model.keywords.init_args.n_target")
        parser.link_arguments("model.data.scenario", "model.keywords.init_args.scenario")


def main(args: list[str] | None = None, run_cli: bool = True):
    """Run the CLI (``args=None`` reads sys.argv). With ``run_cli=False`` return the instantiated CLI (tests)."""
    from pmg.lit_module import PMGLitModule

    cli = run(PMGLitModule, DEFAULT_CONFIG, args=args, run=run_cli, cli_class=PMGCLI)
    return None if run_cli else cli


if __name__ == "__main__":
    main()
