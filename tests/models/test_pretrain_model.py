"""PersonSearchPretrainModel: Eq. (1) assembled from its terms, ablation switches, stop-gradient, batch
checks and checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_person_search_config

from hf_personsearch.configuration_person_search_pretrain import PersonSearchPretrainConfig
from hf_personsearch.modeling_person_search_pretrain import PS_TERMS, PersonSearchPretrainModel

IMAGE_SIZE = 64


def tiny_pretrain_config(**overrides) -> PersonSearchPretrainConfig:
    person_search = overrides.pop("person_search", None) or tiny_person_search_config()
    values = dict(
        person_search=person_search,
        num_detection_domains=2,
        num_reid_domains=2,
        iam_num_convs=1,
        iam_conv_channels=8,
        iam_instance_hidden_dim=8,
        contrastive_loss_weight=0.7,
        adversarial_loss_weight=0.3,
        iam_consistency_weight=0.5,
    )
    values.update(overrides)
    return PersonSearchPretrainConfig(**values)


def make_batch(seed: int = 0) -> dict:
    """4 images: detection source 0, detection source 1 (one person lost in view 2), labeled re-ID
    source 0, unlabeled re-ID source 1. View 2 is a shifted copy with its boxes shifted alike."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    shift = 3
    pixel_values_2 = torch.roll(pixel_values, shifts=(shift, shift), dims=(2, 3))
    boxes = [
        [[4.0, 4.0, 24.0, 50.0], [30.0, 8.0, 50.0, 60.0]],
        [[6.0, 2.0, 26.0, 40.0], [34.0, 10.0, 58.0, 58.0]],
        [[10.0, 4.0, 50.0, 58.0]],
        [[12.0, 6.0, 48.0, 56.0]],
    ]
    ids = [[-1, -1], [-1, -1], [3], [-1]]
    labels, labels_2 = [], []
    for image, (image_boxes, image_ids) in enumerate(zip(boxes, ids)):
        box_tensor = torch.tensor(image_boxes)
        labels.append(
            {"boxes": box_tensor, "person_ids": torch.tensor(image_ids), "person_index": torch.arange(len(image_ids))}
        )
        keep = [1] if image == 1 else list(range(len(image_ids)))  # image 1 loses person 0 in view 2
        keep = keep[::-1] if image == 0 else keep  # image 0 lists its persons in the other order
        labels_2.append(
            {
                "boxes": (box_tensor[keep] + shift).clamp(max=IMAGE_SIZE),
                "person_ids": torch.tensor(image_ids)[keep],
                "person_index": torch.tensor(keep),
            }
        )
    sizes = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE]] * 4)
    return {
        "pixel_values": pixel_values,
        "image_sizes": sizes,
        "labels": labels,
        "pixel_values_2": pixel_values_2,
        "image_sizes_2": sizes.clone(),
        "labels_2": labels_2,
        "domain_ids": torch.tensor([0, 1, 0, 1]),
        "is_reid": torch.tensor([False, False, True, True]),
        "has_identity": torch.tensor([False, False, True, False]),
        "sources": ["crowdhuman", "ecp", "msmt17", "luperson"],
    }


def build(seed: int = 0, **overrides) -> PersonSearchPretrainModel:
    torch.manual_seed(seed)
    return PersonSearchPretrainModel(tiny_pretrain_config(**overrides)).train()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: two threads fighting other jobs run 10x slower
    yield
    torch.set_num_threads(threads)


ALL_ON = dict(use_contrastive=True, use_detection_iam=True, use_reid_iam=True, use_inter_task_alignment=True)
TERMS_OF_SWITCH = {
    "use_contrastive": {"con"},
    "use_detection_iam": {"adv_det_img", "adv_det_ins", "adv_det_consistency"},
    "use_reid_iam": {"adv_reid_img", "adv_reid_ins", "adv_reid_consistency"},
    "use_inter_task_alignment": {"adv_inter_img", "adv_inter_ins", "adv_inter_consistency"},
}


