"""Inference copies of a network with its BatchNorms folded into the convolutions before them.

At inference a BatchNorm with fixed statistics (torchvision's ``FrozenBatchNorm2d``, timm's
``FrozenBatchNormAct2d``, or a ``BatchNorm2d`` in eval mode that tracks running statistics) is a per-channel
affine map ``y = x * s + t`` with ``s = weight / sqrt(running_var + eps)`` and ``t = bias - running_mean * s``.
Right after a convolution it is the same convolution with each output channel's weights scaled by ``s`` and
the bias ``b * s + t``: the activations are read and written once less per BatchNorm (``FrozenBatchNorm2d``
spends a multiplication and an addition over the whole map). The result equals the unfolded network up to
float rounding, not bit for bit.

The conv -> BatchNorm pairs are found on the data flow (a ``torch.fx`` trace), not on module names: a pair is
folded only when the BatchNorm reads the convolution's output, nothing else reads it, and neither module is
called anywhere else. Parts that torch.fx
cannot trace (Python control flow on tensor values, e.g. torchvision ShuffleNet V2's channel shuffle) are kept
as they are, so the copy always computes what the original does.

The copy holds its own (folded) weights: the original module, its state dict and its training are untouched.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.fx
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

_FROZEN_NORM_TYPES = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
_NORM_ACT_TYPES = (BatchNormAct2d, FrozenBatchNormAct2d)  # BatchNorm then dropout and activation, one module
_NORM_TYPES = (nn.BatchNorm2d, *_FROZEN_NORM_TYPES)  # BatchNormAct2d is a BatchNorm2d


class _Tracer(torch.fx.Tracer):
    """Keeps convolutions, BatchNorms and the given untraceable modules as single graph nodes."""

    def __init__(self, leaves: set[int] = frozenset()):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (
            isinstance(module, (nn.Conv2d, *_NORM_TYPES))
            or id(module) in self.leaves
            or super().is_leaf_module(module, qualified_name)
        )


def _untraceable_modules(module: nn.Module) -> set[int]:
    """ids of the sub-modules torch.fx cannot trace, outermost first kept whole (their children are then not
    visited)."""
    untraceable = set()

    def visit(child: nn.Module) -> None:
        try:
            _Tracer(untraceable).trace(child)
        except Exception:  # torch.fx raises TraceError, TypeError, RuntimeError, ... on Python control flow
            grandchildren = list(child.children())
            if not grandchildren:
                untraceable.add(id(child))
                return
            for grandchild in grandchildren:
                visit(grandchild)
            try:
                _Tracer(untraceable).trace(child)
            except Exception:  # its own forward is the untraceable part
                untraceable.add(id(child))

    for child in module.children():
        visit(child)
    return untraceable


def _is_foldable(norm: nn.Module) -> bool:
    """True when the BatchNorm applies fixed statistics at inference: a frozen one, or one that tracks running
    statistics (the copy is in eval mode; without them it would normalise with the batch's)."""
    return isinstance(norm, _FROZEN_NORM_TYPES) or norm.running_mean is not None


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Scale ``conv``'s weights and set its bias so that it computes ``norm(conv(x))`` (in place: ``conv`` is
    a copy). The scale is computed in float64 so the folded weights round once."""
    variance = norm.running_var.double()
    weight = torch.ones_like(variance) if norm.weight is None else norm.weight.double()
    bias = torch.zeros_like(variance) if norm.bias is None else norm.bias.double()
    scale = weight * (variance + norm.eps).rsqrt()
    shift = bias - norm.running_mean.double() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(shift.to(dtype), requires_grad=False)


def _traced_pairs(module: nn.Module) -> tuple[torch.fx.Graph, dict[str, nn.Module], list[tuple]]:
    """The traced graph of ``module``, its modules by name, and its (convolution node, BatchNorm node) pairs where
    the BatchNorm reads the convolution's output, nothing else reads it, and neither module is called anywhere
    else (a module called at several places shares its weights between the calls)."""
    leaves = _untraceable_modules(module)
    graph = _Tracer(leaves).trace(module)
    modules = dict(module.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _NORM_TYPES):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and type(modules[source.target]) is nn.Conv2d
            and len(source.users) == 1
            and calls[source.target] == calls[node.target] == 1
            and len(node.args) == 1
            and not node.kwargs
        ):
            pairs.append((source, node))
    return graph, modules, pairs


def conv_batchnorm_pairs(module: nn.Module) -> list[tuple[nn.Conv2d, nn.Module]]:
    """The (convolution, BatchNorm) modules of ``module`` where the BatchNorm normalises the convolution's output
    and nothing else reads it (found on the data flow, as :func:`fold_batchnorms` does)."""
    _, modules, pairs = _traced_pairs(module)
    return [(modules[conv.target], modules[norm.target]) for conv, norm in pairs]


def fold_batchnorms(module: nn.Module) -> tuple[nn.Module, int]:
    """An inference copy of ``module`` (in eval mode, without gradients) with every foldable conv ->
    BatchNorm pair folded into the convolution, and the number of pairs folded.

    A BatchNorm with an activation (timm's ``BatchNormAct2d`` family) is replaced by its dropout and
    activation. Call it again after the weights change: the copy does not follow the original.
    """
    module = copy.deepcopy(module).eval().requires_grad_(False)
    graph, modules, pairs = _traced_pairs(module)
    folded = 0
    for source, node in pairs:
        norm = modules[node.target]
        if not _is_foldable(norm):
            continue
        _fold_into(modules[source.target], norm)
        if isinstance(norm, _NORM_ACT_TYPES):
            parent, _, name = node.target.rpartition(".")
            setattr(modules[parent] if parent else module, name, nn.Sequential(norm.drop, norm.act))
        else:
            node.replace_all_uses_with(source)
            graph.erase_node(node)
        folded += 1
    graph.lint()
    return torch.fx.GraphModule(module, graph), folded
