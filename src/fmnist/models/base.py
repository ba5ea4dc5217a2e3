"""The shape every fmnist model has: features -> embedding, head -> logits."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """`features` maps (N,1,28,28) to an (N,D) embedding; `head` maps it to (N,10) logits.

    Keeping the two apart lets embeddings (t-SNE), Grad-CAM and serving reuse one model.
    `cam_layer_name`, when set, names the last spatial block (e.g. "features.4"), whose
    activations Grad-CAM weighs. A name, not a module reference, so the layer is not
    registered twice in the state dict.
    """

    def __init__(self, features: nn.Module, head: nn.Module, embedding_dim: int, cam_layer_name: str | None = None):
        super().__init__()
        self.features = features
        self.head = head
        self.embedding_dim = embedding_dim
        self.cam_layer_name = cam_layer_name

    @property
    def cam_layer(self) -> nn.Module | None:
        return self.get_submodule(self.cam_layer_name) if self.cam_layer_name else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
