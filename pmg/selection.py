"""CLIP re-ranking of the weight-grid candidates (PMG paper, "image selection").

Each candidate image gets two similarities: ``d_p`` to the preference-keyword text and ``d_t`` to the
target-keyword text. The kept image maximises

    z = alpha * log(max(d_p, eps)) + (1 - alpha) * log(max(d_t, eps))

The reference code takes the log of raw cosines (x100); a cosine <= 0 then gives NaN or -inf and the
argmax is undefined. Clamping at ``eps`` keeps every score finite; the x100 scale of CLIP logits only
adds a constant to z and is dropped. ``alpha = 0.5`` is the paper's value; the MindSpore demo's
``W_P = 2`` corresponds to ``alpha = 2/3``. ``alpha = 1`` (0) ranks by the preference (target) term alone.

:class:`ClipScorer` wraps open_clip. Real weights are loaded by architecture + pretrained tag; when the
tag is not cached offline the error says what to download. Random weights are only ever used when
asked for (``allow_random_weights=True``), and the scorer then says so in :attr:`ClipScorer.note`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

TINY_CLIP_ARCH = "pmg-tiny-clip"
# Small from-config CLIP for the offline default and tests (no weights exist for it: always random).
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
RANDOM_WEIGHTS_NOTE = "CLIP scores from random weights (plumbing only, not a measurement)"


def combine_scores(d_p: torch.Tensor, d_t: torch.Tensor, alpha: float = 0.5, eps: float = 1e-4) -> torch.Tensor:
    """z = alpha*log(max(d_p, eps)) + (1-alpha)*log(max(d_t, eps)); finite for any input cosines."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    d_p = torch.as_tensor(d_p, dtype=torch.float64)
    d_t = torch.as_tensor(d_t, dtype=torch.float64)
    return alpha * d_p.clamp_min(eps).log() + (1.0 - alpha) * d_t.clamp_min(eps).log()


def _as_text(text: str | Sequence[str], sep: str = ", ") -> str:
    return text if isinstance(text, str) else sep.join(text)


def select_best(
    images: torch.Tensor,
    pref_text: str | Sequence[str],
    target_text: str | Sequence[str],
    scorer: ClipScorer,
    alpha: float = 0.5,
    eps: float = 1e-4,
) -> tuple[int, dict[str, torch.Tensor]]:
    """Pick the candidate with the highest z score.

    Args:
        images: candidates ``[K, 3, H, W]`` in [0, 1].
        pref_text: preference keywords (a string, or a list joined with ", ").
        target_text: target keywords (same forms).
        scorer: anything with ``cosine(images, texts) -> [K, len(texts)]`` (normally a :class:`ClipScorer`).
        alpha: weight of the preference term.
        eps: floor applied to the cosines before the log.

    Returns:
        ``(best_index, {"d_p": [K], "d_t": [K], "z": [K]})``, float64 tensors on the CPU.
    """
    cos = scorer.cosine(images, [_as_text(pref_text), _as_text(target_text)]).detach().double().cpu()
    d_p, d_t = cos[:, 0], cos[:, 1]
    z = combine_scores(d_p, d_t, alpha=alpha, eps=eps)
    return int(torch.argmax(z)), {"d_p": d_p, "d_t": d_t, "z": z}


def register_tiny_clip() -> str:
    """Add :data:`TINY_CLIP_CONFIG` to open_clip's model registry (idempotent); returns its name."""
    import open_clip

    if TINY_CLIP_ARCH in open_clip.list_models():
        return TINY_CLIP_ARCH
    # open_clip registers architectures from JSON files only; the registry keeps the parsed dict, so the
    # temporary file can go right away.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{TINY_CLIP_ARCH}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    if TINY_CLIP_ARCH not in open_clip.list_models():
        raise RuntimeError(f"could not register {TINY_CLIP_ARCH} with open_clip")
    return TINY_CLIP_ARCH


def _missing_weights_message(arch: str, pretrained: str, cause: BaseException) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    where = []
    if cfg.get("hf_hub"):
        where.append(f"Hugging Face repo {cfg['hf_hub'].rstrip('/')} (cached under ~/.cache/huggingface/hub)")
    if cfg.get("url"):
        where.append(f"URL {cfg['url']}")
    return (
        f"open_clip weights {arch!r} / {pretrained!r} are not available offline ({cause}). Download them once "
        f"on a machine with network access, e.g. `python -c \"import open_clip; "
        f"open_clip.create_model_and_transforms('{arch}', pretrained='{pretrained}')\"` and copy the cache, "
        f"or download the checkpoint file and pass its path as `pretrained`. Source: {'; '.join(where) or 'n/a'}."
    )


class ClipScorer:
    """Cosine similarity between images and texts with an open_clip model.

    Args:
        arch: open_clip architecture name (``ViT-B-32``), or :data:`TINY_CLIP_ARCH` for the small
            from-config model of the offline default.
        pretrained: open_clip pretrained tag (``openai``) or a checkpoint path; ``None`` builds random
            weights, which must be asked for with ``allow_random_weights``.
        allow_random_weights: required with ``pretrained=None``; scores are then meaningless and
            :attr:`note` says so.
        device: where the model runs (default CPU).
        cache_dir: optional open_clip download cache.
        seed: seed of the random initialisation (``pretrained=None`` only), so runs are repeatable.
    """

    def __init__(
        self,
        arch: str = "ViT-B-32",
        pretrained: str | None = "openai",
        allow_random_weights: bool = False,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        import open_clip

        if arch == TINY_CLIP_ARCH:
            register_tiny_clip()
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {arch!r}; known: {', '.join(open_clip.list_models())}")
        if pretrained is None:
            if not allow_random_weights:
                raise ValueError(
                    f"pretrained=None would give {arch} random weights; pass allow_random_weights=True to accept "
                    "meaningless scores (tests, plumbing), or name a pretrained tag / checkpoint path"
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=None)
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags and not os.path.isfile(pretrained):
                raise ValueError(f"{pretrained!r} is neither a pretrained tag of {arch} ({tags}) nor a file")
            try:
                model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained, cache_dir=cache_dir)
            except RuntimeError as e:
                raise RuntimeError(_missing_weights_message(arch, pretrained, e)) from e
        self.arch, self.pretrained = arch, pretrained
        self.random_weights = pretrained is None
        self.note = RANDOM_WEIGHTS_NOTE if self.random_weights else ""
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self._mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> CLIP input: bicubic resize of the short side, centre crop, normalise.

        Mirrors open_clip's PIL transform (resize_mode "shortest") on tensors, so generated images need no
        round trip through PIL.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        th, tw = self.image_size
        h, w = images.shape[-2:]
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        x = images.float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top : top + th, left : left + tw]
        return (x - self._mean.to(x)) / self._std.to(x)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images.to(self.device))
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def cosine(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity ``[N_images, N_texts]`` in [-1, 1]."""
        return (self.encode_images(images) @ self.encode_texts(texts).T).clamp(-1.0, 1.0)

    def __repr__(self) -> str:
        tail = f", note={self.note!r}" if self.note else ""
        return f"ClipScorer(arch={self.arch!r}, pretrained={self.pretrained!r}{tail})"
