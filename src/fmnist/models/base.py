"""The shape every fmnist model has: features -> embedding, head -> logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fmnist.models.probe import leaves, probe


class GlobalAvgPool(nn.Module):
    """(N,C,H,W) -> (N,C,1,1): the mean over every position, as AdaptiveAvgPool2d(1) computes it.

    Written as a mean because CUDA has no deterministic backward for adaptive pooling: under
    `--deterministic` (fmnist.device.enable_determinism) AdaptiveAvgPool2d stops the first GPU
    step with an error, while a mean's gradient is an exact broadcast.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


# Layers whose output is a spatial map but not one worth explaining: pooling throws away the
# position Grad-CAM wants, dropout and identity only repeat their input.
_NOT_CAM_LAYERS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, GlobalAvgPool, nn.Dropout,
                   nn.Dropout2d, nn.Identity, nn.Flatten)  # fmt: skip


# A model argument's value, as builders take them (fmnist models lists them): a width, a rate, a
# switch, a block's name, a list of widths (TOML and JSON give lists where a builder's default is a
# tuple; fmnist.models.registry makes them the default's kind).
ModelArgValue = bool | int | float | str | tuple[int, ...] | list[int]
ModelArgs = dict[str, ModelArgValue]  # a model's arguments by name, as a run's config and checkpoint record them


@dataclass(frozen=True)
class ModelIdentity:
    """What a built model is: its registered name, the full arguments and the family."""

    name: str
    args: ModelArgs = field(default_factory=dict)
    family: str = ""


class Classifier(nn.Module):
    """`features` maps (N,1,28,28) to an (N,D) embedding; `head` maps it to (N,classes) logits.

    Keeping the two apart lets embeddings (t-SNE), Grad-CAM and serving reuse one model.

    `channels_last`: whether the network runs faster in NHWC layout (convolutional nets on
    CPUs with oneDNN); the training loop and inference read it, nothing else decides it. A
    model must ask for it, so a new architecture never gets a layout it was not measured in.

    Grad-CAM's layer is found by running one blank image through `features`: the last
    top-level block whose output is still a spatial map (pooling and dropout skipped).
    `cam_layer_name` overrides that for a model whose best map is elsewhere.
    """

    def __init__(self, features: nn.Module, head: nn.Module, embedding_dim: int, *,
                 channels_last: bool = False, cam_layer_name: str | None = None):  # fmt: skip
        super().__init__()
        self.features = features
        self.head = head
        self.embedding_dim = embedding_dim
        self.channels_last = channels_last
        self._cam_layer_name = cam_layer_name
        self._cam_searched = cam_layer_name is not None
        self.identity = ModelIdentity(name=type(self).__name__)

    # -- identity -------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.identity.name

    @property
    def model_args(self) -> ModelArgs:
        return dict(self.identity.args)

    @property
    def family(self) -> str:
        return self.identity.family

    @property
    def num_classes(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else -1

    # -- Grad-CAM ---------------------------------------------------------------------
    @property
    def cam_layer_name(self) -> str | None:
        if not self._cam_searched:
            self._cam_layer_name = self._find_cam_layer()
            self._cam_searched = True
        return self._cam_layer_name

    @property
    def cam_layer(self) -> nn.Module | None:
        name = self.cam_layer_name
        return self.get_submodule(name) if name else None

    def _find_cam_layer(self) -> str | None:
        if isinstance(self.features, nn.Sequential):
            candidates = [(f"features.{n}", m) for n, m in self.features.named_children()]
        else:
            candidates = [(f"features.{n}", m) for n, m in leaves(self.features)]
        spatial: list[str] = []

        def seen(name: str):
            return lambda _m, _i, out: spatial.append(name) if out.dim() == 4 else None

        probe(self, [(m, seen(n)) for n, m in candidates if not isinstance(m, _NOT_CAM_LAYERS)], run=self.features)
        return spatial[-1] if spatial else None

    def takes_side(self, side: int) -> bool:
        """Whether the network maps a side x side image to logits: a head over a flattened final map
        (fastcnn's 3x3) fixes the sizes it takes, and progressive resizing trains on smaller images."""
        try:
            probe(self, [], side=side)
        except RuntimeError:
            return False
        return True

    def place(self, device: torch.device | str) -> Classifier:
        """Move to `device` in the layout this model asked for (the one place layout is applied)."""
        self.to(device)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the memory layout the model runs in."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- forward ----------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
