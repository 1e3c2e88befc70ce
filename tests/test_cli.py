"""The programs' command lines: --help explains, the embedded default is used without --config."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.cli import with_default_config


@pytest.mark.parametrize("program", ["vip5", "pmg"])
def test_help_lists_documented_options(program, capsys):
    from importlib import import_module

    main = import_module(f"{program}.cli").main
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--model.optimizer" in text and "--data" in text and "--trainer.precision" in text
    key = "--model.net.n_image_tokens" if program == "vip5" else "--model.n_soft_tokens"
    assert key in text


def test_default_config_inserted_only_when_missing():
    default = Path("/x/default.yaml")
    assert with_default_config(["fit"], default) == ["fit", "--config", str(default)]
    assert with_default_config(["fit", "--config", "a.yaml"], default) == ["fit", "--config", "a.yaml"]
    assert with_default_config(["test", "--config=a.yaml"], default) == ["test", "--config=a.yaml"]
    assert with_default_config(["--help"], default) == ["--help"]
    # an overlay (configs/debug/*.yaml) changes the embedded default rather than replacing it
    overlay = "configs/debug/vip5.yaml"
    assert with_default_config(["fit", "--config", overlay], default) == ["fit", "--config", str(default), "--config",
                                                                          overlay]
    assert with_default_config(["fit", "--config", "a.yaml", "--config", overlay], default)[:3] == [
        "fit", "--config", "a.yaml"]


def test_data_cli_help(capsys):
    from common.data.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["prepare-amazon", "--help"])
    assert exc.value.code == 0
    assert "reviews_<Category>_5.json.gz" in capsys.readouterr().out
