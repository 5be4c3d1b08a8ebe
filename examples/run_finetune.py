"""Fine-tune a PersonSearchModel on PRW, CUHK-SYSU, PoseTrack21 or custom data, then evaluate it.

Usage (one process, GPU or CPU; multi-GPU with ``accelerate launch``)::

    accelerate launch examples/run_finetune.py --config examples/configs/finetune_prw.yaml \\
        data.data_dir=/data/PRW-v16.04.20 init.from=pretrained init.path=org/prtps-r50

``model.type`` picks the downstream model family: ``person_search`` (NAE, :class:`PersonSearchModel`, the
default) or ``align_ps`` (AlignPS, :class:`AlignPSModel`; ROI-AlignPS with ``model.use_roi_head: true``); the other
``model`` keys are that family's config arguments. The initialisations of the paper's Fig. 5 (``init.from``):

* ``scratch``: random weights everywhere;
* ``imagenet``: ImageNet backbone weights (``init.path``: a timm tag such as ``resnet50.tv_in1k``, fetched by
  timm, or a timm/torchvision weights file), heads random;
* ``pretrained_backbone``: the backbone of a pre-trained checkpoint (folder or hub id), heads re-initialised;
  for AlignPS the backbone of any saved person search model or pre-training checkpoint (the only part the two
  families share; the log lists what was taken and what was left);
* ``pretrained``: the whole pre-trained model (backbone + RPN + detection and re-ID heads); for AlignPS a saved
  AlignPS model.

With a pre-trained NAE init, ``init.match_fresh_weight_norms`` (default true) rescales every weight that feeds a
training-mode BatchNorm to the norm of a fresh model, keeping the function: pre-training grows these norms, and a
grown norm is a smaller effective learning rate, so the pre-trained init would learn the target more slowly than
random weights (``hf_personsearch.training.transfer``). AlignPS inits are loaded as saved.

``data.train_fraction`` trains on a random fraction of the training images (Fig. 5's 10%..100%). With no
``data.data_dir`` the synthetic generator writes the dataset's raw format under ``<output_dir>/data`` first,
so the script runs anywhere. Bad input (unknown dataset, missing folders or checkpoint, unwritable output
folder, unknown config keys) stops the run before any model is built.

Training runs in the loop shared with pre-training (``hf_personsearch.training.loop.run_training``): the
same command line (``KEY=VALUE`` or ``-o KEY=VALUE`` overrides, ``--output_dir``, ``--max_steps``, ``--seed``),
the same NaN/inf guard, atomic checkpoints every ``checkpointing.every`` steps (last K kept) and exact resume:
``--resume_from_checkpoint latest`` after an interruption, even ``kill -9``, ends with the same weights, bit for
bit, as an uninterrupted run (the data order is a seeded epoch permutation, augmentation is seeded per sample,
and the checkpoint holds model with OIM tables, optimiser, scheduler and RNG states). ``--stop_after_steps N``
ends a session early with a checkpoint. With several processes, they must agree on the training records and
the identity map before the first step and on the OIM tables at the end, and the evaluations (periodic and
final) run sharded over all of them, with the metric computed once on the main process.

Outputs in ``training.output_dir``: the model (safetensors) + image processor, saved before the final
evaluation so that a failing evaluation never loses it (``--resume_from_checkpoint latest`` then trains nothing
more and evaluates again); ``identity_map.json`` (OIM row -> dataset person id),
``resolved_config.yaml``, ``loss_log.jsonl`` (every step's loss terms), ``checkpoint-<step>/``, and after the
evaluation ``results.json`` (final evaluation and the history of periodic ones), ``eval_results.json`` +
``training_info.json`` and the model card ``README.md`` with the results in its model-index.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import AutoConfig

from hf_personsearch import (
    AlignPSConfig,
    AlignPSModel,
    PersonSearchConfig,
    PersonSearchImageProcessor,
    PersonSearchModel,
)
from hf_personsearch.data.augmentation import ShortestSideResize, SingleViewAugmentation
from hf_personsearch.data.collate import collate_search
from hf_personsearch.data.formats import get_spec
from hf_personsearch.data.sampler import HybridSampler
from hf_personsearch.data.search_dataset import (
    SearchTrainingDataset,
    TargetIdentityMap,
    load_target_records,
    select_fraction,
    target_dataset,
)
from hf_personsearch.data.synthetic import is_synthetic
from hf_personsearch.evaluation.model_inference import evaluate_on_target, resolve_gallery_size
from hf_personsearch.hub import is_timm_tag, load_backbone_weights, load_checkpoint_backbone, summarise_keys
from hf_personsearch.hub.export import timm_weights_offline_problem
from hf_personsearch.training.checkpoints import prepare_run
from hf_personsearch.training.config import (
    FINETUNE_DEFAULTS,
    INIT_CHOICES,
    MODEL_TYPES,
    ConfigError,
    build_argument_parser,
    check_output_dir,
    check_size_divisor,
    check_training_section,
    config_from_args,
    exit_status,
    save_resolved_config,
)
from hf_personsearch.training.loop import (
    LoopSettings,
    SingleSourceDataset,
    TrainingData,
    build_accelerator,
    check_processes_agree,
    hardware_description,
    oim_table_facts,
    run_training,
)
from hf_personsearch.training.optim import build_optimizer, build_scheduler
from hf_personsearch.training.transfer import match_fresh_weight_norms

logger = logging.getLogger("run_finetune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_argument_parser(__doc__).parse_intermixed_args(argv)


def check_config(config: dict) -> None:
    """Every problem that can be found without computing: raise :class:`ConfigError` naming the key."""
    data, init, training = config["data"], config["init"], config["training"]
    try:
        target_dataset(data["dataset"])
        resolve_gallery_size(data["dataset"], config["evaluation"]["gallery_size"])
        select_fraction(1, float(data["train_fraction"]), 0)
    except ValueError as error:
        raise ConfigError(f"data/evaluation: {error}") from error
    check_size_divisor(data["size_divisor"], data["train_min_sizes"] or [data["min_size"]])
    if data["train_min_sizes"] is not None or data["train_max_size"] is not None:
        try:
            ShortestSideResize(
                data["train_min_sizes"] or [data["min_size"]], data["train_max_size"] or data["max_size"]
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(
                "data.train_min_sizes / data.train_max_size: a list of shortest sides and one longest side (or one "
                f"per shortest side), got {data['train_min_sizes']!r} / {data['train_max_size']!r} ({error})"
            ) from error
    if data["data_dir"] is not None and not Path(data["data_dir"]).is_dir():
        raise ConfigError(f"data.data_dir {data['data_dir']!r} is not a folder (the raw {data['dataset']} dataset)")
    if data["data_dir"] is None:
        try:
            get_spec(data["dataset"]).check_synthetic_sizes(data["synthetic_sizes"] or {})
        except ValueError as error:
            raise ConfigError(f"data.synthetic_sizes (no data_dir: synthetic {data['dataset']}): {error}") from error
    model_type = config["model"].get("type", MODEL_TYPES[0])
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model.type must be one of {MODEL_TYPES}, got {model_type!r}")
    if init["from"] not in INIT_CHOICES:
        raise ConfigError(f"init.from must be one of {INIT_CHOICES}, got {init['from']!r}")
    if not isinstance(init["match_fresh_weight_norms"], bool):
        raise ConfigError(
            f"init.match_fresh_weight_norms must be true or false, got {init['match_fresh_weight_norms']!r}"
        )
    if init["from"] != "scratch":
        if not init["path"]:
            raise ConfigError(
                f"init.from={init['from']!r} needs init.path (a weights file, checkpoint folder or hub id)"
            )
        path = Path(init["path"])
        if init["from"] == "imagenet" and not (path.is_file() or is_timm_tag(init["path"])):
            raise ConfigError(
                f"init.path {init['path']!r} is neither a file nor a timm tag such as resnet50.tv_in1k "
                "(ImageNet backbone weights)"
            )
        problem = timm_weights_offline_problem(init["path"]) if init["from"] == "imagenet" else None
        if problem is not None:
            raise ConfigError(f"init.path: {problem}")
        looks_local = path.is_absolute() or init["path"].startswith(".") or path.exists()
        if init["from"] != "imagenet" and looks_local and not (path / "config.json").is_file():
            raise ConfigError(f"init.path {init['path']!r} is not a saved model folder (no config.json there)")
        if init["from"] == "pretrained" and looks_local:
            saved_type = json.loads((path / "config.json").read_text()).get("model_type")
            if model_type == AlignPSConfig.model_type and saved_type != AlignPSConfig.model_type:
                raise ConfigError(
                    f"init.from=pretrained with model.type=align_ps needs a saved AlignPS model; {init['path']!r} is a "
                    f"{saved_type!r} model, which shares only its backbone with AlignPS: use init.from=pretrained_backbone"
                )
    if not isinstance(training["num_epochs"], int) or training["num_epochs"] < 1:
        raise ConfigError(f"training.num_epochs must be a positive integer, got {training['num_epochs']!r}")
    check_training_section(config)
    if training["max_steps"] is not None and (not isinstance(training["max_steps"], int) or training["max_steps"] < 1):
        raise ConfigError(f"training.max_steps must be a positive integer or null, got {training['max_steps']!r}")
    if "num_person_ids" in config["model"]:
        raise ConfigError("model.num_person_ids is set from the training split's identities; remove it")
    check_output_dir(training["output_dir"])


def prepare_data_dir(config: dict) -> str:
    """The raw dataset folder: ``data.data_dir``, or a synthetic one written under the output folder."""
    data = config["data"]
    if data["data_dir"] is not None:
        return str(data["data_dir"])
    from hf_personsearch.data.synthetic import generate

    folder = Path(config["training"]["output_dir"]) / "data" / data["dataset"]
    if not folder.is_dir() or not any(folder.iterdir()):
        generate(data["dataset"], folder, seed=int(config["training"]["seed"]), **data["synthetic_sizes"])
    return str(folder)


def build_model(config: dict, num_identities: int) -> PersonSearchModel | AlignPSModel:
    """The model of ``model.type`` and ``init.from`` with an OIM table of ``num_identities`` rows (paper Fig. 5
    initialisations); a pre-trained NAE init gets a fresh model's weight norms (``init.match_fresh_weight_norms``)."""
    init, overrides = config["init"], dict(config["model"])
    if overrides.pop("type", MODEL_TYPES[0]) == AlignPSConfig.model_type:
        return build_align_ps(init, overrides, num_identities)
    if init["from"] in ("scratch", "imagenet"):
        model = PersonSearchModel(PersonSearchConfig(num_person_ids=num_identities, **overrides))
        if init["from"] == "imagenet":
            report = load_backbone_weights(model, str(init["path"]))
            logger.info(
                "backbone starts from %s (%d tensors; ignored: %s)",
                report.source,
                len(report.loaded_keys),
                report.ignored_keys,
            )
        return model
    queue_size = overrides.pop("oim_queue_size", None)
    model = PersonSearchModel.from_pretrained(
        init["path"],
        backbone_only=init["from"] == "pretrained_backbone",
        num_person_ids=num_identities,
        oim_queue_size=queue_size,
        dtype=torch.float32,
        **overrides,
    )
    if matches_fresh_norms(config):
        factors = match_fresh_weight_norms(model, seed=int(config["training"]["seed"]))
        logger.info(
            "init.match_fresh_weight_norms: %d normalised layers rescaled to a fresh model's weight norms (x%.2f to "
            "x%.2f; the function is unchanged)",
            len(factors),
            min(factors.values(), default=1.0),
            max(factors.values(), default=1.0),
        )
    return model


