"""Ablation sweeps (common.ablation): every shipped sweep file parses and its settings pass the program's parser,
bad files fail with the file and field named, and a two-setting VIP5 sweep runs end to end on demo data
(result files, report table matching them, PNG plots, W&B offline runs with group, tags and metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from common.ablation.check import check_sweep
from common.ablation.cli import main as ablate
from common.ablation.runner import build_args, flatten_metrics, read_result, run_sweep
from common.ablation.spec import SweepError, load_sweep
from common.ablation.wandb_sweep import sweep_definition

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs/ablations").glob("*.yaml"))


def _values(sweep, key):
    return [sweep.overrides_for(s).get(key) for s in sweep.settings]


# -- shipped sweep files -------------------------------------------------------------------------
def test_shipped_sweeps_cover_the_papers_studies():
    names = {p.stem for p in SWEEPS}
    assert {"vip5_rq2_sites", "vip5_rq2_reduction", "vip5_rq3_image_tokens", "vip5_rq3_encoder",
            "vip5_rq3_indexing", "pmg_components", "pmg_soft_tokens", "demo_vip5", "demo_pmg"} <= names
    load = {p.stem: load_sweep(p) for p in SWEEPS}
    assert _values(load["vip5_rq2_reduction"], "model.net.adapter.reduction_factor") == [2, 4, 8, 16, 32]
    assert _values(load["vip5_rq3_image_tokens"], "model.net.n_image_tokens") == [0, 1, 2, 3, 5]
    sites = load["vip5_rq2_sites"]
    assert _values(sites, "model.net.training_mode") == ["adapters_self_attn_only", "adapters", "adapters", "full"]
    from common.data.features import ENCODERS

    encoders = _values(load["vip5_rq3_encoder"], "data.init_args.image_encoder")
    assert encoders == ["rn50", "rn101", "vitb32", "vitb16", "vitl14"] and set(encoders) <= set(ENCODERS)
    from common.data.indexing import INDEXINGS

    schemes = _values(load["vip5_rq3_indexing"], "data.init_args.indexing")
    assert schemes[:2] == ["original", "sequential"] and set(schemes) <= set(INDEXINGS)
    pmg = load["pmg_components"]
    assert {s.name: s.fit for s in pmg.settings} == {"full": True, "no-soft": False, "no-keywords": True,
                                                    "no-ptuning": True}
    assert _values(pmg, "model.prefix_length")[3] == 0 and _values(pmg, "model.use_keywords")[2] is False
    assert _values(load["pmg_soft_tokens"], "model.n_soft_tokens") == [2, 4, 8, 16]
    for demo in ("demo_vip5", "demo_pmg"):
        assert 2 <= len(load[demo].settings) <= 3 and load[demo].base.name == "default.yaml"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_settings_parse_with_the_program_cli(path, tmp_path):
    sweep = load_sweep(path)
    assert sweep.program in ("vip5", "pmg") and sweep.base.is_file() and sweep.report.metrics
    for setting in sweep.settings:
        args = build_args(sweep, setting, tmp_path)
        assert args[:2] == ["--config", str(sweep.base)]
        logger = json.loads(next(a for a in args if a.startswith("--trainer.logger="))[len("--trainer.logger="):])
        assert logger["init_args"]["group"] == sweep.group and logger["init_args"]["name"] == setting.name
        assert logger["dict_kwargs"]["tags"] == sweep.tags_for(setting)
        callbacks = next(a for a in args if a.startswith("--trainer.callbacks="))
        assert str(tmp_path / sweep.group / setting.name / "checkpoints") in callbacks
    # every setting's command line passes the program's parser (types, option names), nothing is trained
    assert check_sweep(sweep) == {}


# -- bad input -----------------------------------------------------------------------------------
def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


GOOD = """
program: vip5
base: default
settings:
  - {name: a, overrides: {model.net.n_image_tokens: 1}}
