"""Train-step time and peak memory of VIP5 adapter training vs full fine-tuning (paper RQ2 efficiency claim).

Usage::

    python bench/vip5_efficiency.py [--threads 2] [--batch 8] [--src-len 128] [--tgt-len 8] [--steps 10]

Both modes use the same t5-small-shaped model built from a config (no download; 6+6 layers, d 512, vocab 32,100,
n = 2 image tokens of a 512-d feature, shared r = 8 adapters at 30 sites), the same random batch and the same
step: forward, backward, fused ``AdamW.step()`` over ``model.trainable_parameters()``. ``training_mode="adapters"``
trains adapters + layer norms + visual mapper (4.37 %); ``"full"`` trains every parameter.

Method:

- Each mode lives in its own fresh child process, so allocator state and the memory high-water mark of one mode
  cannot leak into the other. The parent drives the two children in lock-step: it asks one child for one train
  step, waits for it, then asks the other (alternating which goes first), so only one step ever runs at a time
  (2-core machines), and slow drifts in the machine's load hit both modes alike instead of whichever happened to
  run second.
- Time: ``--warmup`` untimed steps per mode (allocates AdamW state, warms kernels), then the median wall time of
  ``--steps`` steps (``time.perf_counter``; ``torch.cuda.synchronize`` around each step on CUDA). The median
  ratio of the paired steps is printed as well, and the process CPU time per step as a cross-check.
- Peak memory on CPU: tracemalloc does not see torch's allocations, and ``ru_maxrss`` is a lifetime high-water
  mark that would also hold the transient peak of model construction. So each child records its resident set
  (RSS) after imports and before the model is built (the Python/torch runtime, identical in both modes), builds
  the model, frees what construction left behind (``gc.collect`` + glibc ``malloc_trim``), resets the kernel's
  high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and reads ``VmHWM`` from
  ``/proc/self/status`` after the timed steps. Reported peak = VmHWM - runtime RSS = weights + gradients +
  optimizer state + activations at their highest point: the CPU analogue of ``torch.cuda.max_memory_allocated``.
  The runtime-inclusive RSS peaks are printed too. Where clear_refs is not writable the child falls back to
  ``ru_maxrss`` and says so.
- On CUDA (``--device cuda``) peak = ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
  (taken after the model is built).

- Matmul FLOPs: after the peak is read, each child counts one more forward + backward with
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies only). Adapter training skips exactly the
  frozen weights' gradient matmuls (``tests/vip5/test_model.py``) and still runs the forward and the input
  gradients of every frozen layer, because the visual mapper and the layer norms below them train. So the
  FLOP ratio is where the step-time ratio of a matmul-bound device lands; only full finetuning's non-matmul
  extras (optimizer update, embedding gradients) take the time ratio below it.

The last stdout line is one JSON object: ``{"trainable_pct", "step_time_ratio", "peak_mem_ratio",
"matmul_flop_ratio"}`` with ratios adapters / full (lower is better).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

T5_SMALL_SHAPE = dict(
    vocab_size=32100,
    d_model=512,
    d_ff=2048,
    num_layers=6,
    num_decoder_layers=6,
    num_heads=8,
    d_kv=64,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
)
IMAGE_TOKEN_ID = 32099
MODES = ("adapters", "full")


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync_time(cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def make_batch(batch: int, src_len: int, tgt_len: int, items: int, n_tokens: int, feature_dim: int, seed: int = 0):
    """A VIP5-like batch: ``items`` items per prompt, each an id piece followed by ``n_tokens`` image slots."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32000, (batch, src_len), generator=g)
    step = src_len // (items + 1)
    for i in range(items):
        start = 4 + i * step
        ids[:, start : start + n_tokens] = IMAGE_TOKEN_ID
    ids[:, -1] = 1  # </s>
    whole_word = (torch.arange(src_len) // 2 + 1).clamp(max=1023).expand(batch, src_len).clone()
    whole_word[:, -1] = 0
    feats = torch.randn(batch, items, feature_dim, generator=g)
    labels = torch.randint(3, 32000, (batch, tgt_len), generator=g)
    labels[:, -1] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "whole_word_ids": whole_word,
        "image_feats": feats,
        "labels": labels.contiguous(),
    }


def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def child(args: argparse.Namespace) -> None:
    """Build one mode's model, then serve ``step`` / ``stop`` commands read line by line from stdin."""
    import torch

    torch.set_num_threads(args.threads)
    from vip5.adapters import AdapterConfig
    from vip5.model import VIP5Config, VIP5Model

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    _trim()
    runtime_kb = _rss_kb()
    torch.manual_seed(0)
    config = VIP5Config(backbone_config={**T5_SMALL_SHAPE, "dropout_rate": args.dropout},
                        n_image_tokens=args.n_image_tokens, adapter=AdapterConfig(reduction_factor=8),
                        training_mode=args.mode)
    model = VIP5Model(config, feature_dim=512, image_token_id=IMAGE_TOKEN_ID).to(device)
    model.train()
    counts = model.count_parameters()
    data = make_batch(args.batch, args.src_len, args.tgt_len, args.items, args.n_image_tokens, 512)
    data = {k: v.to(device) for k, v in data.items()}
    # Fused AdamW (one kernel over all tensors, CPU and CUDA) in both modes: the default per-tensor loop would
    # mostly time Python and op-launch overhead, not optimizer work.
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, weight_decay=0.01, fused=True)

    _trim()
    built_kb = _rss_kb()
    hwm_reset = _reset_hwm()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _reply({"ready": True})

    for line in sys.stdin:
        if line.strip() != "step":
            break
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = model(**data).loss
        t1 = _sync_time(cuda)
        loss.backward()
        t2 = _sync_time(cuda)
        opt.step()
        t3 = _sync_time(cuda)
        _reply({"time": t3 - t0, "cpu": time.process_time() - c0, "loss": loss.item(),
                "phases": {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}})

    result = {
        "mode": args.mode,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "trainable": counts["trainable"],
        "total": counts["total"],
        "trainable_pct": counts["pct"],
        "optimizer_tensors": len(opt.state),
    }
    if cuda:
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_method"] = "torch.cuda.max_memory_allocated"
    else:
        peak_kb = _hwm_kb() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result["peak_mem_mb"] = (peak_kb - runtime_kb) / 1024
        result["peak_rss_mb"] = peak_kb / 1024
        result["runtime_rss_mb"] = runtime_kb / 1024
        result["after_build_rss_mb"] = built_kb / 1024
        result["peak_method"] = "VmHWM reset after build" if hwm_reset else "ru_maxrss (includes build peak)"
    # After the peak was read: one more forward + backward, counted by torch's FLOP counter (matmuls only).
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops:
        model(**data).loss.backward()
    result["matmul_gflop"] = flops.get_total_flops() / 1e9
    _reply(result)


