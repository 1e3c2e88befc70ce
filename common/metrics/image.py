"""Streaming LPIPS / SSIM between generated images and the target and history images of each sample.

Protocol (PMG's evaluation, Shen et al. 2024, with the image preprocessing that PMG-Bench leaves open fixed and
documented):
- images are float tensors in [0, 1] (uint8 tensors and PIL images are converted); with ``resize`` set,
  every image is first resized to ``resize x resize`` (bicubic, antialiased; PMG-Bench uses 512);
- LPIPS: ``lpips.LPIPS(net="vgg")`` (the package default is alex; PMG-Bench and Pigeon use vgg), inputs
  mapped to [-1, 1];
- SSIM: torchmetrics, Gaussian window 11, sigma 1.5, RGB, ``data_range=1.0`` for [0, 1] images
  (PMG-Bench's 2.0 inflates the score; pass ``ssim_data_range=2.0`` only to compare with its tables);
- "target" = metric(generated, target image); "history" = mean over the sample's history images,
  then the mean (and population std) over samples.

Only running sums are kept (Welford), never the images: Pigeon's evaluation runs out of memory above
~1,500 images because it keeps every tensor in lists.

The LPIPS trunk (ImageNet VGG/AlexNet from torchvision) is a download. Without it, construction fails
with a message saying which file to fetch, unless the caller passes ``allow_random_trunk=True``: the
trunk is then random (``pnet_rand``), :attr:`ImageSimilarity.lpips_is_random` is True and
:attr:`ImageSimilarity.lpips_label` reads "LPIPS (random trunk: plumbing only)".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image

LpipsNet = Literal["vgg", "alex"]
#: One image: PIL, or a [3, H, W] tensor (float in [0, 1] or uint8).
ImageLike = Image.Image | torch.Tensor
#: Several images: a [N, 3, H, W] tensor or a list of single images.
Images = torch.Tensor | Sequence[ImageLike]
_TRUNK_WEIGHTS = {"vgg": "VGG16_Weights", "alex": "AlexNet_Weights"}
METRIC_KEYS = ("lpips_target", "lpips_history", "ssim_target", "ssim_history")


def lpips_trunk_file(net: LpipsNet) -> tuple[Path, str]:
    """(path in the torch hub cache, download URL) of the ImageNet weights the LPIPS trunk loads."""
    import torchvision

    url = getattr(torchvision.models, _TRUNK_WEIGHTS[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def to_image_tensor(image: ImageLike) -> torch.Tensor:
    """PIL image, uint8 tensor or float tensor ([3, H, W] or [N, 3, H, W]) -> float tensor in [0, 1]."""
    if not isinstance(image, torch.Tensor):
        import numpy as np

        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image.float()




class _Running:
    """Welford mean / population variance of a stream of floats."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: Sequence[float]) -> None:
        for v in values:
            self.n += 1
            delta = v - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")


