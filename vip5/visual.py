"""VIP5 image pathway: the mapping network from one CLIP image embedding to n soft tokens (Geng et al. 2023).

``Linear(feat_dim -> d·n/2) -> Tanh -> Linear(d·n/2 -> d·n) -> RMSNorm(d·n)`` reshaped to ``n`` tokens of width
``d``. The norm is the stock ``T5LayerNorm`` (RMS, weight only, eps 1e-6), as VIP5's ``use_vis_layer_norm``.
With ``n = 0`` the model has no image tokens and builds no mapper (see ``VIP5Model``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5LayerNorm


class VisualEmbedding(nn.Module):
    """Map image features ``[..., feature_dim]`` to ``[..., n_tokens, d_model]`` soft tokens.

    Args:
        feature_dim: width of the precomputed image embedding (CLIP ViT-B/32: 512, RN50: 1024, ViT-L/14: 768).
        d_model: T5 hidden width.
        n_tokens: soft tokens per image (VIP5 ``--image_feature_size_ratio``), at least 1.
        eps: RMS norm epsilon.
    """

    def __init__(self, feature_dim: int, d_model: int, n_tokens: int, eps: float = 1e-6):
        super().__init__()
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1 (use no VisualEmbedding for n = 0), got {n_tokens}")
        self.n_tokens = n_tokens
        self.d_model = d_model
        width = d_model * n_tokens
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, max(1, width // 2)), nn.Tanh(), nn.Linear(max(1, width // 2), width)
        )
        self.norm = T5LayerNorm(width, eps=eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.mlp(features))
        return out.reshape(*features.shape[:-1], self.n_tokens, self.d_model)
