#!/usr/bin/env bash
# The embedded offline default end to end (called by `make demo`): demo data in three formats, CLIP image
# features, VIP5 fit + test (with the popularity / next-unused-id baselines), PMG fit + predict.
set -euo pipefail
OUT=${1:-outputs/demo}
BIN=.venv/bin
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

echo "== 1/6 demo data (Amazon/P5 folder, POG logs, MovieLens CSVs, PNG item images) -> data/demo"
$BIN/vip5-data demo --out data/demo

echo "== 2/6 CLIP image features (small CLIP trained on the demo renders) -> data/demo/amazon/features"
$BIN/vip5-data features data/demo/amazon --source amazon --encoder demo-tiny

echo "== 3/6 vip5 fit (embedded default: tiny T5 from config, SentencePiece trained on the corpus)"
# --trainer.default_root_dir is the run directory: the W&B run and checkpoints/ go under it
$BIN/vip5 fit --trainer.default_root_dir "$OUT/vip5" --trainer.max_epochs "${VIP5_EPOCHS:-4}"

echo "== 4/6 vip5 test (per-prompt table) and model-free baselines on the same splits"
$BIN/vip5 test --trainer.default_root_dir "$OUT/vip5" --ckpt_path "$OUT/vip5/checkpoints/last.ckpt"
$BIN/python -m vip5.baselines --data_dir data/demo/amazon --out "$OUT/vip5/baselines.json"

echo "== 5/6 pmg fit (embedded default: small Llama, TF-IDF keywords, the demo text-to-image model)"
$BIN/pmg fit --trainer.default_root_dir "$OUT/pmg" --trainer.max_epochs "${PMG_EPOCHS:-2}"

echo "== 6/6 pmg predict on a few demo users"
$BIN/pmg predict --trainer.default_root_dir "$OUT/pmg" --ckpt_path "$OUT/pmg/checkpoints/last.ckpt"

echo
echo "VIP5 results table: $OUT/vip5/checkpoints/test_results.json (baselines: $OUT/vip5/baselines.json)"
echo "PMG contact sheets: $OUT/pmg/predictions/sheets/ (images: $OUT/pmg/predictions/images/)"