def _run(model, seed=0):
    torch.manual_seed(seed)  # the same proposal sampling in every run
    return model(**make_batch())


def test_total_loss_is_eq1_of_its_terms():
    model = build(**ALL_ON)
    output = _run(model)
    terms, config = output.loss_dict, model.config
    weighted_ps = model.person_search.weighted_loss({name: terms[name] for name in PS_TERMS})
    assert torch.allclose(terms["ps"], weighted_ps, atol=1e-5)  # mean of views = weights x mean terms
    adv = sum(
        terms[f"adv_{m}_img"] + terms[f"adv_{m}_ins"] + 0.5 * terms[f"adv_{m}_consistency"]
        for m in ("det", "reid", "inter")
    )
    assert torch.allclose(terms["adv"], adv, atol=1e-6)
    expected = terms["ps"] + 0.7 * terms["con"] + 0.3 * terms["adv"]
    assert config.contrastive_loss_weight == 0.7 and config.adversarial_loss_weight == 0.3
    assert torch.allclose(output.loss, expected, atol=1e-6)
    assert output.num_contrastive_persons == 4  # image 0: 2, image 1: 1 (one lost), image 3: 1; image 2 labeled


@pytest.mark.parametrize("switch", list(TERMS_OF_SWITCH))
def test_each_ablation_switch_removes_exactly_its_terms(switch):
    full = build(**ALL_ON)
    ablated = build(**{**ALL_ON, switch: False})
    ablated.load_state_dict(full.state_dict(), strict=False)
    full_terms, ablated_terms = _run(full).loss_dict, _run(ablated).loss_dict
    assert set(full_terms) - set(ablated_terms) == TERMS_OF_SWITCH[switch]
    for name, value in ablated_terms.items():
        if name != "adv":
            assert torch.allclose(value, full_terms[name], atol=1e-6), name
    removed_adv = sum(
        (full_terms[t] * (0.5 if t.endswith("consistency") else 1.0) for t in TERMS_OF_SWITCH[switch] if t != "con"),
        torch.tensor(0.0),
    )
    assert torch.allclose(ablated_terms["adv"], full_terms["adv"] - removed_adv, atol=1e-5)


def test_domain_classifier_parameters_are_exactly_the_alignment_modules():
    model = build(**ALL_ON)
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.split(".")[0] in ("detection_alignment", "reid_alignment", "inter_task_alignment")
    }
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    assert expected and {names[id(p)] for p in model.domain_classifier_parameters()} == expected
    assert build(**{name: False for name in ALL_ON}).domain_classifier_parameters() == []


def test_iam_negative_slope_reaches_every_module_and_is_validated():
    model = build(**ALL_ON, iam_negative_slope=0.1)
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}
    with pytest.raises(ValueError, match="iam_negative_slope"):
        tiny_pretrain_config(iam_negative_slope=1.5)


def test_all_switches_off_leaves_l_ps_only():
    model = build(**{name: False for name in ALL_ON})
    output = _run(model)
    assert set(output.loss_dict) == set(PS_TERMS) | {"ps"}
    assert torch.equal(output.loss, output.loss_dict["ps"])


