"""The backbone split NAE uses: an encoder up to stride 16 and the last stage(s) as the RoI box head.

Three sources of backbones (``backbone_library``):

* ``timm``: any timm model whose ``features_only`` network is a plain chain of modules (ResNets, RegNets,
  MobileNet/EfficientNet/LCNet families);
* ``torchvision``: torchvision's ShuffleNet v2 (timm has no ShuffleNet);
* ``builtin``: ShuffleNet V1 (:mod:`.shufflenet_v1`), the ShuffleNet of the paper, which neither library has.

The chain is split at a feature stage, so the modules keep their library's names and weights stay
exchangeable with those libraries. Building never reads or downloads weights: starting weights (ImageNet, the
paper's released backbones) are loaded afterwards by ``hf_personsearch.hub.load_backbone_weights``, and a
saved model carries its own weights.

Inference (eval mode, no gradients) runs on an inference copy of the two parts (:mod:`.inference_copy`:
BatchNorms folded into the convolutions, residual sums in place, weights in channels_last memory format, the box
head's leading 1x1 convolutions able to run on the encoder map), built on first use and rebuilt when the weights
change; training and ``state_dict`` only ever see the original modules.
"""

from __future__ import annotations

import itertools

import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from .inference_copy import build_inference_parts
from .map_first_box_head import MapFirstBoxHead
from .roi_align import RoIPooling
from .shufflenet_v1 import shufflenet_v1

BACKBONE_LIBRARIES = ("timm", "torchvision", "builtin")

# torchvision ShuffleNet v2 feature stages: (last module of the stage, stride); its chain is
# conv1, maxpool, stage2, stage3, stage4, conv5, so the default split puts stage4 + conv5 in the box head.
_SHUFFLENET_V2_STAGES = (("conv1", 2), ("maxpool", 4), ("stage2", 8), ("stage3", 16), ("conv5", 32))


