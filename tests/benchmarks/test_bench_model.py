"""benchmarks/bench_model.py's SeqNet harness (``--seqnet DIR``), on a stand-in checkout with SeqNet's layout: built
from the checkout's own defaults, nothing downloaded, BatchNorms calibrated, and its first stage made to keep a given
number of boxes. SeqNet's code itself is not in this repository."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torchvision

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_model.py"

STAND_IN_SEQNET = '''
import torch
import torchvision
from torch import nn


class Heads(nn.Module):
    """What the harness touches of SeqNet's SeqRoIHeads: score_thresh, postprocess_proposals, reid_head."""

    def __init__(self):
        super().__init__()
        self.score_thresh = 0.5
        self.reid_head = nn.Identity()

    def postprocess_proposals(self, class_logits, box_regression, proposals, image_shapes):
        scores = class_logits.softmax(-1)[:, 1]
        order = scores.argsort(descending=True)
        keep = order[scores[order] > self.score_thresh]
        return [proposals[0][keep]], [scores[keep]], [torch.ones(len(keep))]


class SeqNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg == {"from": "defaults.py"}
        resnet = torchvision.models.resnet.__dict__["resnet50"](pretrained=True)  # as SeqNet's build_resnet asks
        self.body = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.roi_heads = Heads()

    def forward(self, images):
        return self.body(torch.stack(images))
'''


def load_script():
    spec = importlib.util.spec_from_file_location("bench_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in_checkout(folder: Path) -> Path:
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "__init__.py").write_text("")
    (folder / "models" / "seqnet.py").write_text(STAND_IN_SEQNET)
    (folder / "defaults.py").write_text('def get_default_cfg():\n    return {"from": "defaults.py"}\n')
    return folder


def test_seqnet_is_built_from_its_checkout_without_downloading_and_calibrated(tmp_path, monkeypatch):
    bench_model = load_script()
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("defaults", "models", "models.seqnet"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("load_seqnet asked for a download")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)  # where torchvision calls it
    builder = torchvision.models.resnet.__dict__["resnet50"]
    seqnet = bench_model.load_seqnet(str(stand_in_checkout(tmp_path / "SeqNet")))
    assert torchvision.models.resnet.__dict__["resnet50"] is builder  # the builder is put back
    assert not seqnet.training
    norm = seqnet.body[1]
    assert not torch.equal(norm.running_var, torch.ones_like(norm.running_var))  # measured on a random image
    assert not torch.equal(norm.weight, torch.ones_like(norm.weight))
    with torch.no_grad():
        out = seqnet([torch.rand(3, 64, 64)])
    mean = out.mean(dim=(0, 2, 3)).abs()
    assert torch.isfinite(out).all() and mean.max() < 10


def test_the_first_stage_keeps_the_asked_number_of_boxes_whatever_their_scores(tmp_path, monkeypatch):
    bench_model = load_script()
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("defaults", "models", "models.seqnet"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", None)
    seqnet = bench_model.load_seqnet(str(stand_in_checkout(tmp_path / "SeqNet")))
    logits = torch.stack([torch.zeros(8), torch.linspace(-3.0, -1.0, 8)], dim=1)  # every score under 0.5
    proposals = [torch.arange(32, dtype=torch.float32).reshape(8, 4)]
    boxes, _, _ = seqnet.roi_heads.postprocess_proposals(logits, None, proposals, [(64, 64)])
    assert len(boxes[0]) == 0  # as built: SeqNet's second pass would be skipped
    bench_model.keep_first_stage_boxes(seqnet, 3)
    boxes, scores, labels = seqnet.roi_heads.postprocess_proposals(logits, None, proposals, [(64, 64)])
    assert torch.equal(boxes[0], proposals[0][[7, 6, 5]]) and len(scores[0]) == len(labels[0]) == 3
    assert seqnet.roi_heads.score_thresh == 0.5  # its threshold is put back for the second stage
    count = bench_model.count_second_pass_boxes(seqnet)
    seqnet.roi_heads.reid_head(boxes[0])
    assert count() == 3