class ImageSimilarity:
    """Accumulate LPIPS and SSIM of generated images to their target and history images.

    Args:
        net: LPIPS trunk, ``"vgg"`` (default, as PMG-Bench / Pigeon) or ``"alex"``.
        allow_random_trunk: build LPIPS with a random trunk when the ImageNet weights are not cached
            (plumbing only; :attr:`lpips_is_random` then says so). Never used when the weights exist.
        use_lpips: False computes SSIM only (no torchvision / lpips needed).
        ssim_data_range: 1.0 for [0, 1] images; 2.0 reproduces PMG-Bench's (inflated) numbers.
        resize: if set, resize every image to ``resize x resize`` first (bicubic, antialiased).
        device: where LPIPS runs.
        max_pairs: LPIPS pairs per forward pass (bounds memory at 512 px).
        seed: seed of the random trunk, so plumbing runs are repeatable.
    """

    def __init__(
        self,
        net: LpipsNet = "vgg",
        allow_random_trunk: bool = False,
        use_lpips: bool = True,
        ssim_data_range: float = 1.0,
        resize: int | None = None,
        device: str | torch.device = "cpu",
        max_pairs: int = 16,
        seed: int = 0,
    ) -> None:
        if net not in _TRUNK_WEIGHTS:
            raise ValueError(f"net must be one of {sorted(_TRUNK_WEIGHTS)}, got {net!r}")
        self.net, self.ssim_data_range, self.resize = net, float(ssim_data_range), resize
        self.device, self.max_pairs = torch.device(device), max_pairs
        self.lpips_is_random = False
        self._lpips = None
        if use_lpips:
            self._lpips = self._build_lpips(net, allow_random_trunk, seed).to(self.device).eval().requires_grad_(False)
        self.reset()

    def _build_lpips(self, net: LpipsNet, allow_random_trunk: bool, seed: int) -> torch.nn.Module:
        import lpips

        path, url = lpips_trunk_file(net)
        if not path.is_file():
            if not allow_random_trunk:
                raise FileNotFoundError(
                    f"LPIPS-{net} needs torchvision's ImageNet {net} weights, not found at {path}. Download {url} "
                    f"to that path (or run torchvision.models.{'vgg16' if net == 'vgg' else 'alexnet'}"
                    "(weights='IMAGENET1K_V1') once online), or pass allow_random_trunk=True for plumbing-only scores."
                )
            self.lpips_is_random = True
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")  # torchvision's deprecated `pretrained=` argument inside lpips
            torch.manual_seed(seed)
            # pretrained=True: the linear heads ship inside the lpips wheel; pnet_rand only for the trunk.
            return lpips.LPIPS(net=net, pretrained=True, pnet_rand=self.lpips_is_random, verbose=False)

    @property
    def lpips_label(self) -> str:
        return "LPIPS (random trunk: plumbing only)" if self.lpips_is_random else f"LPIPS-{self.net}"

    def reset(self) -> None:
        self._stats = {key: _Running() for key in METRIC_KEYS}

    # -- pairwise metrics -------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bicubic", align_corners=False, antialias=True)
        return x.clamp(0.0, 1.0)

    def _batch(self, images: Images) -> torch.Tensor:
        """A tensor batch or a list of images (sizes may differ when ``resize`` is set) -> [N, 3, H, W]."""
        if isinstance(images, torch.Tensor):
            x = to_image_tensor(images)
            return self._prepare(x.unsqueeze(0) if x.dim() == 3 else x)
        return torch.cat([self._prepare(to_image_tensor(im).unsqueeze(0)) for im in images])

    @torch.no_grad()
    def lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pair LPIPS of [N, 3, H, W] images in [0, 1] -> [N]."""
        if self._lpips is None:
            raise RuntimeError("LPIPS disabled (use_lpips=False)")
        out = []
        for i in range(0, a.shape[0], self.max_pairs):
            x = self._prepare(a[i : i + self.max_pairs]).to(self.device) * 2 - 1
            y = self._prepare(b[i : i + self.max_pairs]).to(self.device) * 2 - 1
            out.append(self._lpips(x, y).flatten().double().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def ssim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pair SSIM (Gaussian 11, sigma 1.5) of [N, 3, H, W] images in [0, 1] -> [N]."""
        from torchmetrics.functional.image import structural_similarity_index_measure

        a, b = self._prepare(a), self._prepare(b)
        return structural_similarity_index_measure(
            a.double(), b.double(), gaussian_kernel=True, sigma=1.5, kernel_size=11,
            reduction="none", data_range=self.ssim_data_range,
        ).cpu()  # fmt: skip

    def _pair_metrics(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        if a.shape[-2:] != b.shape[-2:]:
            raise ValueError(f"image sizes differ: {tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}; set `resize`")
        out = {"ssim": self.ssim(a, b)}
        if self._lpips is not None:
            out["lpips"] = self.lpips(a, b)
        return out

    # -- streaming --------------------------------------------------------------------------------
    def update(
        self,
        generated: Images,
        target: Images | None = None,
        history: Sequence[Images] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Add one batch of samples.

        Args:
            generated: ``[B, 3, H, W]`` (or a list of B images), one generated image per sample.
            target: the B target images, or None to skip the target metrics.
            history: one entry per sample, each ``[H_i, 3, H, W]`` or a list of images (empty: skipped),
                or None to skip the history metrics.

        Returns:
            The per-sample values added (``lpips_target`` ... as [B] tensors; NaN where skipped).
        """
        gen = self._batch(generated)
        n = gen.shape[0]
        values = {key: torch.full((n,), float("nan"), dtype=torch.float64) for key in METRIC_KEYS}
        if target is not None:
            tgt = self._batch(target)
            if tgt.shape[0] != n:
                raise ValueError(f"{n} generated images but {tgt.shape[0]} targets")
            for name, v in self._pair_metrics(gen, tgt).items():
                values[f"{name}_target"] = v
        if history is not None:
            if len(history) != n:
                raise ValueError(f"{n} generated images but {len(history)} histories")
            hists = [self._batch(h) if len(h) else None for h in history]
            owner = [i for i, h in enumerate(hists) if h is not None for _ in range(h.shape[0])]
            if owner:
                owner_t = torch.tensor(owner)
                pairs = self._pair_metrics(gen[owner_t], torch.cat([h for h in hists if h is not None]))
                counts = torch.bincount(owner_t, minlength=n).double()
                for name, v in pairs.items():
                    # mean over each sample's own history first, then (in compute) over samples
                    per_sample = torch.zeros(n, dtype=torch.float64).index_add_(0, owner_t, v) / counts
                    values[f"{name}_history"] = torch.where(counts > 0, per_sample, torch.nan)
        self.add(values)
        return values

    def add(self, values: dict[str, Sequence[float] | torch.Tensor]) -> None:
        """Add per-sample values (as :meth:`update` returns them; NaN = skipped) to the running statistics: this is
        how per-sample values gathered from several processes are summarised."""
        for key, v in values.items():
            self._stats[key].add([float(x) for x in v if not math.isnan(float(x))])

    def compute(self) -> dict[str, float | int | bool]:
        """Means and population stds over samples: ``lpips_target``, ``lpips_target_std``, ... ``n_*`` counts."""
        out: dict[str, float | int | bool] = {}
        for key, stat in self._stats.items():
            if stat.n == 0:
                continue
            out[key], out[f"{key}_std"], out[f"n_{key}"] = stat.mean, stat.std, stat.n
        out["lpips_is_random"] = self.lpips_is_random
        return out
