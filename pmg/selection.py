"""CLIP re-ranking of the weight-grid candidates (PMG paper, "image selection").

Each candidate image gets two similarities: ``d_p`` to the preference-keyword text and ``d_t`` to the
target-keyword text. The kept image maximises

    z = alpha * log(max(d_p, eps)) + (1 - alpha) * log(max(d_t, eps))

The reference code takes the log of raw cosines (x100); a cosine <= 0 then gives NaN or -inf and the
argmax is undefined. Clamping at ``eps`` keeps every score finite; the x100 scale of CLIP logits only
adds a constant to z and is dropped. ``alpha = 0.5`` is the paper's value; the MindSpore demo's
``W_P = 2`` corresponds to ``alpha = 2/3``. ``alpha = 1`` (0) ranks by the preference (target) term alone.

:class:`ClipScorer` wraps open_clip (built by :func:`common.clip.create_clip`). Real weights are loaded by
architecture + pretrained tag; when the tag is not cached offline the error says what to download. Random
weights are only ever used when asked for (``allow_random_weights=True``), and the scorer then says so in
:attr:`ClipScorer.note`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from common.clip import create_clip

TINY_CLIP_ARCH = "pmg-tiny-clip"  # a small from-config CLIP of common.clip: the offline default and tests
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

        model, _ = create_clip(arch, pretrained, allow_random_weights, seed=seed, cache_dir=cache_dir)
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
