"""inference_copy: residual sums written into the convolution's output where that changes nothing else, the same
values as the traced sums; the parts built for a backbone."""

import operator

import torch
import torch.fx
from torch import nn

from hf_personsearch.inference_copy import add_into, sum_in_place


class Residual(nn.Module):
    """conv(x) + x, the other order x + conv(x), and a sum whose convolution output is read twice."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(4, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 1)
        self.third = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = torch.relu(self.first(x) + x)
        x = x + self.second(x)
        shared = self.third(x)
        return (shared + x) * shared  # ``shared`` is read again: writing into it would change the product


def count_targets(graph_module: torch.fx.GraphModule):
    targets = [node.target for node in graph_module.graph.nodes if node.op == "call_function"]
    return targets.count(add_into), targets.count(operator.add)


def test_sums_into_an_unshared_convolution_output_are_in_place_with_the_same_values():
    torch.manual_seed(0)
    module = Residual().eval()
    traced = torch.fx.symbolic_trace(module)
    assert sum_in_place(traced) == 2
    assert count_targets(traced) == (2, 1)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), module(x), rtol=0, atol=0)


def test_add_into_writes_only_when_the_sum_keeps_the_tensors_shape_and_dtype():
    tensor = torch.ones(2, 3)
    assert add_into(tensor, torch.ones(3)) is tensor and torch.equal(tensor, torch.full((2, 3), 2.0))
    row = torch.ones(1, 3)
    grown = add_into(row, torch.ones(2, 3))  # broadcasting would have to grow ``row``
    assert grown is not row and grown.shape == (2, 3) and torch.equal(row, torch.ones(1, 3))
    half = torch.ones(3, dtype=torch.bfloat16)
    promoted = add_into(half, torch.ones(3, dtype=torch.float32))
    assert promoted.dtype == torch.float32 and torch.equal(half, torch.ones(3, dtype=torch.bfloat16))
