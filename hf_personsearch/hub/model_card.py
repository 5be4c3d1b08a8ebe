"""Model cards for pre-trained and fine-tuned person search models (huggingface_hub ModelCard / EvalResult).

A card is rendered from the templates in ``model_card_templates/`` next to this module (``pretrained.md``,
``finetuned.md``, with shared parts included from ``_*.md``), the model's config, a training record and
evaluation results. The YAML header carries a ``model-index`` (one EvalResult per dataset and metric) so that
the Hub shows the numbers.

Evaluation results are plain dicts, e.g. a :class:`~hf_personsearch.evaluation.results.SearchResult` plus its
dataset::

    {"dataset": "PRW", "mAP": 0.4708, "top1": 0.84, "protocol": "prw", "settings": {"gallery": "all"}}

Metric values are fractions in [0, 1] (what the evaluation returns); cards show percent with two decimals
(what papers report), in the table and in the model-index.

A saved model folder can hold ``eval_results.json`` (a list of such dicts) and ``training_info.json`` (a flat
dict: data, steps, hardware, ..., optionally ``"kind": "pretrained"`` and ``"synthetic_data": true``);
:func:`refresh_model_card` turns them and ``config.json`` into the folder's ``README.md``.

Cards say what the model was trained on and nothing more: a model trained on the synthetic generator's images
says so (``synthetic_data``), absolute paths of the training machine are reduced to their last folder name
(they mean nothing to a reader and expose the machine's layout), and results on the custom format are shown
as own-data results under the protocol rules query.json chose, not as a community benchmark.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.formats import dataset_names, get_spec
from .export import TORCHVISION_LOAD_LINE, export_formats

CARD_KINDS = ("pretrained", "finetuned")
RESULTS_FILE = "eval_results.json"
TRAINING_FILE = "training_info.json"
CARD_FILE = "README.md"
TEMPLATES_PACKAGE = __package__
TEMPLATES_FOLDER = "model_card_templates"
"""The templates are package data of this subpackage, read through importlib (jinja2.PackageLoader), so that
an installed wheel renders cards as a source checkout does; pass ``templates_dir`` to render from elsewhere."""

SYNTHETIC_DATA_KEY = "synthetic_data"
"""``training_info.json`` key: true when every training image came from the synthetic generator (the demo,
tests). The card and ``hf-personsearch search`` then say that the model is not meant for real photos."""
CUSTOM_DATASET = "custom"
"""The registered name of the custom format (users' own data): its results are not a public benchmark."""
PROCESSOR_FILE = "preprocessor_config.json"
"""Written by ``PersonSearchImageProcessor.save_pretrained``; a pre-training checkpoint folder has none."""
TASK_TYPE = "person-search"
TASK_NAME = "Person Search"
METRIC_NAMES = {"mAP": "mAP"}
"""Metric keys of an evaluation dict besides ``top{k}``; ``top{k}`` keys become "top-k" metrics."""
DEFAULT_LICENSE = "apache-2.0"
"""The toolkit's licence (pyproject.toml); a card for weights under another licence passes its own."""


def _is_metric(key: str) -> bool:
    return key in METRIC_NAMES or (key.startswith("top") and key[3:].isdigit())


def _percent(value: float, where: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: metric value {value} is not a fraction in [0, 1] (pass mAP 0.47, not 47)")
    return round(100.0 * value, 2)


def _dataset_type(name: str) -> str:
    return name.strip().lower().replace(" ", "-")


def _display_name(dataset: str) -> str:
    """The display name of a registered dataset given by its name or display name in any case ("cuhk_sysu",
    "cuhk-sysu" -> "CUHK-SYSU"); other datasets keep the name they are given."""
    wanted = _dataset_type(dataset)
    for name in dataset_names():
        spec = get_spec(name)
        if wanted in (spec.name, _dataset_type(spec.display_name)):
            return spec.display_name
    return dataset


_ABSOLUTE_PATH = re.compile(r"(?:(?<=^)|(?<=[\s(=:,'\"]))(?:/|~/|[A-Za-z]:[\\/])[^\s,;)'\"]*")
"""An absolute POSIX, home-relative or Windows path inside a text value (at its start or after a separator)."""


def _without_local_paths(value):
    """``value`` with every absolute path replaced by its last component ("/home/me/data/prw" -> "prw")."""
    if not isinstance(value, str):
        return value

    def last_component(match: re.Match) -> str:
        parts = [part for part in re.split(r"[\\/]", match.group(0)) if part and not part.endswith(":")]
        return parts[-1] if parts else match.group(0)

    return _ABSOLUTE_PATH.sub(last_component, value)


def read_training_record(folder: str | Path) -> dict:
    """``folder/training_info.json`` as a dict ({} when the folder has none)."""
    path = Path(folder) / TRAINING_FILE
    return _read_json(path, dict) if path.is_file() else {}


def trained_on_synthetic_data(training: dict) -> bool:
    """Whether a training record says that the model saw only synthetic images (:data:`SYNTHETIC_DATA_KEY`)."""
    value = training.get(SYNTHETIC_DATA_KEY, False)
    if not isinstance(value, bool):
        raise ValueError(f"{TRAINING_FILE}: key {SYNTHETIC_DATA_KEY!r} must be true or false, got {value!r}")
    return value


def eval_results_to_model_index(results: list[dict]) -> list[EvalResult]:
    """One EvalResult per (dataset, metric), metric values in percent, protocol settings as dataset_args."""
    eval_results = []
    for index, result in enumerate(results):
        where = f"eval result {index}"
        if "dataset" not in result:
            raise ValueError(f"{where}: missing 'dataset' (e.g. 'PRW'); keys are {sorted(result)}")
        metrics = {key: value for key, value in result.items() if _is_metric(key)}
        if not metrics:
            raise ValueError(f"{where} ({result['dataset']}): no metric (expected 'mAP' and/or 'top1', 'top5', ...)")
        dataset_name = _display_name(result["dataset"])
        settings = dict(result.get("settings") or {})
        if "protocol" in result:
            settings = {"protocol": result["protocol"], **settings}
        for key, value in metrics.items():
            eval_results.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    task_name=TASK_NAME,
                    dataset_type=_dataset_type(result["dataset"]),
                    dataset_name=dataset_name,
                    dataset_split=result.get("split", "test"),
                    dataset_args=settings or None,
                    metric_type=key.lower() if key in METRIC_NAMES else key,
                    metric_name=METRIC_NAMES.get(key, f"top-{key[3:]}"),
                    metric_value=_percent(value, f"{where} ({result['dataset']}) {key}"),
                )
            )
    return eval_results


