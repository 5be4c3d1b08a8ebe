"""Learning test of the detection IAM through the real PersonSearchPretrainModel (issue 5).

Two domains: the same kind of synthetic street scenes (``render_scene``), domain 0 with a global colour
cast ``+CAST`` and domain 1 with ``-CAST`` (a visible warm / cold tint; nothing else tells them apart).
The model trains on its own Eq. (1) loss (L_ps + lambda L_adv, detection IAM on, L_con and re-ID IAM off
so every image is a detection image), once with gradient reversal weight 0 and once with it on, same
seed, same batches, same steps. Then two FRESH probes are fitted on the frozen encoder features (eval
mode) of held-out images and scored on others:
- reversal 0: the IAM's domain classifiers learn the domains and both probes separate them (~1.0);
- reversal on: the IAM's classifiers are near chance AND so are both fresh probes, i.e. the encoder
  features no longer carry the cast (not only fooling the classifier trained alongside them), while
  L_ps still trains.

Three things were needed for the second half (benchmarks/bench_alignment.py reproduces each failure):
- LeakyReLU inside the IAM (``iam_negative_slope``): with ReLU the reversed gradient switches off every
  unit of the domain classifier within ~100 steps; it then reads "chance" while a fresh probe still
  separates the domains at 1.0, and no gradient reaches the features any more.
- SGD with momentum and gradient clipping, the trainer's recipe (examples/configs/pretrain_*.yaml): with
  Adam the per-parameter normalisation keeps the encoder chasing the classifier without removing the
  cast (fresh probes stay at 1.0 after 600 steps).
- the domain classifiers left out of the clipping (``domain_classifier_parameters``, as the trainer):
  clipped with the rest they fall behind the features, read "chance", and the probes stay near 1.0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_person_search_config

from hf_personsearch.configuration_person_search_pretrain import PersonSearchPretrainConfig
from hf_personsearch.data.synthetic.render import render_scene
from hf_personsearch.modeling_person_search_pretrain import PersonSearchPretrainModel

IMAGE_SIZE = 64
"""Small images keep a step ~0.2 s on one thread; the encoder map is 4x4 (stride 16)."""
CAST = (0.15, 0.075, -0.15)
"""Colour cast in [0, 1] pixel units, added for domain 0 and subtracted for domain 1: a clearly visible
warm / cold tint (about 0.65 ImageNet standard deviations on R and B)."""
STEPS = 400
"""The fresh probes fall to chance between steps ~250 and ~350 with reversal on (seeds 0, 1, 2); ~90 s a
run on one thread."""
BATCH = 8
LAST = 100
"""Accuracies and L_ps are averaged over the last LAST steps (one batch of 8 images is noisy)."""
LEARNING_RATE = 0.01
"""SGD, momentum 0.9, as the trainer; 0.01 trains this tiny random-init model in a few hundred steps."""
MAX_GRAD_NORM = 10.0
"""Gradient clipping as the trainer's ``max_grad_norm``, of every parameter but the domain classifiers'
(as the trainer): without it, reversal weights >= 10 blow up (NaN) once the classifier and the features
start to chase each other."""
REVERSAL_ON = 30.0
"""With lambda = 1 the domain gradient at the encoder is ~100x smaller than L_ps's on this tiny model
(measured: 0.3 vs 28 at the stem); 30 makes it count without drowning L_ps."""
PROBE_IMAGES = 160
"""Held-out images for the fresh probes: the first half fits them, the second half scores them."""
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def two_domain_images(count: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """``count`` normalised images (alternating domains 0, 1), their person boxes and domain ids."""
    rng = np.random.default_rng(seed)
    cast = torch.tensor(CAST)[:, None, None]
    pixels, boxes, domains = [], [], []
    for index in range(count):
        domain = index % 2
        identities = [int(i) for i in rng.integers(0, 50, int(rng.integers(1, 3)))]
        image, image_boxes = render_scene(
            identities, width=IMAGE_SIZE, height=IMAGE_SIZE, domain=0, rng=rng, min_person_height=24
        )
        x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
        x = x + cast if domain == 0 else x - cast
        pixels.append((x - MEAN) / STD)
        boxes.append(torch.from_numpy(image_boxes))
        domains.append(domain)
    return torch.stack(pixels), boxes, torch.tensor(domains)


def pretrain_batch(pixels, boxes, domains, index: torch.Tensor) -> dict:
    """collate_pretrain's format; view 2 is the horizontal flip of view 1 (boxes flipped alike)."""
    labels, labels_2 = [], []
    for i in index.tolist():
        count = len(boxes[i])
        flipped = boxes[i].clone()
        flipped[:, 0], flipped[:, 2] = IMAGE_SIZE - boxes[i][:, 2], IMAGE_SIZE - boxes[i][:, 0]
        for target, view_boxes in ((labels, boxes[i]), (labels_2, flipped)):
            target.append(
                {"boxes": view_boxes, "person_ids": torch.full((count,), -1), "person_index": torch.arange(count)}
            )
    none = torch.zeros(len(index), dtype=torch.bool)
    return {
        "pixel_values": pixels[index],
        "labels": labels,
        "pixel_values_2": pixels[index].flip(-1),
        "labels_2": labels_2,
        "domain_ids": domains[index],
        "is_reid": none,
        "has_identity": none,
    }


