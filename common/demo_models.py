"""Small models trained on the demo shop's renders: a CLIP and an attribute probe.

The demo shop (:mod:`common.data.demo`) draws every item image from three visible attributes: colour, shape
and pattern (category and price tier are not drawn). Both models here learn from fresh renders of the same
renderer, at every combination of those attributes and on the three backgrounds of the demo formats, so they
need no data folder and are deterministic for a seed.

- **Demo CLIP**: the small open_clip architecture ``pmg-tiny-clip`` (:data:`common.clip.TINY_ARCHS`) trained
  contrastively with open_clip's own loss (:class:`open_clip.ClipLoss`) on renders and captions such as
  "a red striped star". Saved as an open_clip checkpoint (``open_clip_model.safetensors``) in a folder and loaded
  like any local checkpoint: ``common.clip.create_clip("pmg-tiny-clip", "<folder>")``. It is the weights of the
  ``demo-tiny`` feature encoder and of the offline default's CLIP selection.
- **Attribute probe**: a small CNN (plain PyTorch) with one head per attribute, used by ``pmg test`` on the demo
  to measure whether a generated image shows the target item's shape and the user's preferred colour
  (:func:`probe_accuracy`).

Trained folders are committed under ``common/demo_weights/``, made on CPU (one thread, fixed seeds) by::

    python -m common.demo_models clip  --out common/demo_weights/clip
    python -m common.demo_models probe --out common/demo_weights/probe

Each prints its held-out accuracy (image -> caption retrieval for CLIP, per attribute for the probe), which is
also written to the folder's ``config.json``.

The demo's text-to-image model (``common/demo_weights/diffusion``) is made by :mod:`pmg.demo_diffusion`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.data.demo import COLOURS, PATTERN_ADJ, PATTERNS, SHAPES, _render
from common.weights import ModelNotAvailableError

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO_ROOT / "common" / "demo_weights"
DEMO_CLIP_DIR = WEIGHTS_DIR / "clip"  # the committed demo CLIP (open_clip checkpoint folder)
DEMO_PROBE_DIR = WEIGHTS_DIR / "probe"  # the committed attribute probe
DEMO_CLIP_ARCH = "pmg-tiny-clip"
CLIP_FILE = "open_clip_model.safetensors"
PROBE_FILE = "probe.safetensors"
CONFIG_FILE = "config.json"
ATTRIBUTES: dict[str, list[str]] = {"colour": list(COLOURS), "shape": list(SHAPES), "pattern": list(PATTERNS)}
BACKGROUNDS = ((244, 242, 236), (255, 255, 255), (28, 28, 38))  # Amazon, POG, MovieLens renders
RENDER_SIZE = 64  # the demo's default image size; models resize to their own input size


def resolve(path: str | Path) -> Path:
    """``path`` as given, or, for a relative path that is not there, the same path under the repository root
    (so that configs can name ``common/demo_weights/...`` from any working directory)."""
    path = Path(path)
    if path.exists() or path.is_absolute() or not (REPO_ROOT / path).exists():
        return path
    return REPO_ROOT / path


def reproduce_command(kind: str, out: str | Path) -> str:
    return f"python -m common.demo_models {kind} --out {out}"


# -- renders ------------------------------------------------------------------------------------------
def combos() -> list[tuple[int, int, int]]:
    """Every (colour, shape, pattern) index triple, in a fixed order."""
    return [(c, s, p) for c in range(len(COLOURS)) for s in range(len(SHAPES)) for p in range(len(PATTERNS))]


def caption(colour: str, shape: str, pattern: str) -> str:
    """The text of a render, e.g. "a red striped star"."""
    return f"a {colour} {PATTERN_ADJ[pattern]} {shape}"


def render_pixels(per_combo: int, seed: int, size: int = RENDER_SIZE,
                  fit_to: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """``per_combo`` renders of every attribute combination as uint8 pixels ``[N, H, W, 3]`` and attribute indices
    ``[N, 3]`` (colour, shape, pattern); backgrounds cycle through the demo formats'. ``fit_to`` centre-crops and
    resizes each PNG (bicubic) to that side, as PMG reads item images; None keeps the rendered ``size``."""
    import io

    from PIL import Image, ImageOps

    rng = np.random.default_rng(seed)
    images, labels = [], []
    names = (list(COLOURS), list(SHAPES), list(PATTERNS))
    for k in range(per_combo):
        for j, (c, s, p) in enumerate(combos()):
            bg = BACKGROUNDS[(j + k) % len(BACKGROUNDS)]
            png = _render(rng, names[0][c], names[1][s], names[2][p], size, bg)
            with Image.open(io.BytesIO(png)) as img:
                img = img.convert("RGB")
                if fit_to is not None:
                    img = ImageOps.fit(img, (fit_to, fit_to), method=Image.Resampling.BICUBIC)
                images.append(np.asarray(img))
            labels.append((c, s, p))
    return np.stack(images), torch.tensor(labels)


def render_set(per_combo: int, seed: int, size: int = RENDER_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`render_pixels` as images ``[N, 3, size, size]`` in [0, 1] and attribute indices ``[N, 3]``."""
    pixels, labels = render_pixels(per_combo, seed, size)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0, labels


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild photometric noise so that generated (noisy) images are not out of distribution at once."""
    scale = 1 + 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=gen) - 0.5)
    noise = 0.03 * torch.randn(x.shape, generator=gen)
    return (x * scale + noise).clamp(0, 1)


# -- folders ------------------------------------------------------------------------------------------
def _read_config(folder: Path, weights: str, what: str, kind: str) -> dict[str, Any]:
    folder = Path(folder)
    hint = f"recreate it with `{reproduce_command(kind, folder)}`"
    if not folder.is_dir():
        raise ModelNotAvailableError(f"{what} folder {folder} does not exist; {hint}")
    for name in (weights, CONFIG_FILE):
        if not (folder / name).is_file():
            raise ModelNotAvailableError(f"{what} folder {folder} has no {name}; {hint}")
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as e:
        raise ModelNotAvailableError(f"{what} folder {folder}: unreadable {CONFIG_FILE} ({e}); {hint}") from e


def _load_tensors(path: Path, what: str, kind: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a corrupt header or data
        raise ModelNotAvailableError(
            f"{what} weights {path} cannot be read ({type(e).__name__}: {e}); recreate them with "
            f"`{reproduce_command(kind, path.parent)}`"
        ) from e


def _write_folder(folder: Path, tensors: dict[str, torch.Tensor], weights: str, config: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from common.io import atomic_dir

    with atomic_dir(Path(folder)) as staging:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / weights))
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")


# -- CLIP ---------------------------------------------------------------------------------------------
def clip_checkpoint(folder: str | Path) -> Path:
    """The open_clip checkpoint file of a demo CLIP folder (errors name the folder and how to recreate it)."""
    folder = resolve(folder)
    _read_config(folder, CLIP_FILE, "demo CLIP", "clip")
    return folder / CLIP_FILE


def retrieval_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    """Top-1 image -> text retrieval over the captions of all attribute combinations (chance 1/90)."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(DEMO_CLIP_ARCH)
    names = (list(COLOURS), list(SHAPES), list(PATTERNS))
    texts = [caption(names[0][c], names[1][s], names[2][p]) for c, s, p in combos()]
    index = {t: i for i, t in enumerate(combos())}
    model.eval()
    with torch.no_grad():
        t = F.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1)
        hits = 0
        for i in range(0, len(images), batch):
            x = _clip_input(model, images[i : i + batch])
            v = F.normalize(model.encode_image(x).float(), dim=-1)
            pred = (v @ t.T).argmax(-1)
            truth = torch.tensor([index[tuple(r)] for r in labels[i : i + batch].tolist()])
            hits += int((pred == truth).sum())
    return hits / len(images)


