"""Embedding heads on top of cached backbone features.

Both heads return L2-normalised embeddings by default; ``forward(x, normalize=False)`` (or
``raw(x)``) returns z before normalisation, which IAA's class statistics and the N-pair loss need.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["EmbeddingHead", "IdentityHead"]


class EmbeddingHead(torch.nn.Module):
    """z = W f + b, x = z / ||z||.

    Initialisation: W ~ Kaiming-normal with mode='fan_out' (std = sqrt(2 / out_dim)), b = 0, as the
    Proxy-Anchor official code (base of SGAR) does for its embedding layer; the IAA code also uses a
    Kaiming-initialised linear head. Weights come from the torch RNG: the caller seeds it
    (``torch.manual_seed``) before constructing the head.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"EmbeddingHead needs positive dimensions, got in_dim={in_dim}, out_dim={out_dim}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.linear = torch.nn.Linear(self.in_dim, self.out_dim)
        torch.nn.init.kaiming_normal_(self.linear.weight, mode="fan_out")
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if features.shape[-1] != self.in_dim:
            raise ValueError(f"EmbeddingHead expects {self.in_dim}-d features, got shape {tuple(features.shape)}")
        z = self.linear(features)
        return F.normalize(z, p=2, dim=-1) if normalize else z

    def raw(self, features: torch.Tensor) -> torch.Tensor:
        """z before L2 normalisation."""
        return self.forward(features, normalize=False)


class IdentityHead(torch.nn.Module):
    """No parameters: x = f / ||f|| (the frozen-backbone row). ``raw`` returns f unchanged."""

    def __init__(self, in_dim: Optional[int] = None):
        super().__init__()
        self.in_dim = self.out_dim = in_dim

    def forward(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if self.in_dim is not None and features.shape[-1] != self.in_dim:
            raise ValueError(f"IdentityHead expects {self.in_dim}-d features, got shape {tuple(features.shape)}")
        return F.normalize(features, p=2, dim=-1) if normalize else features

    def raw(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward(features, normalize=False)