def build(reversal_weight: float, seed: int = 0, negative_slope: float = 0.2) -> PersonSearchPretrainModel:
    person_search = tiny_person_search_config(num_person_ids=4, oim_queue_size=8)
    config = PersonSearchPretrainConfig(
        person_search=person_search,
        num_detection_domains=2,
        num_reid_domains=1,
        use_contrastive=False,
        use_reid_iam=False,
        iam_num_convs=1,
        iam_conv_channels=16,
        iam_instance_hidden_dim=16,
        iam_negative_slope=negative_slope,
        adversarial_loss_weight=1.0,
        gradient_reversal_weight=reversal_weight,
    )
    torch.manual_seed(seed)
    return PersonSearchPretrainModel(config).train()


def train(
    model: PersonSearchPretrainModel,
    seed: int = 0,
    steps: int = STEPS,
    optimizer_name: str = "sgd",
    clip_domain_classifiers: bool = False,
) -> dict:
    """Trains ``model`` on its Eq. (1) loss as the trainer does; returns the IAM's image / instance
    accuracies and L_ps, each averaged over the last LAST steps. ``optimizer_name="adam"`` (lr 1e-3) and
    ``clip_domain_classifiers=True`` are the benchmark's comparisons."""
    pixels, boxes, domains = two_domain_images(96, seed=1 + seed)
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if clip_domain_classifiers:
        clipped = list(model.parameters())
    else:  # the trainer's rule (training/loop.py clipped_parameters)
        excluded = {id(parameter) for parameter in model.domain_classifier_parameters()}
        clipped = [parameter for parameter in model.parameters() if id(parameter) not in excluded]
    order = torch.Generator().manual_seed(seed)
    history = {"image": [], "instance": [], "ps": []}
    for step in range(steps):
        index = torch.randperm(len(pixels), generator=order)[:BATCH]
        torch.manual_seed(step)  # the same proposal sampling in both runs
        output = model(**pretrain_batch(pixels, boxes, domains, index))
        optimizer.zero_grad()
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(clipped, MAX_GRAD_NORM)
        optimizer.step()
        history["image"].append(output.alignment_accuracy["det_img"].item())
        history["instance"].append(output.alignment_accuracy["det_ins"].item())
        history["ps"].append(output.loss_dict["ps"].item())
    return {name: float(np.mean(values[-LAST:])) for name, values in history.items()}


