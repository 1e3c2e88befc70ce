"""The one place that builds open_clip models: feature extraction (common.data.features) and PMG's CLIP
selection (pmg.selection) both call :func:`create_clip`.

It registers the small from-config architectures, checks the architecture and the pretrained tag, refuses random
weights for a real architecture unless asked, initialises random weights under a fixed seed (identical on every
run and rank), uses QuickGELU where the pretrained tag was trained with it, and turns weights that cannot be
loaded offline into a :class:`~common.weights.ModelNotAvailableError` saying what to download.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.weights import ModelNotAvailableError

# Small architectures built from a config (random init, seeded), cheap enough for CPU demos and tests. The two
# share the vision tower; the PMG one has a text tower that takes open_clip's 77-token BPE prompts.
TINY_ARCHS: dict[str, dict[str, Any]] = {
    "demo-tiny-clip": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2, "layers": 1},
    },
    "pmg-tiny-clip": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}


def register_tiny_archs() -> None:
    """Add :data:`TINY_ARCHS` to open_clip's registry (idempotent, through its public ``add_model_config``)."""
    import open_clip

    todo = {k: v for k, v in TINY_ARCHS.items() if k not in open_clip.list_models()}
    if not todo:
        return
    with tempfile.TemporaryDirectory() as tmp:  # the registry keeps the parsed configs, not the files
        for name, cfg in todo.items():
            (Path(tmp) / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp)


def check_random_weights(arch: str, pretrained: str | None, allow_random_weights: bool) -> None:
    """Raise ValueError where ``pretrained=None`` would give a real architecture random weights unasked."""
    if pretrained is None and not allow_random_weights:
        raise ValueError(
            f"pretrained=None would give {arch} random weights and meaningless outputs. Name pretrained weights "
            f"(e.g. 'openai' or a local checkpoint file), or pass allow_random_weights=True to accept random "
            f"weights on purpose (tests, plumbing); the small from-config architectures are {sorted(TINY_ARCHS)}"
        )


def _tags(arch: str) -> list[str]:
    import open_clip

    return open_clip.list_pretrained_tags_by_model(arch)


def _hub_arch(arch: str) -> bool:
    return arch.startswith(("hf-hub:", "local-dir:"))


def create_clip(
    arch: str,
    pretrained: str | None,
    allow_random_weights: bool = False,
    seed: int = 0,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> tuple[nn.Module, Callable]:
    """An open_clip model in eval mode and its eval image transform.

    Args:
        arch: open_clip architecture (``ViT-B-32``, ``RN50``, ``hf-hub:...``) or one of :data:`TINY_ARCHS`.
        pretrained: open_clip pretrained tag (``openai`` ...), a local checkpoint file, or a folder holding
            ``open_clip_model.safetensors`` (e.g. the demo CLIP of :mod:`common.demo_models`; a relative path missing
            from the working directory is taken from the repository root); None builds random
            weights, which must be asked for with ``allow_random_weights``.
        allow_random_weights: accept ``pretrained=None``.
        seed: seed of the random initialisation (the global RNG is left as it was).
        quick_gelu: QuickGELU activations (what OpenAI's weights were trained with). None takes it from the
            pretrained tag; set True when ``pretrained`` is a local file holding OpenAI weights.
        cache_dir: open_clip download cache.

    Raises:
        ValueError: unknown architecture or tag, or random weights not asked for.
        ModelNotAvailableError: the pretrained weights are neither cached locally nor downloadable.
    """
    import open_clip

    register_tiny_archs()
    if not _hub_arch(arch) and arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; valid: {', '.join(open_clip.list_models())}")
    check_random_weights(arch, pretrained, allow_random_weights)
    if pretrained is not None and not _hub_arch(arch) and pretrained not in _tags(arch):
        from common.demo_models import clip_checkpoint, resolve

        pretrained = str(resolve(pretrained))  # a relative folder or file missing here: the repository's
        if os.path.isdir(pretrained):
            pretrained = str(clip_checkpoint(pretrained))
    local = pretrained is not None and os.path.isfile(pretrained)
    if pretrained is not None and not _hub_arch(arch):
        tags = _tags(arch)
        if pretrained not in tags and not os.path.isfile(pretrained):
            raise ValueError(
                f"cannot load CLIP weights {pretrained!r} for {arch}: neither a known tag ({tags}) nor an existing "
                "checkpoint file or folder"
            )
    if quick_gelu is None:
        quick_gelu = bool(pretrained and open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, force_quick_gelu=quick_gelu, cache_dir=cache_dir
            )
        except Exception as e:
            if local:  # a local file that does not load: name it, never point at a download
                raise ModelNotAvailableError(
                    f"CLIP checkpoint {pretrained} cannot be loaded into {arch} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})"
                ) from e
            if isinstance(e, RuntimeError):
                raise clip_weights_error(arch, pretrained, e) from e
            raise
    return model.eval(), preprocess


def clip_weights_error(arch: str, pretrained: str | None, error: Exception) -> ModelNotAvailableError:
    """The error for open_clip weights that are not cached and cannot be downloaded: what to fetch, and where."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip/transformers
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    repo = cfg.get("hf_hub", "").rstrip("/")
    where = [f"the Hugging Face hub cache ({HF_HUB_CACHE}, repo {repo})"] if repo else []
    files = ([f"https://huggingface.co/{repo}"] if repo else []) + ([cfg["url"]] if cfg.get("url") else [])
    return ModelNotAvailableError(
        f"CLIP weights {arch}/{pretrained} are not in the local cache and could not be downloaded ({error}).\n"
        f"On a machine with internet access run\n"
        f"    python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{pretrained}')\"\n"
        f"which stores them in {' or '.join(where) or 'the open_clip cache'}; copy that folder to the same place "
        f"here (or point HF_HOME at it). Alternatively download a checkpoint ({' or '.join(files) or 'n/a'}) and "
        f"pass its local path as `pretrained` (with quick_gelu=True for OpenAI weights)."
    )
