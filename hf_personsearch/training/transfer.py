"""Transfer of pre-trained weights to fine-tuning: the weight norms of a fresh model, the same function.

A weight that feeds a BatchNorm in training mode is scale-invariant: multiplying the layer's weight and bias by
``c`` leaves the BatchNorm's output unchanged (its batch mean and variance scale with it). Its gradient scales
by ``1 / c``, and an adaptive optimiser (AdamW) takes steps of about ``lr`` whatever the scale, so the
*effective* learning rate of such a weight falls as its norm grows (van Laarhoven 2017; Hoffer et al. 2018).
Pre-training grows these norms: measured on the CPU benchmark's pre-trained models (AdamW 3e-3, 250 + 150 steps),
the embedding projections end 6.2-6.4x their initial norm, the box regressor 5.3-5.4x, layer4 1.5x. Fine-tuned
from them with the same recipe as a fresh model, the pre-trained embedding projections and box regressor moved
0.4-0.5x their norm where a fresh model's moved 1.3-1.8x (``benchmarks/diagnose_weight_norms.py``), and the
pre-trained init ended with 4-5x the fresh model's re-ID (OIM) training loss: it learnt the target more slowly
than random weights.

:func:`match_fresh_weight_norms` rescales every such weight (with its bias, and the BatchNorm's running mean and
variance, so that inference is unchanged too) to the norm of a freshly initialised model of the same config:
the pre-trained function, a fresh model's effective learning rate. Frozen BatchNorms
(``freeze_batchnorm=True``, the backbone default of the real recipes) are affine maps, not normalisations:
the weights before them keep their scale.
"""

from __future__ import annotations

import torch
from torch import nn

from hf_personsearch.batchnorm_folding import conv_batchnorm_pairs
from hf_personsearch.modeling_person_search import PersonSearchModel
from hf_personsearch.norm_aware_embedding import BoxRegressor, NormAwareEmbedding


def normalized_layer_pairs(model: PersonSearchModel) -> list[tuple[str, str]]:
    """Names of the (layer, BatchNorm) pairs of ``model`` whose layer weight is scale-invariant in training: the
    backbone's convolutions read by a trainable BatchNorm and by nothing else (found on the data flow, as the
    BatchNorm folding finds them; none when the BatchNorms are frozen), the norm-aware embedding's projections
    and the box regressor."""
    names = {id(module): name for name, module in model.named_modules()}
    pairs = [
        (names[id(conv)], names[id(norm)])
        for conv, norm in conv_batchnorm_pairs(model.backbone.chain())
        if isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats
    ]
    for name, module in model.named_modules():
        if isinstance(module, NormAwareEmbedding):
            for index in range(len(module.projections)):
                pairs.append((f"{name}.projections.{index}", f"{name}.projection_norms.{index}"))
        elif isinstance(module, BoxRegressor):
            pairs.append((f"{name}.linear", f"{name}.norm"))
    return pairs


def match_fresh_weight_norms(model: PersonSearchModel, seed: int = 0) -> dict[str, float]:
    """Rescale, in place, each scale-invariant layer of ``model`` (:func:`normalized_layer_pairs`) to the weight
    norm of a fresh ``PersonSearchModel`` of the same config drawn with ``seed``; returns the factor per layer.

    The model computes the same function before and after: in inference exactly up to float rounding (the running
    mean and ``running_var + eps`` are rescaled with the layer), in training up to BatchNorm's ``eps`` next to the
    batch variance (measured on a tiny model: losses within 0.03%)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = dict(PersonSearchModel(model.config).named_modules())
    modules = dict(model.named_modules())
    factors = {}
    for layer_name, norm_name in normalized_layer_pairs(model):
        layer, norm = modules[layer_name], modules[norm_name]
        norm_now = layer.weight.detach().float().norm()
        if norm_now == 0:
            continue
        factor = float(fresh[layer_name].weight.detach().float().norm() / norm_now)
        with torch.no_grad():
            layer.weight.mul_(factor)
            if layer.bias is not None:
                layer.bias.mul_(factor)
            norm.running_mean.mul_(factor)
            # (var + eps) scales by factor**2, so inference divides by factor * its former deviation exactly
            norm.running_var.add_(norm.eps).mul_(factor**2).sub_(norm.eps).clamp_(min=0.0)
        factors[layer_name] = factor
    return factors
