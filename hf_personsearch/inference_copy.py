"""The backbone's inference copy: what :class:`.backbone.SplitBackbone` runs in eval mode without gradients.

Built from the encoder's and the box head's modules, for the current weights, in four steps; each keeps the
function (up to float rounding) and leaves the original modules, their state dict and training untouched:

1. BatchNorms folded into the convolutions before them (:mod:`.batchnorm_folding`, a ``torch.fx`` trace);
2. residual sums in place (:func:`sum_in_place`): the trace records ResNet's ``x += shortcut`` as ``x + shortcut``,
   a fresh tensor per block;
3. weights in channels_last memory format (oneDNN's CPU convolutions then skip a layout reorder at every call);
4. the box head's leading 1x1 convolutions made able to run on the encoder map (:mod:`.map_first_box_head`).

``compile_`` also wraps the parts in ``torch.compile`` (opt-in: see ``SplitBackbone``).
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch import nn

from .batchnorm_folding import fold_batchnorms
from .map_first_box_head import MapFirstBoxHead


def add_into(tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``tensor + other``, written into ``tensor`` when the sum has its shape and dtype (no broadcast of ``tensor``,
    no type promotion), as ``tensor += other`` would."""
    if torch.broadcast_shapes(tensor.shape, other.shape) == tensor.shape and (
        torch.result_type(tensor, other) == tensor.dtype
    ):
        return tensor.add_(other)
    return tensor + other


def sum_in_place(graph_module: torch.fx.GraphModule) -> int:
    """Rewrite each ``a + b`` of ``graph_module`` where ``a`` (or ``b``) is a convolution's output that nothing else
    reads into :func:`add_into`, in place; returns the number of sums rewritten.

    Why: ``torch.fx`` traces ResNet's in-place ``x += shortcut`` as ``x + shortcut``, so the traced copy allocates a
    fresh tensor per residual block, and on a CPU a large fresh tensor costs its page faults. Measured on ResNet-50
    at 900x1500, one thread (``benchmarks/bench_model.py``'s model): the three layer4 sums of 300 x 2048 x 7 x 7
    took 173 ms each out of place; the whole inference went from 8.79 to 8.30-8.39 s with the 16 sums in place.
    A convolution's output is a tensor of its own, so writing into it changes nothing else.
    """
    modules = dict(graph_module.named_modules())
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (operator.add, torch.add) or node.kwargs:
            continue
        if len(node.args) != 2 or not all(isinstance(arg, torch.fx.Node) for arg in node.args):
            continue
        for first, second in (node.args, node.args[::-1]):
            if first.op == "call_module" and type(modules[first.target]) is nn.Conv2d and len(first.users) == 1:
                with graph.inserting_after(node):
                    summed = graph.call_function(add_into, (first, second))
                node.replace_all_uses_with(summed)
                graph.erase_node(node)
                rewritten += 1
                break
    graph.lint()
    graph_module.recompile()
    return rewritten


def build_inference_parts(
    encoder: nn.Module, box_head: nn.Module, compile_: bool = False
) -> tuple[nn.Module, nn.Module]:
    """(encoder, box head) inference copies of the two modules (module docstring). The box head copy is a
    :class:`.MapFirstBoxHead` when it starts with 1x1 convolutions (ResNet's bottlenecks), else the traced head."""
    parts = []
    for module in (encoder, box_head):
        folded, _ = fold_batchnorms(module)
        sum_in_place(folded)
        parts.append(folded.to(memory_format=torch.channels_last))
    encoder_copy, head_copy = parts
    map_first = MapFirstBoxHead.from_traced(head_copy)
    if compile_:
        encoder_copy = torch.compile(encoder_copy)
        if map_first is not None:
            map_first.rest = torch.compile(map_first.rest)
        else:
            head_copy = torch.compile(head_copy)
    return encoder_copy, map_first if map_first is not None else head_copy
