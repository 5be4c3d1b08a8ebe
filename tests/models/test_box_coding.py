"""box_coding: boxes decoded from bf16 deltas keep float32 precision (torchvision's coder rounds them to bf16's
grid), in the RPN's proposals and in a model's detections under bf16 autocast."""

import torch
from tiny_models import scene_batch, tiny_config
from torchvision.models.detection._utils import BoxCoder

from hf_personsearch import PersonSearchModel
from hf_personsearch.box_coding import Float32BoxCoder


def test_decoding_bf16_deltas_gives_the_float32_decoding_of_the_same_deltas():
    generator = torch.Generator().manual_seed(0)
    x1 = 1000 + 400 * torch.rand(50, generator=generator)  # the right half of a 1500-pixel-wide image
    y1 = 800 * torch.rand(50, generator=generator)
    references = torch.stack([x1, y1, x1 + 40 + 60 * torch.rand(50), y1 + 100], 1)
    deltas = (0.1 * torch.randn(50, 4, generator=generator)).to(torch.bfloat16)
    weights = (10.0, 10.0, 5.0, 5.0)
    ours = Float32BoxCoder(weights).decode_single(deltas, references)
    expected = BoxCoder(weights).decode_single(deltas.float(), references)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torchvisions = BoxCoder(weights).decode_single(deltas, references)
    assert torchvisions.dtype == torch.bfloat16 and (torchvisions.float() - expected).abs().max() > 2.0  # its grid
    assert Float32BoxCoder(weights).decode_single(deltas.double(), references.double()).dtype == torch.float64


def test_a_model_under_bf16_autocast_proposes_and_detects_in_float32():
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_config(box_score_thresh=0.0)).eval()
    assert isinstance(model.rpn.box_coder, Float32BoxCoder)
    assert isinstance(model.search_head.box_coder, Float32BoxCoder)
    pixel_batch, _ = scene_batch()
    proposals = []
    model.search_head.register_forward_pre_hook(lambda module, args: proposals.extend(args[1]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(pixel_batch["pixel_values"], pixel_batch["image_sizes"])
    assert proposals and all(p.dtype == torch.float32 for p in proposals)
    assert len(output.boxes[0]) > 0
    for values in (output.boxes, output.scores, output.embeddings):
        assert all(v.dtype == torch.float32 for v in values)
