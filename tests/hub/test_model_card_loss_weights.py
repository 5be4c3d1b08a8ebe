"""A pre-training config's card names the paper's loss weights (eta, lambda) with their values."""

from hf_personsearch import PersonSearchPretrainConfig
from hf_personsearch.hub.model_card import render_model_card


def test_pretraining_card_lists_eta_and_lambda():
    config = PersonSearchPretrainConfig(contrastive_loss_weight=0.7, adversarial_loss_weight=0.05)
    text = str(render_model_card(config, kind="pretrained", repo_id="org/prtps-test"))
    assert "eta (contrastive, Eq. 1)" in text and "0.7" in text
    assert "lambda (adversarial, Eq. 1)" in text and "0.05" in text