def test_no_gradient_through_the_target_branch_of_l_con():
    model = build(use_detection_iam=False, use_reid_iam=False)
    captured = []
    model.prediction_mlp.register_forward_hook(lambda module, inputs, output: captured.append((inputs[0], output)))
    output = _run(model)
    (h1, z1), (h2, z2) = captured
    con = output.loss_dict["con"]
    grad_h1, grad_z1 = torch.autograd.grad(con, [h1, z1], retain_graph=True)
    # all of h1's gradient arrives through the predictor z1 = P(h1): none through sg(h1) in C(sg(h1), z2)
    (through_predictor,) = torch.autograd.grad(z1, h1, grad_outputs=grad_z1, retain_graph=True)
    assert grad_h1.abs().sum() > 0
    assert torch.allclose(grad_h1, through_predictor, atol=1e-7)
    # and the model's parameters do receive the predicted branch's gradient
    grads = torch.autograd.grad(
        con, list(model.person_search.search_head.embedding_head.parameters()), allow_unused=True
    )
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_batch_errors_name_the_wrong_item():
    model = build()
    batch = make_batch()
    batch["domain_ids"] = torch.tensor([0, 2, 0, 1])
    with pytest.raises(ValueError, match=r"domain_ids\[1\] = 2.*detection source.*num_detection_domains"):
        model(**batch)
    batch = make_batch()
    del batch["labels_2"][3]["person_index"]
    with pytest.raises(ValueError, match=r"labels_2\[3\] has no 'person_index'"):
        model(**batch)
    with pytest.raises(RuntimeError, match="train mode only"):
        model.eval()(**make_batch())


def _embedding_statistics(person_search):
    return {
        name: tensor.clone()
        for name, tensor in person_search.search_head.state_dict().items()
        if name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def test_ground_truth_features_leave_the_inference_statistics_to_the_proposal_batches():
    """The ground-truth pass (L_con, re-ID IAM) must not move the running statistics of the embedding
    head (incl. the detection-score rescaler) or the box regressor: they stay those of the two views'
    proposal batches, exactly as if the pre-training extras did not exist."""
    model, reference = build(**ALL_ON), build(**ALL_ON)
    _run(model)
    batch = make_batch()
    torch.manual_seed(0)  # _run's seed: the same proposal sampling
    for suffix in ("", "_2"):
        reference.person_search(
            batch["pixel_values" + suffix], image_sizes=batch["image_sizes" + suffix], labels=batch["labels" + suffix]
        )
    moved, expected = _embedding_statistics(model.person_search), _embedding_statistics(reference.person_search)
    assert any("rescaler" in name for name in expected) and set(moved) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(moved[name], tensor), name


def test_misspelt_arguments_are_rejected_by_name():
    model = build()
    with pytest.raises(TypeError, match="domain_id"):
        model(**make_batch(), domain_id=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="image_size"):
        model.person_search(torch.zeros(1, 3, 64, 64), image_size=torch.tensor([[64, 64]]))


def test_both_views_ignore_regions_reach_the_detector(monkeypatch):
    """Each view's labels carry their own ignore regions (collate_pretrain's labels[i]["ignore_regions"]) to
    the RPN of the shared person search model; a labels dict without the key has none."""
    batch = make_batch()
    region_1, region_2 = torch.tensor([[30.0, 0.0, 64.0, 64.0]]), torch.tensor([[33.0, 3.0, 64.0, 64.0]])
    batch["labels"][0] = {**batch["labels"][0], "ignore_regions": region_1}
    batch["labels_2"][0] = {**batch["labels_2"][0], "ignore_regions": region_2}
    model = build()
    seen = []
    assign = model.person_search.rpn.assign_targets_to_anchors

    def spy(anchors, targets):
        seen.append([target["ignore_regions"] for target in targets])
        return assign(anchors, targets)

    monkeypatch.setattr(model.person_search.rpn, "assign_targets_to_anchors", spy)
    assert torch.isfinite(model(**batch).loss)
    assert len(seen) == 2
    for view_regions, region in zip(seen, (region_1, region_2)):
        torch.testing.assert_close(view_regions[0], region)
        assert [regions.shape for regions in view_regions[1:]] == [(0, 4)] * 3


def test_linear_detection_score_pretrains_every_parameter():
    """The CPU benchmark pre-trains with detection_score="linear": every parameter of the full loss gets a
    gradient (no leftover NAE rescaler that DistributedDataParallel would reject), and the score reaches the
    exported person search model."""
    model = build(person_search=tiny_person_search_config(detection_score="linear"), **ALL_ON)
    _run(model).loss.backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.person_search.search_head.person_classifier is not None
    assert model.config.person_search.detection_score == "linear"
