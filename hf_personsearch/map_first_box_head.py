"""The box head's inference copy with its leading 1x1 convolutions run on the encoder map, before the RoIAlign.

RoIAlign is linear in the map, with the same weights for every channel, and a 1x1 convolution without its bias
is a linear map of the channels at each location: the two commute. A 1x1 convolution of stride s on the pooled
RoI grid reads its bins 0, s, 2s, ... of each side, so

    conv(RoIAlign(map)) = RoIAlign(conv_without_bias(map))[bins 0, s, 2s, ...] + bias

exactly (up to float rounding; the bias is added after the pooling because RoIAlign's border rule gives points
outside the map weight zero, so a pooled constant is not always that constant). ResNet-50's layer4 starts with two
such convolutions reading the RoI features: its first block's ``conv1`` (1024 -> 512 channels on the 14x14 grid)
and ``downsample`` (1024 -> 2048, stride 2). With 300 proposals on a 900x1500 image the RoI grids have 58,800 and
14,700 locations, the stride-16 map 5,358: on the map the two convolutions do 11x and 2.7x fewer
multiply-adds. Measured on one CPU thread (random weights, BatchNorms folded; ``benchmarks/bench_model.py``
times the whole model): ``conv1`` 0.60 s on the RoIs -> 0.06 s on the map + 0.18 s to pool its output,
``downsample`` 0.66 s -> 0.24 s + 0.15 s.

Pooling a map is not free (a sparse product with 4 * sampling_ratio**2 entries per row, per channel), so a
convolution runs on the map only when the RoI locations it would read outnumber the map's locations twice; a
search query (one box) still runs it on its RoI. Only the sparse CPU RoIAlign (:func:`.roi_align.pools_sparsely`)
takes this path, where it was measured: torchvision's kernel, used elsewhere (CUDA, adaptive sampling), pools every
bin (4x the values a stride-2 convolution reads), and on a GPU a convolution is cheap next to one more RoIAlign
pass over a large map (not measured there), so there the head runs as traced.

Only inference uses this (no gradients, BatchNorms folded: :mod:`.backbone`); training runs the modules as
built.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .roi_align import RoIPooling

# A convolution runs on the map when the RoI locations it reads are more than this many times the map's
# (measured above: at 11x and 2.7x the map path takes 0.41x and 0.59x the time).
MAP_FIRST_MIN_RATIO = 2.0


def _is_pointwise(module: nn.Module) -> bool:
    """A 1x1 convolution that reads one location per output location (no padding, dilation or groups)."""
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.stride[0] == module.stride[1]
    )


class MapFirstBoxHead(nn.Module):
    """A traced box head (``torch.fx.GraphModule``, e.g. the BatchNorm-folded copy) whose 1x1 convolutions that
    read the RoI features directly can run on the encoder map instead (module docstring).

    Call with the RoI features alone to run the head as traced; with ``encoder_features`` (the map they were
    pooled from) and ``roi_pooling`` (:class:`.roi_align.RoIPooling`: the same RoIAlign, same boxes, of any map of
    that size) to let each such convolution run where it is cheaper.

    Attributes:
        convolutions: the 1x1 convolutions moved out of the graph, in the order of ``rest``'s extra inputs.
        rest: the head with those convolutions' outputs as inputs, after the RoI features.
    """

    def __init__(self, convolutions: list[nn.Conv2d], rest: torch.fx.GraphModule):
        super().__init__()
        self.convolutions = nn.ModuleList(convolutions)
        self.rest = rest

    @classmethod
    def from_traced(cls, head: torch.fx.GraphModule) -> MapFirstBoxHead | None:
        """The head with its pointwise convolutions on its input split out; None when it has none."""
        (placeholder,) = [node for node in head.graph.nodes if node.op == "placeholder"]
        modules = dict(head.named_modules())
        moved = [
            user
            for user in placeholder.users
            if user.op == "call_module" and _is_pointwise(modules[user.target]) and len(user.args) == 1
        ]
        if not moved:
            return None
        rest = torch.fx.GraphModule(head, _graph_with_inputs(head.graph, moved))
        return cls([modules[node.target] for node in moved], rest)

    def forward(
        self,
        roi_features: torch.Tensor,
        encoder_features: torch.Tensor | None = None,
        roi_pooling: RoIPooling | None = None,
    ) -> torch.Tensor:
        outputs = []
        for convolution in self.convolutions:
            if self._runs_on_map(convolution, roi_features, encoder_features, roi_pooling):
                pooled = roi_pooling(F.conv2d(encoder_features, convolution.weight), convolution.stride[0])
                if convolution.bias is not None:  # in place when it can: pooled is a fresh tensor (a large one)
                    bias = convolution.bias.view(1, -1, 1, 1)
                    pooled = pooled.add_(bias) if pooled.dtype == bias.dtype else pooled + bias
                outputs.append(pooled)
            else:
                outputs.append(convolution(roi_features))
        return self.rest(roi_features, *outputs)

    @staticmethod
    def _runs_on_map(convolution, roi_features, encoder_features, roi_pooling) -> bool:
        """The cost rule (module docstring): on the sparse CPU RoIAlign only, when the RoI locations the
        convolution reads outnumber the map's twice."""
        if roi_pooling is None or encoder_features is None or not roi_pooling.pools_sparsely(encoder_features):
            return False
        stride = convolution.stride[0]
        roi_locations = roi_features.shape[0] * (-(-roi_features.shape[2] // stride)) ** 2
        return roi_locations > MAP_FIRST_MIN_RATIO * encoder_features[:, 0].numel()


def _graph_with_inputs(graph: torch.fx.Graph, moved: list[torch.fx.Node]) -> torch.fx.Graph:
    """A copy of ``graph`` where each node of ``moved`` is replaced by a new input (after the existing one)."""
    copied = torch.fx.Graph()
    values: dict[torch.fx.Node, torch.fx.Node] = {}
    output = copied.graph_copy(graph, values)
    first = next(node for node in copied.nodes if node.op != "placeholder")
    with copied.inserting_before(first):  # every input before any other node (and before any node is erased)
        new_inputs = [copied.placeholder(f"pooled_{index}") for index in range(len(moved))]
    for node, new_input in zip(moved, new_inputs):
        values[node].replace_all_uses_with(new_input)
        copied.erase_node(values[node])
    copied.output(output)
    copied.lint()
    return copied