def model_index_metrics(card: ModelCard) -> dict[tuple[str, str], float]:
    """{(dataset_name, metric_type): value} read back from a card's YAML (the Hub's view of the results)."""
    return {(r.dataset_name, r.metric_type): r.metric_value for r in (card.data.eval_results or [])}


def _architecture(config) -> dict[str, str]:
    config = getattr(config, "person_search", config)  # a pre-training config holds the model's config
    if config.model_type == "align_ps":
        return {
            "architecture": ("ROI-AlignPS" if config.use_roi_head else "AlignPS")
            + " (anchor-free, aligned feature aggregation), focal OIM + triplet re-ID losses",
            "backbone": f"{config.backbone} ({config.backbone_library})",
            "embedding dimension": str(config.embedding_dim),
            "identities in the OIM table": str(config.num_person_ids),
        }
    return {
        "architecture": "NAE (Faster R-CNN + norm-aware embedding), OIM re-ID loss",
        "detection score": (
            "the embedding's norm (NAE)"
            if config.detection_score == "norm"
            else "a linear classifier on the box head map (Faster R-CNN's; a departure from NAE)"
        ),
        "backbone": f"{config.backbone} ({config.backbone_library})",
        "embedding dimension": str(config.embedding_dim),
        "identities in the OIM table": str(config.num_person_ids),
        "anchor sizes": ", ".join(str(s) for s in config.anchor_sizes),
    }


def _loss_weights(config) -> dict[str, float]:
    """Every ``loss_weight_*`` of the model's config, and the paper's eta / lambda for a pre-training config."""
    model_config = getattr(config, "person_search", config)
    weights = {key: value for key, value in sorted(model_config.to_dict().items()) if key.startswith("loss_weight")}
    paper_names = {
        "contrastive_loss_weight": "eta (contrastive, Eq. 1)",
        "adversarial_loss_weight": "lambda (adversarial, Eq. 1)",
        "iam_consistency_weight": "IAM consistency (Eq. 7)",
        "gradient_reversal_weight": "gradient reversal",
    }
    for key, name in paper_names.items():
        if hasattr(config, key):
            weights[name] = getattr(config, key)
    return weights


def _table_rows(results: list[dict]) -> tuple[list[dict], list[str]]:
    topk_names = sorted(
        {k for r in results for k in r if k.startswith("top") and k[3:].isdigit()}, key=lambda k: int(k[3:])
    )
    rows = []
    for result in results:
        settings = dict(result.get("settings") or {})
        if "protocol" in result:
            settings = {"protocol": result["protocol"], **settings}
        rows.append(
            {
                "dataset": _display_name(result["dataset"]),
                "own_data": _dataset_type(result["dataset"]) == CUSTOM_DATASET,
                "settings_text": ", ".join(f"{k}={v}" for k, v in settings.items()) or "-",
                "mAP": f"{100 * float(result['mAP']):.2f}" if "mAP" in result else "-",
                "topk": {k: f"{100 * float(result[k]):.2f}" for k in topk_names if k in result},
            }
        )
    return rows, topk_names