class _Child:
    def __init__(self, mode: str, args: argparse.Namespace):
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        env.setdefault("HF_HUB_OFFLINE", "1")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode]
        for key in ("threads", "batch", "src_len", "tgt_len", "items", "n_image_tokens", "dropout", "device"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        self.mode = mode
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.mode} child exited with code {self.proc.wait()}")
        return json.loads(line)

    def send(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> dict:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.close()
        result = self.read()
        self.proc.wait()
        return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--src-len", type=int, default=128)
    p.add_argument("--tgt-len", type=int, default=8)
    p.add_argument("--items", type=int, default=10, help="items (images) per prompt")
    p.add_argument("--n-image-tokens", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--dropout", type=float, default=0.1, help="T5 dropout_rate (VIP5: 0.1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="adapters", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return

    print(
        f"VIP5 efficiency: t5-small shape, batch {args.batch} x {args.src_len} source / {args.tgt_len} target tokens, "
        f"dropout {args.dropout}, {args.device}, {args.threads} threads, {args.warmup} warm-up + median of "
        f"{args.steps} steps per mode",
        flush=True,
    )
    children = {}
    for mode in MODES:  # built one after the other; each child then idles on stdin
        print(f"building training_mode={mode} in a fresh process ...", flush=True)
        children[mode] = _Child(mode, args)
        children[mode].read()
    steps: dict[str, list[dict]] = {m: [] for m in MODES}
    for i in range(args.warmup + args.steps):
        order = MODES if i % 2 == 0 else MODES[::-1]
        pair = {m: children[m].send("step") for m in order}
        timed = i >= args.warmup
        label = f"step {i - args.warmup + 1}/{args.steps}" if timed else f"warm-up {i + 1}/{args.warmup}"
        print(
            f"  {label}: adapters {pair['adapters']['time']:.3f} s, full {pair['full']['time']:.3f} s, "
            f"load avg {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if timed:
            for m in MODES:
                steps[m].append(pair[m])
    results = {m: children[m].finish() for m in MODES}

    for m in MODES:
        r = results[m]
        r["step_time_s"] = statistics.median(s["time"] for s in steps[m])
        r["step_cpu_s"] = statistics.median(s["cpu"] for s in steps[m])
        r["phases_s"] = {k: statistics.median(s["phases"][k] for s in steps[m]) for k in steps[m][0]["phases"]}
        extra = f", runtime-inclusive peak RSS {r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        print(
            f"{m}: trainable {r['trainable']:,} / {r['total']:,} ({r['trainable_pct']:.2f}%), "
            f"optimizer tensors {r['optimizer_tensors']}, step {r['step_time_s']:.3f} s median "
            f"(process cpu {r['step_cpu_s']:.3f} s), peak {r['peak_mem_mb']:.0f} MB [{r['peak_method']}]{extra}",
            flush=True,
        )
    a, f = results["adapters"], results["full"]
    for m in MODES:
        ph = results[m]["phases_s"]
        print(f"{m} phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in ph.items()), flush=True)
    # Adapters skip the frozen weights' gradients and optimizer update, never the forward or the backward through
    # the frozen layers (the trainable visual mapper and layer norms sit below them): that is the floor.
    print(f"adapter backward / full backward: {a['phases_s']['backward'] / f['phases_s']['backward']:.3f}; "
          f"forward share of the full step: {f['phases_s']['forward'] / f['step_time_s']:.3f}", flush=True)
    paired = statistics.median(x["time"] / y["time"] for x, y in zip(steps["adapters"], steps["full"]))
    print(f"median of paired step-time ratios: {paired:.3f}", flush=True)
    flop_ratio = a["matmul_gflop"] / f["matmul_gflop"]
    print(f"matmul FLOPs per step (torch.utils.flop_counter): adapters {a['matmul_gflop']:.1f} G, "
          f"full {f['matmul_gflop']:.1f} G, ratio {flop_ratio:.3f}: the time ratio of a matmul-bound step", flush=True)
    print(f"process cpu-time ratio: {a['step_cpu_s'] / f['step_cpu_s']:.3f}", flush=True)
    if "peak_rss_mb" in a:
        print(f"runtime-inclusive peak RSS ratio: {a['peak_rss_mb'] / f['peak_rss_mb']:.3f}", flush=True)
    summary = {
        "trainable_pct": round(a["trainable_pct"], 2),
        "step_time_ratio": round(a["step_time_s"] / f["step_time_s"], 3),
        "peak_mem_ratio": round(a["peak_mem_mb"] / f["peak_mem_mb"], 3),
        "matmul_flop_ratio": round(flop_ratio, 3),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