def linear_probe(train_x, train_y, test_x, test_y) -> float:
    """Held-out accuracy of a fresh logistic regression (standardised inputs, weight decay 1e-2, LBFGS)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(train_y.max()) + 1
    weight = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + 1e-2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((test_x @ weight + bias).argmax(1) == test_y).float().mean().item()


def head_probe(train_maps, train_y, test_maps, test_y, channels: int = 16, steps: int = 150) -> float:
    """Held-out per-location accuracy of a fresh head shaped like the IAM's image branch (3x3 conv,
    LeakyReLU, 1x1 conv), 150 Adam steps on the frozen maps."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(
        torch.nn.Conv2d(train_maps.shape[1], channels, 3, padding=1),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(channels, 2, 1),
    )
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(steps):
        logits = head(train_maps)
        loss = F.cross_entropy(logits, train_y[:, None, None].expand(-1, *logits.shape[2:]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (head(test_maps).argmax(1) == test_y[:, None, None]).float().mean().item()


def fresh_probes(model: PersonSearchPretrainModel, seed: int = 0) -> dict:
    """Both probes' held-out domain accuracy on the frozen encoder features of unseen images."""
    pixels, _, domains = two_domain_images(PROBE_IMAGES, seed=100 + seed)
    half = PROBE_IMAGES // 2
    model.eval()
    with torch.no_grad():
        maps = model.person_search.encode(pixels)
    model.train()
    pooled = maps.mean(dim=(2, 3))
    return {
        "linear": linear_probe(pooled[:half], domains[:half], pooled[half:], domains[half:]),
        "head": head_probe(maps[:half], domains[:half], maps[half:], domains[half:]),
    }


SEEDS_ON = (0, 1, 2)
"""Seeds of the reversal-on run; the test judges their median. One seed is not enough: this adversarial
training is chaotic, and a change of float rounding elsewhere moves a seed's outcome. Measured on seed 0 (linear /
head probe): .725 / .620 as the model is; .525 / .563 with RoIAlign's output in channels-last strides (the box
head's convolutions then round differently); .825 / .733 with a sparse-matrix RoIAlign equal to torchvision's to
1e-6; seeds 1 and 2 stayed at .46-.70 / .47-.61 in every variant."""


@pytest.fixture(scope="module")
def runs() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: two threads fighting other jobs run 10x slower
    try:
        off = build(0.0)
        results = {"off": {**train(off), **fresh_probes(off)}}
        per_seed = []
        for seed in SEEDS_ON:
            model = build(REVERSAL_ON, seed=seed)
            per_seed.append({**train(model, seed=seed), **fresh_probes(model, seed=seed)})
        results["on"] = {key: float(np.median([run[key] for run in per_seed])) for key in per_seed[0]}
        results["on_per_seed"] = per_seed
        return results
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_without_reversal_the_domains_are_learned_and_stay_in_the_features(runs):
    off = runs["off"]
    assert off["image"] >= 0.9 and off["instance"] >= 0.8, off  # the IAM's classifiers learn the domains
    assert off["linear"] >= 0.95 and off["head"] >= 0.95, off  # and a fresh probe finds them too


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_with_reversal_a_fresh_probe_on_the_encoder_features_is_near_chance(runs):
    off, on = runs["off"], runs["on"]  # "on": the median over SEEDS_ON
    detail = (off, runs["on_per_seed"])
    # the classifiers trained alongside the features are fooled ...
    assert on["image"] <= 0.7 and on["instance"] <= 0.75, detail
    # ... and the features themselves lost the cue: probes fitted afresh on them are near chance (0.5). Measured at
    # step 400 with reversal 30 and the DA-Faster consistency wiring: linear / head probes .725/.620 (seed 0),
    # .525/.529 (seed 1), .512/.465 (seed 2), median .525/.529; without reversal 1.0.
    assert on["linear"] <= 0.75 and on["head"] <= 0.75, detail
    assert off["linear"] - on["linear"] >= 0.25 and off["head"] - on["head"] >= 0.25, detail


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_with_reversal_person_search_still_trains(runs):
    off, on = runs["off"], runs["on"]
    assert np.isfinite(on["ps"]) and on["ps"] <= 1.5 * off["ps"], (off, on)