def render_model_card(
    config,
    *,
    kind: str,
    repo_id: str,
    eval_results: list[dict] | None = None,
    training: dict | None = None,
    datasets: list[str] | None = None,
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    templates_dir: str | Path | None = None,
    synthetic_data: bool = False,
    image_processor_saved: bool = True,
) -> ModelCard:
    """Render the card of a person search model.

    Args:
        config: the model's PersonSearchConfig (or any config with its fields).
        kind: "pretrained" (a hybrid pre-trained starting point) or "finetuned" (a model for a target dataset).
        repo_id: the Hub id used in the usage snippet and as the model name (e.g. "org/prtps-r50").
        eval_results: plain dicts (see the module docstring); become the model-index and the results table.
        training: a flat dict of how it was trained (data, steps, hardware, ...); shown as a list.
        datasets: Hub dataset ids for the card metadata; default: the datasets of ``eval_results``.
        license: licence id of the weights (default: the toolkit's apache-2.0).
        base_model: the model it was fine-tuned from, for the Hub's model tree.
        templates_dir: folder of the templates (default: the package's model_card_templates/).
        synthetic_data: the model was trained on synthetic images only; the card says so first.
        image_processor_saved: the repository holds ``preprocessor_config.json``; False (a pre-training
            checkpoint) makes the usage snippet build the default processor instead of loading one.
    """
    import jinja2

    if kind not in CARD_KINDS:
        raise ValueError(f"card kind must be one of {CARD_KINDS}, got {kind!r}")
    eval_results = list(eval_results or [])
    training = {key: _without_local_paths(value) for key, value in (training or {}).items()}
    model_index = eval_results_to_model_index(eval_results)
    target = sorted({_display_name(r["dataset"]) for r in eval_results})
    model_name = repo_id.rstrip("/").split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=None,
        license=license,
        tags=["person-search", "pedestrian-detection", "person-re-identification", "hf-personsearch", kind],
        datasets=datasets or [_dataset_type(n) for n in target if _dataset_type(n) != CUSTOM_DATASET] or None,
        base_model=base_model,
        eval_results=model_index or None,
    )
    if templates_dir is None:
        loader = jinja2.PackageLoader(TEMPLATES_PACKAGE, TEMPLATES_FOLDER)
        where = f"package data {TEMPLATES_PACKAGE}/{TEMPLATES_FOLDER}"
    else:
        loader = jinja2.FileSystemLoader(str(templates_dir))
        where = str(templates_dir)
    environment = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    if f"{kind}.md" not in environment.list_templates():
        raise FileNotFoundError(f"model card template {kind}.md does not exist in {where}")
    rows, topk_names = _table_rows(eval_results)
    text = environment.get_template(f"{kind}.md").render(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        repo_id=repo_id,
        architecture=_architecture(config),
        training=training,
        loss_weights=_loss_weights(config),
        results=rows,
        topk_names=topk_names,
        target_datasets=" and ".join(
            "the user's own data (custom format)" if _dataset_type(n) == CUSTOM_DATASET else n for n in target
        )
        or "a person search dataset",
        license=license,
        synthetic_data=synthetic_data,
        image_processor_saved=image_processor_saved,
        pretrain_checkpoint=hasattr(config, "person_search"),
        export_formats=export_formats(config),
        torchvision_load_line=TORCHVISION_LOAD_LINE.format(
            architecture=getattr(config, "person_search", config).backbone.split(".")[0], path="backbone.pth"
        ),
    )
    return ModelCard(text)


def _read_json(path: Path, expected: type):
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(value, expected):
        raise ValueError(f"{path}: expected a JSON {expected.__name__}, got {type(value).__name__}")
    return value


def refresh_model_card(
    folder: str | Path,
    *,
    kind: str | None = None,
    repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    templates_dir: str | Path | None = None,
    overwrite: bool = True,
) -> Path:
    """(Re-)write ``folder/README.md`` from ``config.json``, ``eval_results.json`` and ``training_info.json``.

    ``kind`` defaults to training_info's "kind", else "pretrained" for a pre-training checkpoint and
    "finetuned" otherwise; ``repo_id`` defaults to the folder name. ``overwrite=False`` refuses to replace an
    existing README.md (``hf-personsearch card`` without ``--force``: it may hold text written by hand); the
    training scripts regenerate the card of the folder they just wrote.
    """
    from transformers import AutoConfig

    import hf_personsearch  # noqa: F401  (registers the person_search config type)

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder: {folder / 'config.json'} does not exist")
    path = folder / CARD_FILE
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass --force (overwrite=True) to replace it")
    config = AutoConfig.from_pretrained(folder)
    results = _read_json(folder / RESULTS_FILE, list) if (folder / RESULTS_FILE).is_file() else []
    for index, result in enumerate(results):
        if not isinstance(result, dict):
            raise ValueError(f"{folder / RESULTS_FILE}: item {index} is a {type(result).__name__}, expected an object")
    training = read_training_record(folder)
    synthetic_data = trained_on_synthetic_data(training)
    training.pop(SYNTHETIC_DATA_KEY, None)
    pretrain_checkpoint = hasattr(config, "person_search")
    kind = kind or training.pop("kind", None) or ("pretrained" if pretrain_checkpoint else "finetuned")
    training.pop("kind", None)
    card = render_model_card(
        config,
        kind=kind,
        repo_id=repo_id or folder.resolve().name,
        eval_results=results,
        training=training,
        license=license,
        templates_dir=templates_dir,
        synthetic_data=synthetic_data,
        image_processor_saved=(folder / PROCESSOR_FILE).is_file(),
    )
    card.save(path)
    return path
