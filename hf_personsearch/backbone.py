"""The backbone split NAE uses: an encoder up to stride 16 and the last stage(s) as the RoI box head.

Any timm model whose ``features_only`` network is a plain chain of modules works (ResNets, RegNets,
MobileNet/EfficientNet/LCNet families); torchvision's ShuffleNet v2 is supported through its own chain
(timm has no ShuffleNet, the paper's third backbone). The chain is split at a feature stage, so the
modules keep their timm/torchvision names and weights stay exchangeable with those libraries.
"""

from __future__ import annotations

import torch
from torch import nn

# torchvision ShuffleNet v2 feature stages: (last module of the stage, stride); its chain is
# conv1, maxpool, stage2, stage3, stage4, conv5, so the default split puts stage4 + conv5 in the box head.
_SHUFFLENET_STAGES = (("conv1", 2), ("maxpool", 4), ("stage2", 8), ("stage3", 16), ("conv5", 32))


def _flatten_chain(model: nn.Module, stage_modules: list[str]) -> list[tuple[str, nn.Module]]:
    """Top-level children in order, with a child expanded when a feature stage lives inside it
    (timm's MobileNet/EfficientNet feature nets keep their stages in ``blocks.<i>``)."""
    chain = []
    for name, child in model.named_children():
        if any(stage.startswith(name + ".") for stage in stage_modules):
            chain.extend((f"{name}.{sub}", module) for sub, module in child.named_children())
        else:
            chain.append((name, child))
    return chain


class SplitBackbone(nn.Module):
    """``encode``: image -> encoder feature map (stride 16 for the default split);
    ``box_head``: RoI-aligned encoder features -> box head feature map (the last stage(s)).

    Attributes:
        body: the timm ``features_only`` network or the torchvision model (unused tail removed).
        encoder_channels / head_channels: channels of the two outputs.
        encoder_stride: the encoder's total stride (RoIAlign's spatial scale is its inverse).
    """

    def __init__(
        self,
        name: str,
        library: str = "timm",
        box_head_stages: int = 1,
        weights_path: str | None = None,
        freeze_stem: bool = True,
        freeze_batchnorm: bool = True,
    ):
        super().__init__()
        if library == "timm":
            self.body, stages = _build_timm(name, weights_path)
        elif library == "torchvision":
            self.body, stages = _build_torchvision(name, weights_path)
        else:
            raise ValueError(f"backbone_library must be 'timm' or 'torchvision', got {library!r}")
        if box_head_stages >= len(stages):
            raise ValueError(
                f"backbone {name!r} has {len(stages)} feature stages; box_head_stages={box_head_stages} leaves no encoder"
            )
        stage_names = [stage[0] for stage in stages]
        chain = _flatten_chain(self.body, stage_names)
        names = [n for n, _ in chain]
        missing = [s for s in stage_names if s not in names]
        if missing:
            raise ValueError(f"backbone {name!r}: feature stages {missing} are not modules of its chain {names}")
        split = names.index(stage_names[-1 - box_head_stages]) + 1
        end = names.index(stage_names[-1]) + 1
        self._encoder_names = names[:split]
        self._head_names = names[split:end]
        self._stem_names = names[: names.index(stage_names[0]) + 1]
        self._modules_by_name = dict(chain)
        self.encoder_channels = stages[-1 - box_head_stages][1]
        self.encoder_stride = stages[-1 - box_head_stages][2]
        self.head_channels = stages[-1][1]
        self.freeze_batchnorm = freeze_batchnorm
        if freeze_stem:
            for stem_name in self._stem_names:
                self._modules_by_name[stem_name].requires_grad_(False)
        if freeze_batchnorm:
            for module in self.body.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.requires_grad_(False)

    def _run(self, names: list[str], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = self._modules_by_name[name](x)
        return x

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._run(self._encoder_names, pixel_values)

    def box_head(self, roi_features: torch.Tensor) -> torch.Tensor:
        return self._run(self._head_names, roi_features)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_batchnorm:
            for module in self.body.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def _build_timm(name: str, weights_path: str | None):
    import timm

    kwargs = {}
    if weights_path is not None:
        kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": weights_path}}
    try:
        body = timm.create_model(name, features_only=True, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"backbone {name!r} is not a timm model name ({error})") from error
        raise
    info = body.feature_info
    stages = list(zip(info.module_name(), info.channels(), info.reduction()))
    return body, stages


def _build_torchvision(name: str, weights_path: str | None):
    import torchvision

    if not name.startswith("shufflenet_v2"):
        raise ValueError(f"torchvision backbones supported: shufflenet_v2_*; got {name!r} (use a timm name instead)")
    body = getattr(torchvision.models, name)(weights=None)
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        body.load_state_dict(state, strict=False)
    del body.fc
    out = body._stage_out_channels  # [conv1, stage2, stage3, stage4, conv5]
    channels = {"conv1": out[0], "maxpool": out[0], "stage2": out[1], "stage3": out[2], "conv5": out[4]}
    stages = [(module, channels[module], stride) for module, stride in _SHUFFLENET_STAGES]
    return body, stages