def matches_fresh_norms(config: dict) -> bool:
    """Whether the init's normalised layers are rescaled to a fresh model's weight norms: a pre-trained NAE init
    with ``init.match_fresh_weight_norms``."""
    init = config["init"]
    is_nae = config["model"].get("type", MODEL_TYPES[0]) == MODEL_TYPES[0]
    return is_nae and init["from"] in ("pretrained", "pretrained_backbone") and init["match_fresh_weight_norms"]


def build_align_ps(init: dict, overrides: dict, num_identities: int) -> AlignPSModel:
    """AlignPS / ROI-AlignPS from ``init.from``: random, an ImageNet backbone, the backbone of a saved person search
    model or pre-training checkpoint (the part the families share), or a whole saved AlignPS model."""
    if init["from"] == "pretrained":
        saved_type = AutoConfig.from_pretrained(init["path"]).model_type
        if saved_type != AlignPSConfig.model_type:
            raise ValueError(
                f"init.path {init['path']!r} is a {saved_type!r} model, not AlignPS: the families share only the "
                "backbone, use init.from=pretrained_backbone"
            )
        queue_size = overrides.pop("oim_queue_size", None)
        model = AlignPSModel.from_pretrained(init["path"], dtype=torch.float32, **overrides)
        model.resize_oim(num_identities, queue_size)
        return model
    model = AlignPSModel(AlignPSConfig(num_person_ids=num_identities, **overrides))
    if init["from"] == "imagenet":
        report = load_backbone_weights(model, str(init["path"]))
    elif init["from"] == "pretrained_backbone":
        report = load_checkpoint_backbone(model, str(init["path"]))
    else:
        return model
    logger.info(
        "AlignPS backbone starts from %s: took %d tensors; left %s",
        report.source,
        len(report.loaded_keys),
        summarise_keys(report.ignored_keys) or "nothing",
    )
    return model