def _clip_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def train_clip(out: str | Path, steps: int = 400, batch: int = 64, per_combo: int = 24, test_per_combo: int = 4,
               lr: float = 2e-3, seed: int = 0, log_every: int = 50) -> dict[str, Any]:
    """Train the demo CLIP contrastively and save it in ``out``; returns its config (with the accuracy).

    Every batch holds ``batch`` distinct attribute combinations (no false negatives in the contrastive loss),
    one render of each, drawn from ``per_combo`` training renders per combination.
    """
    import open_clip

    from common.clip import create_clip

    torch.manual_seed(seed)
    t0 = time.time()
    images, labels = render_set(per_combo, seed=seed)
    test_images, test_labels = render_set(test_per_combo, seed=seed + 10_000)
    model, _ = create_clip(DEMO_CLIP_ARCH, None, allow_random_weights=True, seed=seed)
    tokenizer = open_clip.get_tokenizer(DEMO_CLIP_ARCH)
    names = (list(COLOURS), list(SHAPES), list(PATTERNS))
    all_combos = combos()
    tokens = tokenizer([caption(names[0][c], names[1][s], names[2][p]) for c, s, p in all_combos])
    n_combo = len(all_combos)
    batch = min(batch, n_combo)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        which = torch.randperm(n_combo, generator=gen)[:batch]
        copy = torch.randint(0, per_combo, (batch,), generator=gen)
        x = _augment(images[copy * n_combo + which], gen)
        img = F.normalize(model.encode_image(_clip_input(model, x)), dim=-1)
        txt = F.normalize(model.encode_text(tokens[which]), dim=-1)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if log_every and (step + 1) % log_every == 0:
            print(f"clip step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    acc = retrieval_accuracy(model, test_images, test_labels)
    config = {
        "arch": DEMO_CLIP_ARCH,
        "checkpoint": CLIP_FILE,
        "trained_on": "renders of common.data.demo (every colour x shape x pattern, three backgrounds) with "
                      "captions 'a <colour> <pattern> <shape>'; loss open_clip.ClipLoss",
        "steps": steps, "batch": batch, "per_combo": per_combo, "lr": lr, "seed": seed,
        "heldout_image_to_text_top1": round(acc, 4),
        "heldout_images": len(test_images), "captions": n_combo,
        "train_seconds": round(time.time() - t0, 1),
        "command": reproduce_command("clip", out),
    }
    _write_folder(Path(out), model.state_dict(), CLIP_FILE, config)
    return config


# -- attribute probe ----------------------------------------------------------------------------------
class AttributeProbe(nn.Module):
    """A small CNN with one classification head per visible attribute (colour, shape, pattern).

    Args:
        attributes: attribute -> its values (the head's classes, in order).
        image_size: input side; images of any size are resized to it (bicubic, antialiased).
        width: channels of the first convolution (doubled twice).
    """

    def __init__(self, attributes: Mapping[str, Sequence[str]] | None = None, image_size: int = 32,
                 width: int = 16) -> None:
        super().__init__()
        self.attributes = {k: list(v) for k, v in (attributes or ATTRIBUTES).items()}
        self.image_size, self.width = image_size, width
        w = width

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        self.trunk = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(4 * w, len(v)) for k, v in self.attributes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[N, 3, H, W]`` in [0, 1] -> attribute -> logits ``[N, classes]``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        h = self.trunk(x * 2 - 1)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        """The predicted value of every attribute, one dict per image."""
        was = self.training
        self.eval()
        logits = self(images)
        self.train(was)
        idx = {k: v.argmax(-1).tolist() for k, v in logits.items()}
        return [{k: self.attributes[k][idx[k][i]] for k in idx} for i in range(images.shape[0])]

    def config(self) -> dict[str, Any]:
        return {"attributes": self.attributes, "image_size": self.image_size, "width": self.width}


def save_probe(probe: AttributeProbe, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``probe.safetensors`` and ``config.json`` (architecture plus ``extra``) into ``folder``."""
    _write_folder(Path(folder), probe.state_dict(), PROBE_FILE, {**probe.config(), **(extra or {})})


def load_probe(folder: str | Path) -> AttributeProbe:
    """The probe saved in ``folder``, in eval mode.

    Raises:
        ModelNotAvailableError: the folder, its files or its weights are missing or unreadable (the message
            names the path and the command that recreates it).
    """
    folder = resolve(folder)
    cfg = _read_config(folder, PROBE_FILE, "attribute probe", "probe")
    try:
        probe = AttributeProbe(cfg["attributes"], cfg["image_size"], cfg["width"])
        probe.load_state_dict(_load_tensors(folder / PROBE_FILE, "attribute probe", "probe"))
    except (KeyError, TypeError, RuntimeError) as e:
        if isinstance(e, ModelNotAvailableError):
            raise
        raise ModelNotAvailableError(
            f"attribute probe folder {folder} does not match its config ({type(e).__name__}: {e}); recreate it "
            f"with `{reproduce_command('probe', folder)}`"
        ) from e
    return probe.eval()


def probe_accuracies(probe: AttributeProbe, images: torch.Tensor, labels: torch.Tensor,
                     batch: int = 512) -> dict[str, float]:
    """Per-attribute accuracy of ``probe`` on images with label indices ``[N, n_attributes]``."""
    probe.eval()
    hits = {k: 0 for k in probe.attributes}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            logits = probe(images[i : i + batch])
            for j, k in enumerate(probe.attributes):
                hits[k] += int((logits[k].argmax(-1) == labels[i : i + batch, j]).sum())
    return {k: v / len(images) for k, v in hits.items()}


def train_probe(out: str | Path | None, epochs: int = 6, per_combo: int = 20, test_per_combo: int = 6,
                batch: int = 64, lr: float = 3e-3, seed: int = 0, image_size: int = 32, width: int = 16,
                verbose: bool = True) -> tuple[AttributeProbe, dict[str, Any]]:
    """Train the attribute probe on fresh renders and save it in ``out`` (None: do not save).

    Returns the probe and its config, including ``heldout_accuracy`` per attribute (renders of another seed).
    """
    torch.manual_seed(seed)
    t0 = time.time()
    images, labels = render_set(per_combo, seed=seed)
    test_images, test_labels = render_set(test_per_combo, seed=seed + 10_000)
    probe = AttributeProbe(ATTRIBUTES, image_size=image_size, width=width)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(images) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        probe.train()
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(0, len(images), batch):
            idx = order[i : i + batch]
            logits = probe(_augment(images[idx], gen))
            loss = sum(F.cross_entropy(logits[k], labels[idx, j]) for j, k in enumerate(probe.attributes))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose:
            print(f"probe epoch {epoch + 1}/{epochs} loss {total / len(images):.4f}", flush=True)
    acc = probe_accuracies(probe, test_images, test_labels)
    config = {
        "trained_on": "renders of common.data.demo (every colour x shape x pattern, three backgrounds)",
        "epochs": epochs, "per_combo": per_combo, "batch": batch, "lr": lr, "seed": seed,
        "heldout_accuracy": {k: round(v, 4) for k, v in acc.items()}, "heldout_images": len(test_images),
        "train_seconds": round(time.time() - t0, 1),
    }
    if out is not None:
        config["command"] = reproduce_command("probe", out)
        save_probe(probe, out, config)
    return probe.eval(), config


# -- personalisation metrics ----------------------------------------------------------------------------
TARGET_ATTRIBUTE = "shape"  # what the generated image must share with the target item
PREFERENCE_ATTRIBUTE = "colour"  # what it must share with the user's taste


def probe_accuracy(probe: AttributeProbe, images: torch.Tensor, targets: Sequence[Mapping[str, str]],
                   tastes: Sequence[Mapping[str, str]]) -> dict[str, list[float]]:
    """Per image: ``target_acc`` = 1 when the probe sees the target item's shape, ``pref_acc`` = 1 when it sees
    the user's preferred colour (both from the demo's ``truth.json``), else 0."""
    if not len(images) == len(targets) == len(tastes):
        raise ValueError(f"{len(images)} images, {len(targets)} targets and {len(tastes)} tastes")
    seen = probe.predict(images)
    return {
        "target_acc": [float(p[TARGET_ATTRIBUTE] == t[TARGET_ATTRIBUTE]) for p, t in zip(seen, targets)],
        "pref_acc": [float(p[PREFERENCE_ATTRIBUTE] == u[PREFERENCE_ATTRIBUTE]) for p, u in zip(seen, tastes)],
    }


class DemoTruth:
    """The ground truth of one demo format (``truth.json`` of :func:`common.data.demo.generate_demo`)."""

    def __init__(self, path: str | Path, domain: str) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"demo ground truth {path} does not exist (written by `vip5-data demo`)")
        truth = json.loads(path.read_text())
        if domain not in truth:
            formats = sorted(k for k in truth if k != "attributes")
            raise ValueError(f"{path} has no demo format {domain!r}; formats: {formats}")
        self.path, self.domain = path, domain
        self.items: dict[str, dict[str, str]] = truth[domain]["items"]
        self.users: dict[str, dict[str, str]] = truth[domain]["users"]

    def item(self, item_id: str) -> dict[str, str]:
        if str(item_id) not in self.items:
            raise KeyError(f"item {item_id!r} is not in {self.path} ({self.domain})")
        return self.items[str(item_id)]

    def user(self, user_id: str) -> dict[str, str]:
        if str(user_id) not in self.users:
            raise KeyError(f"user {user_id!r} is not in {self.path} ({self.domain})")
        return self.users[str(user_id)]


# -- CLI ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m common.demo_models", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("clip", help="train the demo CLIP; prints held-out image->text retrieval accuracy")
    c.add_argument("--out", default=str(DEMO_CLIP_DIR))
    c.add_argument("--steps", type=int, default=400)
    c.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("probe", help="train the attribute probe; prints held-out accuracy per attribute")
    q.add_argument("--out", default=str(DEMO_PROBE_DIR))
    q.add_argument("--epochs", type=int, default=6)
    q.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one thread: fast for these small models and reproducible bit for bit
    if args.kind == "clip":
        cfg = train_clip(args.out, steps=args.steps, seed=args.seed)
        print(f"demo CLIP -> {args.out}: held-out image->text top-1 {cfg['heldout_image_to_text_top1']:.4f} over "
              f"{cfg['captions']} captions ({cfg['heldout_images']} images, chance {1 / cfg['captions']:.4f}); "
              f"{cfg['train_seconds']} s")
    else:
        _, cfg = train_probe(args.out, epochs=args.epochs, seed=args.seed)
        accs = ", ".join(f"{k} {v:.4f}" for k, v in cfg["heldout_accuracy"].items())
        print(f"attribute probe -> {args.out}: held-out accuracy {accs} ({cfg['heldout_images']} images); "
              f"{cfg['train_seconds']} s")


if __name__ == "__main__":
    main()