"""


@pytest.mark.parametrize("text, field, message", [
    (GOOD + "epochs: 3\n", "top level", "unknown key.*'epochs'"),
    (GOOD.replace("vip5", "p5"), "program", "expected one of vip5, pmg"),
    (GOOD.replace("default", "missing.yaml"), "base", "does not exist"),
    (GOOD.replace("{name: a,", "{name: a, overides: {}, "), r"settings\[0\]", "unknown key.*'overides'"),
    (GOOD.replace("model.net.n_image_tokens", "trainer.logger.init_args.group"), "settings", "reserved"),
    (GOOD.replace("model.net.n_image_tokens", "--model.net.n_image_tokens"), "settings", "without dashes"),
    (GOOD + "  - {name: a}\n", "settings", "repeated setting name"),
    (GOOD.replace("name: a", "name: a/b"), r"settings\[0\].name", "letters, digits"),
    (GOOD + "report: {x_scale: log10}\n", "report.x_scale", "linear or log2"),
    ("program: vip5\nsettings: []\n", "settings", "non-empty list"),
])
def test_bad_sweep_file_names_file_and_field(tmp_path, text, field, message):
    path = _write(tmp_path, text)
    with pytest.raises(SweepError, match=rf"{re.escape(str(path))}: {field}.*{message}"):
        load_sweep(path)


def test_bad_override_is_reported_by_check_and_cli(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "  - {name: b, overrides: {model.net.n_image_tokenz: 1}}\n"
                                   "  - {name: c, overrides: {model.net.n_image_tokens: one}}\n")
    problems = check_sweep(load_sweep(path))
    assert set(problems) == {"b", "c"}
    assert "n_image_tokenz" in problems["b"] and "model.net.n_image_tokens" in problems["c"]
    assert ablate(["run", str(_write(tmp_path, GOOD + "epochs: 3\n"))]) == 2  # nothing runs
    assert "unknown key(s) 'epochs'" in capsys.readouterr().err


def test_flatten_metrics_of_both_programs():
    vip5 = {"A-3": {"HR@5": 0.5, "n": 32}, "C-3": {"BLEU-4": 1.5, "note": "text"}}
    assert flatten_metrics(vip5) == ({"A-3/HR@5": 0.5, "A-3/n": 32.0, "C-3/BLEU-4": 1.5}, {})
    pmg = {"meta": {"use_soft": True}, "results": {"lpips_target": 0.1, "lpips_is_random": True}}
    assert flatten_metrics(pmg) == ({"lpips_target": 0.1}, {"use_soft": True})


def test_wandb_sweep_definition_is_a_grid_over_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep files named relative to the repository, as a user types them
    sweep = load_sweep(ROOT / "configs/ablations/vip5_rq2_reduction.yaml")
    spec = sweep_definition(sweep, "configs/ablations/vip5_rq2_reduction.yaml", Path("out"),
                            ["--trainer.devices", "8"])
    assert spec["method"] == "grid" and spec["parameters"]["setting"]["values"] == ["r2", "r4", "r8", "r16", "r32"]
    cmd = spec["command"]
    assert cmd[cmd.index("run-setting") + 1] == "configs/ablations/vip5_rq2_reduction.yaml"
    assert cmd[-4:] == ["${args}", "--", "--trainer.devices", "8"]
    out = tmp_path / "sweep.yaml"
    assert ablate(["wandb-sweep", "configs/ablations/vip5_rq2_reduction.yaml", "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["name"] == sweep.group


# -- end to end ----------------------------------------------------------------------------------
def _tiny_sweep(tmp_path: Path, data_dir: Path) -> Path:
    spec = {
        "program": "vip5", "base": "default", "group": "test-n", "tags": ["vip5", "test"],
        "overrides": {
            "data.init_args.data_dir": str(data_dir), "data.init_args.generate_demo": False,
            "data.init_args.n_negatives": 19,
            "model.prompts.sequential_samples": 2, "model.prompts.direct_samples": 2,
            "model.tokenizer_vocab_size": 400, "model.evaluation.num_beams": 5,
            "trainer.max_epochs": 1, "trainer.limit_train_batches": 3, "trainer.limit_val_batches": 1,
            "trainer.limit_test_batches": 1, "trainer.log_every_n_steps": 1,
        },
        "settings": [
            {"name": "n0", "tags": ["n0"], "overrides": {"model.net.n_image_tokens": 0}},
            {"name": "n2", "tags": ["n2"], "overrides": {"model.net.n_image_tokens": 2}},
        ],
        "report": {"metrics": ["A-3/HR@5", "B-5/NDCG@5", "C-3/rougeL"], "x": "model.net.n_image_tokens",
                   "x_label": "image tokens (n)"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_two_setting_sweep_end_to_end(demo_data, tmp_path):
    from PIL import Image

    from common.ablation.report import write_report
    from common.ablation.wandb_files import read_offline_run

    sweep = load_sweep(_tiny_sweep(tmp_path, demo_data / "amazon"))
    out = tmp_path / "out"
    results = run_sweep(sweep, out, isolate=False)
    assert [r["status"] for r in results] == ["ok", "ok"], [r.get("error") for r in results]

    for setting, result in zip(sweep.settings, results):
        folder = out / "test-n" / setting.name
        assert read_result(folder / "result.json") == json.loads(json.dumps(result))
        assert {"A-3/HR@5", "B-5/NDCG@5", "C-3/rougeL"} <= set(result["metrics"])
        assert result["x"] == setting.overrides["model.net.n_image_tokens"]
        assert 0 < result["trainable_pct"] <= 100 and result["trainable_params"] > 0
        assert result["epochs"] == 1 and result["epoch_seconds"] > 0 and result["peak_memory_mb"] > 0
        assert Path(result["checkpoint"]).parent == folder / "checkpoints"
        assert "--model.net.n_image_tokens=" in (folder / "command.txt").read_text()

        # the W&B offline run: group, name, tags, config and metrics (training curves, cost, test table)
        runs = list((folder / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and str(runs[0]) == result["wandb_run"]
        run = read_offline_run(runs[0])
        assert run.group == "test-n" and run.name == setting.name and run.project == "vip5"
        assert run.tags == ["vip5", "test", setting.name]
        assert run.config["ablation"]["setting"] == setting.name
        assert run.config["params/pct"] == pytest.approx(result["trainable_pct"])
        assert run.config["cli"]["model"]["net"]["n_image_tokens"] == setting.overrides["model.net.n_image_tokens"]
        assert {"train/loss", "val/loss", "time/epoch_seconds", "memory/peak_mb", "test/A-3/HR@5"} <= run.history_keys
        assert run.summary["test/B-5/NDCG@5"] == pytest.approx(result["metrics"]["B-5/NDCG@5"])

    # the visual tokens add trainable weights (mapper) to the n=2 model
    assert results[1]["trainable_params"] > results[0]["trainable_params"]

    report, _, plots = write_report(sweep, out)
    text = report.read_text()
    for result in results:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{result['setting']}` | "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        m = result["metrics"]
        assert cells[1] == f"{result['x']:.0f}"
        assert cells[2:5] == [f"{m['A-3/HR@5']:.4f}", f"{m['B-5/NDCG@5']:.4f}", f"{m['C-3/rougeL']:.4f}"]
        assert cells[5:9] == [f"{result['trainable_pct']:.2f}", f"{result['epoch_seconds']:.1f}",
                              f"{result['peak_memory_mb']:.0f}", "ok"]
    assert sorted(p.name for p in plots) == ["bars.png", "vs_n_image_tokens.png"]
    for p in plots:
        assert f"]({p.name})" in text
        with Image.open(p) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 300

    # resumable: a second run skips both settings (no new W&B runs)
    again = run_sweep(sweep, out, isolate=False)
    assert again == [read_result(out / "test-n" / s.name / "result.json") for s in sweep.settings]
    assert len(list(out.glob("test-n/*/wandb/offline-run-*"))) == 2


@pytest.mark.slow
def test_failed_setting_is_recorded_and_reported(tmp_path, capsys):
    """`ablate run` runs each setting in its own process; a rejected setting is a failed row, not a crash."""
    path = _write(tmp_path, GOOD.replace("{model.net.n_image_tokens: 1}", "{model.net.n_image_tokens: one}"))
    out = tmp_path / "out"
    assert ablate(["run", str(path), "--output", str(out)]) == 1
    result = read_result(out / "sweep" / "a" / "result.json")
    assert result["status"] == "failed" and "rejected the command line" in result["error"]
    assert "n_image_tokens" in (out / "sweep" / "a" / "log.txt").read_text()
    assert "| `a` |" in (report := (out / "sweep" / "report.md").read_text()) and "| failed |" in report
    assert "n_image_tokens" in capsys.readouterr().out  # the log's tail is shown