def build_processor(config: dict) -> PersonSearchImageProcessor:
    """The run's one image processor: its resize rule and normalisation serve training (the augmentation),
    evaluation and the saved model folder alike."""
    return PersonSearchImageProcessor(min_size=config["data"]["min_size"], max_size=config["data"]["max_size"])


def evaluate(model, config: dict, data_dir: str, accelerator) -> dict | None:
    """Evaluation on the dataset's gallery split with the configured protocol (JSON-ready summary).

    Every process must call it: the gallery and query inference is sharded over the processes (a long
    evaluation on one process while the others wait at a barrier can outlast NCCL's collective timeout);
    the main process gets the summary, the others ``None``.
    """
    evaluation, data = config["evaluation"], config["data"]
    summary, _ = evaluate_on_target(
        model,
        build_processor(config),
        data["dataset"],
        data_dir,
        gallery_size=evaluation["gallery_size"],
        cross_camera=bool(evaluation["cross_camera"]),
        det_thresh=float(evaluation["det_thresh"]),
        batch_size=int(evaluation["batch_size"]),
        progress=accelerator.is_local_main_process,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
    )
    if summary is None:
        return None
    summary.pop("search")
    summary.pop("detection")
    return summary


def save_model(model, config: dict, output_dir: Path) -> None:
    """The trained model (safetensors) and its image processor."""
    model.save_pretrained(output_dir)
    build_processor(config).save_pretrained(output_dir)


