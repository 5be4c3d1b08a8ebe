"""Pre-training setup: sources from the config, the synthetic default, the model config, the final export.

Everything a config can get wrong is checked by :func:`validate_pretrain_config` BEFORE any data is
generated or loaded and before the model is built: unknown dataset names, missing data folders, IAM domain
counts that contradict the sources, bad mixing weights, an output folder that cannot be written.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..data.augmentation import PRETRAIN_MIN_SIZES
from ..data.formats import dataset_names, get_spec
from ..data.identity import IdentitySpace, alignment_task
from ..hub.export import is_timm_tag, timm_weights_offline_problem
from .config import ConfigError, check_size_divisor, check_training_section

logger = logging.getLogger(__name__)

SOURCE_KEYS = ("name", "data_dir", "split", "weight", "options", "max_images", "subset_seed")
"""Keys of a ``data.sources`` entry. ``max_images`` (None = all) keeps a seeded random subset of that many
images of the parsed split, e.g. the paper's LUPerson30k (30,000 of LUPerson's images); ``subset_seed``
(default 0) draws it. The subset depends on that seed only, never on ``training.seed`` or the rank, so every
process and every run of a recipe pre-trains on the same images."""
SYNTHETIC_FOLDER = "synthetic_data"
PRETRAIN_MODEL_FOLDER = "pretrain_model"
PERSON_SEARCH_MODEL_FOLDER = "person_search_model"


def uses_synthetic_data(config: Mapping) -> bool:
    """True when no source names a data folder: the run uses the synthetic generator (the embedded default)."""
    return all(source.get("data_dir") is None for source in config["data"]["sources"])


def domain_counts(config: Mapping) -> dict[str, int]:
    """Sources per IAM task ("detection", "reid") as the config lists them."""
    counts = {"detection": 0, "reid": 0}
    for source in config["data"]["sources"]:
        counts[alignment_task(get_spec(source["name"]).task)] += 1
    return counts


def validate_pretrain_config(config: Mapping) -> None:
    """Raise :class:`ConfigError` for any problem a run would otherwise meet later (module docstring)."""
    from ..configuration_person_search import PersonSearchConfig
    from ..configuration_person_search_pretrain import PersonSearchPretrainConfig

    sources = config["data"]["sources"]
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"data.sources must be a non-empty list of sources, got {sources!r}")
    names = []
    for index, source in enumerate(sources):
        where = f"data.sources[{index}]"
        if not isinstance(source, Mapping) or "name" not in source:
            raise ConfigError(f"{where}: expected a mapping with at least 'name', got {source!r}")
        unknown = sorted(set(source) - set(SOURCE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; expected among {list(SOURCE_KEYS)}")
        if source["name"] not in dataset_names():
            raise ConfigError(f"{where}: unknown dataset {source['name']!r}; expected one of {dataset_names()}")
        max_images = source.get("max_images")
        if max_images is not None and (
            not isinstance(max_images, int) or isinstance(max_images, bool) or max_images < 1
        ):
            raise ConfigError(
                f"{where} ({source['name']}): max_images must be an integer >= 1 or null, got {max_images!r}"
            )
        subset_seed = source.get("subset_seed", 0)
        if not isinstance(subset_seed, int) or isinstance(subset_seed, bool) or subset_seed < 0:
            raise ConfigError(f"{where} ({source['name']}): subset_seed must be an integer >= 0, got {subset_seed!r}")
        weight = source.get("weight")
        if weight is not None and (not isinstance(weight, (int, float)) or weight < 0):
            raise ConfigError(f"{where} ({source['name']}): weight must be a number >= 0 or null, got {weight!r}")
        names.append(source["name"])
    if len(set(names)) != len(names):
        raise ConfigError(f"data.sources: each dataset may appear once, got {names}")
    given = [s for s in sources if s.get("data_dir") is not None]
    if given and len(given) != len(sources):
        missing = [s["name"] for s in sources if s.get("data_dir") is None]
        raise ConfigError(
            f"data.sources: {missing} have no data_dir while other sources have one; give every source its "
            f"folder, or none of them to run on the synthetic data"
        )
    if not given:
        sizes = config["data"].get("synthetic_sizes") or {}
        for name, arguments in sizes.items():
            if name not in names:
                raise ConfigError(f"data.synthetic_sizes: {name!r} is not one of the sources {names}")
            try:
                get_spec(name).check_synthetic_sizes(arguments or {})
            except ValueError as error:
                raise ConfigError(f"data.synthetic_sizes.{name}: {error}") from error
    for index, source in enumerate(given):
        if not Path(source["data_dir"]).is_dir():
            raise ConfigError(
                f"data.sources[{index}] ({source['name']}): data_dir {source['data_dir']!r} is not a folder"
            )
    weights = [s.get("weight") for s in sources]
    if any(w is not None for w in weights) and (None in weights or sum(weights) <= 0):
        raise ConfigError(
            f"data.sources: give a weight to every source or to none (sizes), with a positive sum; got {weights}"
        )

    for key in PHOTOMETRIC_KEYS:
        value = config["data"][key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ConfigError(f"data.{key} must be a probability in [0, 1], got {value!r}")
    if not isinstance(config["data"]["canvas_in_step"], bool):
        raise ConfigError(f"data.canvas_in_step must be true or false, got {config['data']['canvas_in_step']!r}")
    check_size_divisor(config["data"]["size_divisor"], config["data"]["min_sizes"] or PRETRAIN_MIN_SIZES)

    model = dict(config["model"])
    counts = domain_counts(config)
    for key, task in (("num_detection_domains", "detection"), ("num_reid_domains", "reid")):
        if model.get(key) is not None and model[key] != counts[task]:
            raise ConfigError(
                f"model.{key} = {model[key]} but data.sources has {counts[task]} {task} source(s) "
                f"({[s['name'] for s in sources if alignment_task(get_spec(s['name']).task) == task]}); "
                f"the IAM classifies one domain per source: remove the key or make it {counts[task]}"
            )
    for key, switch in (("num_detection_domains", "use_detection_iam"), ("num_reid_domains", "use_reid_iam")):
        task = "detection" if key == "num_detection_domains" else "reid"
        if counts[task] == 0 and model.get(switch, True):
            raise ConfigError(
                f"data.sources has no {task} source but model.{switch} is on; add a {task} source or set "
                f"model.{switch}: false"
            )
    _check_keys(model, PersonSearchPretrainConfig, "model")
    _check_keys(model.get("person_search") or {}, PersonSearchConfig, "model.person_search")
    training = config["training"]
    if not isinstance(training["max_steps"], int) or training["max_steps"] < 1:
        raise ConfigError(f"training.max_steps must be an integer >= 1, got {training['max_steps']!r}")
    check_training_section(config)
    if config["schedule"]["warmup_steps"] is None:
        raise ConfigError("schedule.warmup_steps must be an integer >= 0 (null, one epoch, is fine-tuning's only)")
    backbone_weights = config["model_init"]["backbone_weights"]
    if backbone_weights is not None and not (Path(str(backbone_weights)).is_file() or is_timm_tag(backbone_weights)):
        raise ConfigError(
            f"model_init.backbone_weights {backbone_weights!r} is neither a file nor a timm tag such as "
            "resnet50.tv_in1k (ImageNet backbone weights)"
        )
    pretrained_model = config["model_init"]["pretrained_model"]
    if pretrained_model is not None:
        if not (Path(str(pretrained_model)) / "config.json").is_file():
            raise ConfigError(
                f"model_init.pretrained_model {pretrained_model!r} is not a saved pre-training model folder (no "
                "config.json there; expected the pretrain_model/ folder of an earlier run_pretrain.py run)"
            )
        if backbone_weights is not None:
            raise ConfigError(
                "model_init: give backbone_weights or pretrained_model, not both (the pre-trained model already "
                "holds its backbone)"
            )
    if config["hub"]["push_to_hub"]:
        from .hub import check_push_possible

        if not config["hub"]["hub_model_id"]:
            raise ConfigError("hub.push_to_hub is on but hub.hub_model_id is not set (expected 'org/name')")
        try:
            check_push_possible(config["hub"]["hub_model_id"])
        except ValueError as error:
            raise ConfigError(f"hub.push_to_hub is on, but {error}") from error
    from .optim import lr_factor

    try:
        lr_factor(0, config["schedule"], training["max_steps"])
    except ValueError as error:
        raise ConfigError(f"schedule: {error}") from error
    # Last: what the environment lacks, once the config itself is right.
    problem = timm_weights_offline_problem(backbone_weights) if backbone_weights is not None else None
    if problem is not None:
        raise ConfigError(f"model_init.backbone_weights: {problem}")


def _check_keys(values: Mapping, config_class, where: str) -> None:
    accepted = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(values) - accepted)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; {config_class.__name__} accepts {sorted(accepted)}")


def generate_synthetic_sources(config: Mapping, output_dir: str | Path) -> list[dict]:
    """Write every source's synthetic raw folder under ``output_dir/synthetic_data`` (once) and return the
    sources with their ``data_dir`` filled in. The folders are then read by the real parsers."""
    from ..data.synthetic import generate

    root = Path(output_dir) / SYNTHETIC_FOLDER
    seed = int(config["training"]["seed"])
    sizes = config["data"].get("synthetic_sizes") or {}
    filled = []
    for source in config["data"]["sources"]:
        folder = root / source["name"]
        marker = folder / ".generated.json"
        arguments = dict(sizes.get(source["name"]) or {})
        if not marker.is_file() or json.loads(marker.read_text()) != {"seed": seed, "sizes": arguments}:
            generate(source["name"], folder, seed=seed, **arguments)
            marker.write_text(json.dumps({"seed": seed, "sizes": arguments}))
        filled.append({**source, "data_dir": str(folder)})
    return filled


def load_sources(sources: list[dict], cache_dir: str | Path | None) -> list[tuple[str, str, object]]:
    """``(name, task, datasets.Dataset)`` per source, loaded through the dataset's parser and builder.

    Raises when a source's records are not of the task the config assumed (e.g. a CUHK03 split of scenes).
    """
    from ..data.loading import load_person_search_dataset

    loaded = []
    for source in sources:
        data = load_person_search_dataset(
            source["name"],
            data_dir=source["data_dir"],
            split=source.get("split", "train"),
            cache_dir=cache_dir,
            **(source.get("options") or {}),
        )
        if len(data) == 0:
            raise ConfigError(
                f"source {source['name']} ({source['data_dir']}, split {source.get('split')}): no records"
            )
        data = select_subset(data, source.get("max_images"), source.get("subset_seed", 0))
        tasks = set(data["task"])
        expected = get_spec(source["name"]).task
        if tasks != {expected}:
            raise ConfigError(
                f"source {source['name']}: records have tasks {sorted(tasks)}, expected only {expected!r}"
            )
        loaded.append((source["name"], expected, data))
    return loaded


def select_subset(data, max_images: int | None, subset_seed: int = 0):
    """``max_images`` records of ``data`` (a ``datasets.Dataset``) drawn without replacement with
    ``subset_seed``, in their original order; all of them when ``max_images`` is None or not smaller.

    The draw is a permutation of ``numpy.random.default_rng(subset_seed)`` over the parsed records, so it
    is the same on every rank and in every run of the same data and seed (the paper's LUPerson30k).
    """
    if max_images is None or len(data) <= max_images:
        return data
    chosen = np.random.default_rng(subset_seed).permutation(len(data))[:max_images]
    logger.info("kept a seeded subset of %d of %d records (subset_seed %d)", max_images, len(data), subset_seed)
    return data.select(np.sort(chosen).tolist())


PHOTOMETRIC_KEYS = ("color_jitter_p", "grayscale_p", "blur_p")
"""The ``data`` keys of the two-view augmentation's photometric probabilities (:data:`~.config.PRETRAIN_DEFAULTS`)."""


def photometric_options(data: Mapping) -> dict[str, float]:
    """The :class:`~hf_personsearch.data.augmentation.TwoViewAugmentation` probabilities of a config's ``data``
    section (``run_pretrain.py`` and the input-pipeline benchmarks build their augmentation from it)."""
    return {key: float(data[key]) for key in PHOTOMETRIC_KEYS}


def build_pretrain_model_config(model: Mapping, identity_space: IdentitySpace):
    """PersonSearchPretrainConfig of the ``model`` section, with the OIM table sized by the identity space
    and the IAM domain counts taken from the sources."""
    from ..configuration_person_search_pretrain import PersonSearchPretrainConfig

    values = dict(model)
    person_search = dict(values.pop("person_search", None) or {})
    person_search["num_person_ids"] = identity_space.num_identities
    values["num_detection_domains"] = max(1, identity_space.num_domains("detection"))
    values["num_reid_domains"] = max(1, identity_space.num_domains("reid"))
    return PersonSearchPretrainConfig(person_search=person_search, **values)


def export_pretrained(
    model,
    output_dir: str | Path,
    config: Mapping,
    training_info: Mapping,
    repo_id: str | None = None,
) -> dict[str, Path]:
    """Write the final folders (main process only):

    - ``pretrain_model/``: PersonSearchPretrainModel.save_pretrained (safetensors, with predictor and IAMs)
      + the same PersonSearchImageProcessor, so ``pipeline("person-search", model=<this folder>)`` and
      ``AutoImageProcessor`` load it too;
    - ``person_search_model/``: the downstream PersonSearchModel + PersonSearchImageProcessor +
      ``training_info.json`` + the model card README.md (hf_personsearch.hub.model_card), the folder pushed
      to the Hub.
    """
    from ..hub.model_card import TRAINING_FILE, refresh_model_card
    from ..image_processing_person_search import PersonSearchImageProcessor

    output_dir = Path(output_dir)
    pretrain_folder = output_dir / PRETRAIN_MODEL_FOLDER
    model.save_pretrained(pretrain_folder)
    folder = output_dir / PERSON_SEARCH_MODEL_FOLDER
    model.export_person_search_model(folder)
    data = config["data"]
    min_sizes = data.get("min_sizes")
    processor = PersonSearchImageProcessor(
        **({"min_size": int(max(min_sizes)), "max_size": int(data["max_size"])} if min_sizes else {})
    )
    processor.save_pretrained(folder)
    processor.save_pretrained(pretrain_folder)
    record = json.dumps({"kind": "pretrained", **training_info}, indent=1)
    # Both folders carry the training record, so `search` and `card` on either know what the model saw.
    (pretrain_folder / TRAINING_FILE).write_text(record)
    (folder / TRAINING_FILE).write_text(record)
    refresh_model_card(folder, kind="pretrained", repo_id=repo_id or folder.resolve().name)
    return {"pretrain_model": pretrain_folder, "person_search_model": folder}