def _flatten_chain(model: nn.Module, stage_modules: list[str]) -> list[tuple[str, nn.Module]]:
    """Top-level children in order, with a child expanded when a feature stage lives inside it
    (timm's MobileNet/EfficientNet feature nets keep their stages in ``blocks.<i>``, ShuffleNet V1 in
    ``features.<i>``)."""
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

    With ``freeze_batchnorm`` every BatchNorm of the body is replaced by a frozen one
    (``torchvision.ops.FrozenBatchNorm2d``, or timm's ``FrozenBatchNormAct2d`` for timm's BatchNorm+activation
    layers): statistics and affine terms become buffers that no optimiser and no ``train()`` call can
    change. Its state dict has the BatchNorm keys minus ``num_batches_tracked`` (a counter that only
    BatchNorm with ``momentum=None`` reads); files that carry it still load.

    In eval mode without gradients (``model.eval()`` under ``torch.no_grad()`` or ``torch.inference_mode()``)
    ``encode`` and ``box_head`` run the inference copy (:mod:`.inference_copy`): every BatchNorm folded into the
    convolution before it, residual sums in place and the convolution weights in channels_last memory format;
    given the encoder map and its RoIAlign, ``box_head`` runs its leading 1x1 convolutions on the map when that is
    cheaper (:mod:`.map_first_box_head`). The results equal the modules' up to float rounding;
    ``benchmarks/bench_model.py`` measures the speed. The copy is cached with a fingerprint
    of the body's parameters and buffers (storage, in-place version counter, dtype, device), so an optimiser
    step, ``load_state_dict`` or ``.to()`` rebuild it on the next inference. It costs one more copy of the
    backbone's weights in memory (freed by ``train()``); ``fold_batchnorm = False`` (on the instance) runs the
    modules as built, as do weights made under ``torch.inference_mode`` (no version counter to watch).
    ``compile_inference = True`` also wraps the copy in ``torch.compile``: off by default, as its first call
    compiles (ResNet-50 on a CPU: 31 s, for about 1.3 s saved per 900x1500 image) and it compiles again after
    every weight change (each evaluation during training) and for new input sizes.

    Attributes:
        body: the timm ``features_only`` network, the torchvision model or the builtin ShuffleNet V1
            (classifier removed).
        encoder_channels / head_channels: channels of the two outputs.
        encoder_stride: the encoder's total stride (RoIAlign's spatial scale is its inverse).
        box_head_stride: the box head's own stride (2 for ResNet's layer4: 14x14 RoIs -> 7x7 maps).
    """

    def __init__(
        self,
        name: str,
        library: str = "timm",
        box_head_stages: int = 1,
        freeze_stem: bool = True,
        freeze_batchnorm: bool = True,
    ):
        super().__init__()
        if library == "timm":
            body, stages = _build_timm(name)
        elif library == "torchvision":
            body, stages = _build_torchvision(name)
        elif library == "builtin":
            body, stages = _build_builtin(name)
        else:
            raise ValueError(f"backbone_library must be one of {BACKBONE_LIBRARIES}, got {library!r}")
        if box_head_stages >= len(stages):
            raise ValueError(
                f"backbone {name!r} has {len(stages)} feature stages; box_head_stages={box_head_stages} leaves no encoder"
            )
        # Before the chain is read: a BatchNorm that is itself a chain element (ResNet's bn1) gets replaced.
        self.body = freeze_batch_norm_2d(body) if freeze_batchnorm else body
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
        self.box_head_stride = stages[-1][2] // self.encoder_stride
        if freeze_stem:
            for stem_name in self._stem_names:
                self._modules_by_name[stem_name].requires_grad_(False)
        self.fold_batchnorm = True
        self.compile_inference = False
        # (fingerprint, encoder copy, box head copy); a tuple, so that nn.Module does not register the copies
        # as sub-modules (they must stay out of state_dict, parameters() and train()).
        self._inference_copy: tuple | None = None

    def chain(self) -> nn.Sequential:
        """The body's modules as one chain in the order they run, encoder then box head (the modules themselves,
        not copies): what the BatchNorm folding and the weight-norm transfer trace."""
        return nn.Sequential(*(self._modules_by_name[name] for name in self._encoder_names + self._head_names))

    def _run(self, names: list[str], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = self._modules_by_name[name](x)
        return x

    def train(self, mode: bool = True) -> SplitBackbone:
        if mode:
            self._inference_copy = None  # training changes the weights: free the stale copy's memory now
        return super().train(mode)

    def _runs_inference_copy(self) -> bool:
        return self.fold_batchnorm and not self.training and not torch.is_grad_enabled()

    def _weights_fingerprint(self) -> tuple | None:
        tensors = list(itertools.chain(self.body.parameters(), self.body.buffers()))
        if any(tensor.is_inference() for tensor in tensors):
            return None
        # _version counts in-place writes (optimiser steps, load_state_dict, copy_); data_ptr changes when a
        # tensor is replaced (.to(), param.data = ...).
        return (self.compile_inference,) + tuple(
            (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device) for tensor in tensors
        )

    def inference_parts(self) -> tuple[nn.Module, nn.Module] | None:
        """(encoder, box head) inference copies for the current weights (:mod:`.inference_copy`), built or
        rebuilt when needed; None when the body holds tensors made under ``torch.inference_mode``:
        they have no version counter, so a change of the weights could not be seen."""
        fingerprint = self._weights_fingerprint()
        if fingerprint is None:
            return None
        if self._inference_copy is None or self._inference_copy[0] != fingerprint:
            self._inference_copy = None  # free the stale copy before building the new one
            encoder, head = (
                nn.Sequential(*(self._modules_by_name[name] for name in names))
                for names in (self._encoder_names, self._head_names)
            )
            self._inference_copy = (fingerprint, *build_inference_parts(encoder, head, self.compile_inference))
        return self._inference_copy[1], self._inference_copy[2]

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        parts = self.inference_parts() if self._runs_inference_copy() else None
        if parts is not None:
            return parts[0](pixel_values)
        if pixel_values.device.type == "cpu":
            # Channels-last input: oneDNN's CPU convolutions then skip a layout reorder at every call (measured on
            # one core, the CPU benchmark's test_resnet encoder, 3 images of 128x228, forward + backward: 51 ->
            # 29 ms). The weights keep their layout, so checkpoints and optimiser states are unchanged.
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return self._run(self._encoder_names, pixel_values)

    def box_head(
        self,
        roi_features: torch.Tensor,
        encoder_features: torch.Tensor | None = None,
        roi_pooling: RoIPooling | None = None,
    ) -> torch.Tensor:
        """The last stage(s) on RoI-aligned encoder features. ``encoder_features`` (the map they were pooled from)
        and ``roi_pooling`` (:class:`.roi_align.RoIPooling`: the same RoIAlign, of any map of that size) are
        optional: with them the inference copy may run its leading 1x1 convolutions on the map
        (:mod:`.map_first_box_head`); the result is the same up to float rounding."""
        parts = self.inference_parts() if self._runs_inference_copy() else None
        if parts is None:
            return self._run(self._head_names, roi_features)
        if isinstance(parts[1], MapFirstBoxHead):
            return parts[1](roi_features, encoder_features, roi_pooling)
        return parts[1](roi_features)


def timm_feature_network(name: str, pretrained: bool = False) -> nn.Module:
    """``timm.create_model(name, features_only=True)``: the body of a timm backbone. ``pretrained=True``
    (only used by ``load_backbone_weights`` for a timm tag) lets timm fetch the tag's weights, giving a network
    with the body's exact key names."""
    import timm

    try:
        return timm.create_model(name, features_only=True, pretrained=pretrained)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"backbone {name!r} is not a timm model name ({error})") from error
        raise


def _build_timm(name: str):
    body = timm_feature_network(name)
    info = body.feature_info
    stages = list(zip(info.module_name(), info.channels(), info.reduction()))
    return body, stages


def _build_torchvision(name: str):
    import torchvision

    if not name.startswith("shufflenet_v2"):
        raise ValueError(
            f"torchvision backbones supported: shufflenet_v2_*; got {name!r} "
            "(use a timm name, or backbone_library='builtin' for shufflenet_v1_*)"
        )
    body = getattr(torchvision.models, name)(weights=None)
    del body.fc
    out = body._stage_out_channels  # [conv1, stage2, stage3, stage4, conv5]
    channels = {"conv1": out[0], "maxpool": out[0], "stage2": out[1], "stage3": out[2], "conv5": out[4]}
    stages = [(module, channels[module], stride) for module, stride in _SHUFFLENET_V2_STAGES]
    return body, stages


def _build_builtin(name: str):
    if not name.startswith("shufflenet_v1"):
        raise ValueError(
            f"builtin backbones: shufflenet_v1_g<groups>_x<width> (e.g. shufflenet_v1_g3_x1_0); got {name!r}"
        )
    body = shufflenet_v1(name)
    stem, *stage_channels = body.stage_channels
    stages = [("first_conv", stem, 2), ("maxpool", stem, 4)]
    for stage, (end, channels) in enumerate(zip(body.stage_ends, stage_channels)):
        stages.append((f"features.{end}", channels, 8 * 2**stage))
    return body, stages