def write_results(config: dict, output_dir: Path, final: dict, history: list, info: dict) -> None:
    """Results, training info and the model card (its model-index holds ``final``), beside the saved model."""
    (output_dir / "results.json").write_text(json.dumps({"final": final, "history": history}, indent=2))
    card_result = {key: value for key, value in final.items() if key not in ("epoch", "step")}
    (output_dir / "eval_results.json").write_text(json.dumps([card_result], indent=2))
    (output_dir / "training_info.json").write_text(json.dumps({"kind": "finetuned", **info}, indent=2))
    try:
        from hf_personsearch.hub.model_card import refresh_model_card
    except ImportError:
        logger.warning("hf_personsearch.hub.model_card is not available: no model card written")
        return
    refresh_model_card(output_dir, kind="finetuned", repo_id=config["training"]["hub_model_id"])


def main(argv: list[str] | None = None) -> int:
    """Run fine-tuning, save the model, evaluate it; the exit status (2: configuration error)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    prepared = prepare_run(
        "run_finetune", lambda: config_from_args(args, FINETUNE_DEFAULTS), check_config, args.resume_from_checkpoint
    )
    if prepared is None:
        return 2
    config, output_dir, resume_path = prepared
    data, training = config["data"], config["training"]

    accelerator = build_accelerator(training, output_dir)
    set_seed(int(training["seed"]), device_specific=True)
    with accelerator.main_process_first():
        data_dir = prepare_data_dir(config)
    if accelerator.is_main_process:
        save_resolved_config(config, output_dir)

    target = target_dataset(data["dataset"])
    all_records = load_target_records(data["dataset"], data_dir, target.train_split, strict=bool(data["strict"]))
    identity_map = TargetIdentityMap.from_records(all_records)
    if identity_map.num_identities == 0:
        print(
            f"run_finetune: configuration error: {data['dataset']} {target.train_split} split in {data_dir} has "
            "no labeled person",
            file=sys.stderr,
        )
        return 2
    chosen = select_fraction(len(all_records), float(data["train_fraction"]), int(data["fraction_seed"]))
    records = [all_records[i] for i in chosen]
    dataset = SearchTrainingDataset(
        records,
        identity_map=identity_map,
        augmentation=SingleViewAugmentation(
            build_processor(config),
            flip_p=data["flip_p"],
            min_sizes=data["train_min_sizes"],
            max_size=data["train_max_size"],
        ),
        strict=bool(data["strict"]),
    )
    # One source: HybridSampler is a seeded epoch permutation, resumable from the samples drawn.
    sampler = HybridSampler(
        [len(dataset)],
        seed=int(training["seed"]),
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
    )
    model = build_model(config, identity_map.num_identities)
    model.train()
    optimizer = build_optimizer(model, config["optimizer"])

    images_per_step = training["batch_size"] * accelerator.num_processes * training["gradient_accumulation_steps"]
    steps_per_epoch = max(1, math.ceil(len(dataset) / images_per_step))
    max_steps = steps_per_epoch * training["num_epochs"]
    if training["max_steps"] is not None:
        max_steps = min(max_steps, training["max_steps"])
    schedule = dict(config["schedule"])
    if schedule["warmup_steps"] is None:
        schedule["warmup_steps"] = min(steps_per_epoch, max_steps)
    scheduler = build_scheduler(optimizer, schedule, max_steps)
    if accelerator.is_main_process:
        logger.info(
            "fine-tuning on %s: %d/%d training images, %d identities, init %s, %d steps",
            target.display_name,
            len(records),
            len(all_records),
            identity_map.num_identities,
            config["init"]["from"],
            max_steps,
        )
        identity_map.save(output_dir / "identity_map.json")

    # The history of periodic evaluations is saved in every checkpoint, so a resumed run keeps it.
    script_state: dict = {"history": []}
    evaluation_steps = steps_per_epoch * int(config["evaluation"]["every_epochs"])

    def evaluate_periodically(step: int) -> None:
        if not evaluation_steps or step % evaluation_steps or step >= max_steps:
            return
        result = evaluate(accelerator.unwrap_model(model), config, data_dir, accelerator)
        if result is not None:
            script_state["history"].append({"epoch": step / steps_per_epoch, "step": step, **result})
            logger.info("step %d: mAP %.4f top-1 %.4f", step, result["mAP"], result.get("top1", 0.0))

    started = time.time()
    outcome = run_training(
        accelerator,
        model,
        optimizer,
        scheduler,
        # Each batch padded to multiples of data.size_divisor (fewer distinct shapes for cuDNN on a GPU).
        TrainingData(
            SingleSourceDataset(dataset),
            sampler,
            functools.partial(collate_search, size_divisor=int(config["data"]["size_divisor"])),
        ),
        LoopSettings.from_config(config, max_steps),
        output_dir,
        name="finetune",
        resume_from=resume_path,
        stop_after_steps=args.stop_after_steps,
        tracker_config=config,
        script_state=script_state,
        after_step=evaluate_periodically,
        agreed_facts={
            f"{data['dataset']} {target.train_split} records": len(all_records),
            "training records (after data.train_fraction)": len(records),
            "identities": identity_map.num_identities,
            "identity map sha256": hashlib.sha256(json.dumps(identity_map.person_ids).encode()).hexdigest(),
        },
    )
    unwrapped = accelerator.unwrap_model(outcome.model)
    check_processes_agree(
        accelerator, oim_table_facts(unwrapped.search_head.oim), f"the OIM tables after step {outcome.step}"
    )
    if not outcome.finished:
        accelerator.end_training()
        return 0

    if accelerator.is_main_process:
        # Saved before the final evaluation: a failing evaluation (e.g. an unreadable test image) must not
        # lose the trained model.
        save_model(unwrapped, config, output_dir)
    result = evaluate(unwrapped, config, data_dir, accelerator)
    if result is not None:
        final = {"epoch": round(outcome.step / steps_per_epoch, 2), "step": outcome.step, **result}
        info = {
            "dataset": target.display_name,
            "data": data_dir if data["data_dir"] else f"synthetic {data['dataset']} (generated)",
            "synthetic_data": is_synthetic(data_dir),
            "initialisation": config["init"]["from"]
            + (f" ({config['init']['path']})" if config["init"]["path"] else "")
            + (", normalised layers at a fresh model's weight norms" if matches_fresh_norms(config) else ""),
            "training images": f"{len(records)} of {len(all_records)} (fraction {data['train_fraction']})",
            "identities": identity_map.num_identities,
            "steps": outcome.step,
            "epochs": final["epoch"],
            "batch size": images_per_step,
            "skipped non-finite steps": outcome.guard.skipped_steps,
            "skipped unreadable images": dataset.skips.total,
            "hardware": hardware_description(accelerator),
            "training time of this session (s)": round(time.time() - started, 1),
        }
        write_results(config, output_dir, final, [*script_state["history"], final], info)
        print(
            f"{target.display_name}: mAP {100 * final['mAP']:.2f}  top-1 {100 * final.get('top1', 0):.2f}  "
            f"-> {output_dir}"
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "run_finetune"))
