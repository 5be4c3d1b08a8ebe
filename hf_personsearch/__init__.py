"""hf-personsearch: hybrid pre-training for person search, in the shape of a Hugging Face hub package.

Importing the package registers the models with the Auto classes, so ``AutoModel.from_pretrained(dir)``
works for saved folders without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_align_ps import AlignPSConfig
from .configuration_person_search import PersonSearchConfig
from .configuration_person_search_pretrain import PersonSearchPretrainConfig
from .image_processing_person_search import PersonSearchImageProcessor, search_similarity
from .modeling_align_ps import AlignPSModel, AlignPSOutput, AlignPSPreTrainedModel
from .modeling_person_search import PersonSearchModel, PersonSearchOutput, PersonSearchPreTrainedModel
from .modeling_person_search_pretrain import PersonSearchPretrainModel, PersonSearchPretrainOutput

__version__ = "0.1.0"

AutoConfig.register(PersonSearchConfig.model_type, PersonSearchConfig, exist_ok=True)
AutoModel.register(PersonSearchConfig, PersonSearchModel, exist_ok=True)
AutoConfig.register(PersonSearchPretrainConfig.model_type, PersonSearchPretrainConfig, exist_ok=True)
AutoModel.register(PersonSearchPretrainConfig, PersonSearchPretrainModel, exist_ok=True)
AutoConfig.register(AlignPSConfig.model_type, AlignPSConfig, exist_ok=True)
AutoModel.register(AlignPSConfig, AlignPSModel, exist_ok=True)
# One processor class serves both of transformers' image processor backends (it takes PIL images and arrays
# and resizes with torchvision's functional kernel); registered for "pil" only, AutoImageProcessor asks for
# its default backend (torchvision when installed) and warned on every load that it "falls back to pil".
for _config_class in (PersonSearchConfig, AlignPSConfig):
    AutoImageProcessor.register(
        _config_class,
        image_processor_classes={"pil": PersonSearchImageProcessor, "torchvision": PersonSearchImageProcessor},
        exist_ok=True,
    )
# Saved folders carry the model code and an auto_map, so they load with trust_remote_code=True where
# hf_personsearch is not installed (the Hub use case); where it is installed, the registered classes win.
PersonSearchConfig.register_for_auto_class("AutoConfig")
PersonSearchModel.register_for_auto_class("AutoModel")
PersonSearchImageProcessor.register_for_auto_class("AutoImageProcessor")
PersonSearchPretrainConfig.register_for_auto_class("AutoConfig")
PersonSearchPretrainModel.register_for_auto_class("AutoModel")
AlignPSConfig.register_for_auto_class("AutoConfig")
AlignPSModel.register_for_auto_class("AutoModel")

__all__ = [
    "AlignPSConfig",
    "AlignPSModel",
    "AlignPSOutput",
    "AlignPSPreTrainedModel",
    "PersonSearchConfig",
    "PersonSearchImageProcessor",
    "PersonSearchModel",
    "PersonSearchOutput",
    "PersonSearchPreTrainedModel",
    "PersonSearchPretrainConfig",
    "PersonSearchPretrainModel",
    "PersonSearchPretrainOutput",
    "search_similarity",
]
