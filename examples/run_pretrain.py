"""Hybrid pre-training of a person search model (the paper's Fig. 3) with Accelerate.

    accelerate launch examples/run_pretrain.py --config examples/configs/pretrain_demo_cpu.yaml
    accelerate launch --multi_gpu --num_processes 8 examples/run_pretrain.py --config my_pretrain_r50.yaml
        # (a copy of examples/configs/pretrain_r50.yaml with the data_dir of each dataset filled in)
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/run_pretrain.py --config ...   # 2 CPU processes

Every process reads the data itself; before the first step they must agree on the unified identity space
and the sampler's source sizes (a node-local copy or a stale cache with one image fewer would shift the OIM
rows), or the run stops on every process with an error naming the source and each process's counts.

With no data folder in the config the five sub-task datasets are generated synthetically (in their real raw
formats, under ``<output_dir>/synthetic_data``) and read back through the real parsers, so the script runs
anywhere. Outputs in ``training.output_dir``: ``resolved_config.yaml``, ``identity_space.json``,
``checkpoint-<step>/`` (atomic, last K kept), ``loss_log.jsonl`` (every step's loss terms), ``logs/``
(tensorboard), ``ranks/rank<r>.json`` (per-process record: samples drawn, OIM table checksums, which
must be equal on every process: the run fails otherwise),
``pretrain_model/`` and ``person_search_model/`` (the downstream model, image processor and model card;
what ``--push_to_hub`` uploads).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys

import torch

from hf_personsearch.data.augmentation import TwoViewAugmentation
from hf_personsearch.data.collate import HybridPretrainDataset, collate_pretrain
from hf_personsearch.data.identity import IdentitySpace
from hf_personsearch.data.sampler import HybridSampler
from hf_personsearch.data.synthetic import is_synthetic
from hf_personsearch.hub import load_backbone_weights
from hf_personsearch.modeling_person_search_pretrain import PersonSearchPretrainModel
from hf_personsearch.training.checkpoints import prepare_run
from hf_personsearch.training.config import (
    PRETRAIN_DEFAULTS,
    build_argument_parser,
    config_from_args,
    exit_status,
    save_resolved_config,
)
from hf_personsearch.training.hub import push_command, push_folder_to_hub
from hf_personsearch.training.loop import (
    LoopSettings,
    TrainingData,
    build_accelerator,
    check_processes_agree,
    hardware_description,
    oim_table_facts,
    run_training,
)
from hf_personsearch.training.optim import build_optimizer, build_scheduler
from hf_personsearch.training.pretraining import (
    export_pretrained,
    generate_synthetic_sources,
    load_sources,
    photometric_options,
    uses_synthetic_data,
    validate_pretrain_config,
)

logger = logging.getLogger("run_pretrain")

MAX_RECORDED_SAMPLE_KEYS = 10000
"""Sample keys kept in ranks/rank<r>.json: enough to compare what ranks drew, small for long runs."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_argument_parser(__doc__)
    parser.add_argument("--push_to_hub", action="store_true", help="= hub.push_to_hub")
    parser.add_argument("--hub_model_id", type=str, default=None, help="= hub.hub_model_id ('org/name')")
    return parser.parse_intermixed_args(argv)


def resolve_config(args: argparse.Namespace) -> dict:
    extra = [f"hub.hub_model_id={json.dumps(args.hub_model_id)}"] if args.hub_model_id is not None else []
    if args.push_to_hub:
        extra.append("hub.push_to_hub=true")
    return config_from_args(args, PRETRAIN_DEFAULTS, extra)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    prepared = prepare_run(
        "run_pretrain", lambda: resolve_config(args), validate_pretrain_config, args.resume_from_checkpoint
    )
    if prepared is None:
        return 2
    config, output_dir, resume_path = prepared
    training = config["training"]

    from accelerate.utils import set_seed

    accelerator = build_accelerator(training, output_dir)
    set_seed(int(training["seed"]), device_specific=True)
    if accelerator.is_main_process:
        save_resolved_config(config, output_dir)

    # ---- data: raw folders (given or synthetic) -> parsers -> unified records -> hybrid dataset
    with accelerator.main_process_first():
        sources = config["data"]["sources"]
        cache_dir = config["data"]["cache_dir"]
        if uses_synthetic_data(config):
            logger.info("no data_dir given: generating the synthetic sub-task datasets in %s", output_dir)
            sources = generate_synthetic_sources(config, output_dir)
            cache_dir = cache_dir or str(output_dir / "synthetic_data" / ".cache")
        loaded = load_sources(sources, cache_dir)
    identity_space = IdentitySpace.from_person_ids([(name, task, data["person_ids"]) for name, task, data in loaded])
    if accelerator.is_main_process:
        (output_dir / "identity_space.json").write_text(json.dumps(identity_space.to_dict()))
    data_config = config["data"]
    augmentation_sizes = {}
    if data_config["min_sizes"]:
        augmentation_sizes["min_sizes"] = [int(s) for s in data_config["min_sizes"]]
    if data_config["max_size"]:
        augmentation_sizes["max_size"] = int(data_config["max_size"])
    # The photometric augmentation runs on the batch in the training step (on the GPU, next to free), and so does
    # the painting of the re-ID canvases with data.canvas_in_step; their parameters are drawn in the data workers
    # with the rest of the sample's seeded randomness.
    augmentation = TwoViewAugmentation(
        **augmentation_sizes, **photometric_options(data_config), photometric_in_step=True
    )
    dataset = HybridPretrainDataset(
        loaded,
        identity_space=identity_space,
        augmentation=augmentation,
        reid_operation=data_config["reid_operation"],
        canvas_size=tuple(data_config["canvas_size"]),
        crops_per_canvas=int(data_config["crops_per_canvas"]),
        canvas_in_step=data_config["canvas_in_step"],
    )
    # Each view's batch padded to multiples of data.size_divisor (fewer distinct shapes for cuDNN on a GPU).
    collate = functools.partial(collate_pretrain, size_divisor=int(data_config["size_divisor"]))
    weights = [s.get("weight") for s in config["data"]["sources"]]
    sampler = HybridSampler(
        dataset.source_sizes,
        None if all(w is None for w in weights) else weights,
        seed=int(training["seed"]),
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
    )

    # ---- model, optimiser, schedule
    from hf_personsearch.training.pretraining import build_pretrain_model_config

    model_config = build_pretrain_model_config(config["model"], identity_space)
    if config["model_init"]["pretrained_model"]:
        # Continuation of an earlier pre-training under this config's switches (PRETRAIN_DEFAULTS model_init).
        model = PersonSearchPretrainModel.from_pretrained(
            config["model_init"]["pretrained_model"], config=model_config, dtype=torch.float32
        )
        logger.info("model starts from %s", config["model_init"]["pretrained_model"])
    else:
        model = PersonSearchPretrainModel(model_config)
    if config["model_init"]["backbone_weights"]:
        report = load_backbone_weights(model, config["model_init"]["backbone_weights"])
        logger.info(
            "backbone starts from %s (%d tensors; ignored: %s)",
            report.source,
            len(report.loaded_keys),
            report.ignored_keys,
        )
    model.train()
    max_steps = int(training["max_steps"])
    optimizer = build_optimizer(model, config["optimizer"])
    scheduler = build_scheduler(optimizer, config["schedule"], max_steps)

    sample_keys: list = []

    def record_sample_keys(micro_batches: list[dict]) -> None:
        for batch in micro_batches:
            if len(sample_keys) < MAX_RECORDED_SAMPLE_KEYS:
                sample_keys.extend(batch["sample_keys"])

    outcome = run_training(
        accelerator,
        model,
        optimizer,
        scheduler,
        TrainingData(dataset, sampler, collate, on_device=augmentation.in_step),
        LoopSettings.from_config(config, max_steps),
        output_dir,
        name="pretrain",
        resume_from=resume_path,
        stop_after_steps=args.stop_after_steps,
        tracker_config=config,
        before_step=record_sample_keys,
        agreed_facts={
            **identity_space.agreement_facts(),
            **{f"{name}: sampler size": size for (name, _, _), size in zip(loaded, dataset.source_sizes)},
        },
    )
    model, step, guard = outcome.model, outcome.step, outcome.guard

    # ---- per-process record (what this rank drew, its copy of the OIM tables), then the tables compared
    oim_facts = oim_table_facts(accelerator.unwrap_model(model).person_search.search_head.oim)
    ranks_dir = output_dir / "ranks"
    ranks_dir.mkdir(exist_ok=True)
    (ranks_dir / f"rank{accelerator.process_index}.json").write_text(
        json.dumps(
            {
                "rank": accelerator.process_index,
                "num_processes": accelerator.num_processes,
                "steps": step,
                "sample_keys": [list(k) if isinstance(k, tuple) else k for k in sample_keys],
                "oim_lut_sha256": oim_facts["OIM lookup table sha256"],
                "oim_queue_sha256": oim_facts["OIM queue sha256"],
                "skipped_steps": guard.skipped_steps,
                "skipped_by_source": dict(guard.by_source),
            }
        )
    )
    check_processes_agree(accelerator, oim_facts, f"the OIM tables after step {step}")
    if not outcome.finished:
        accelerator.end_training()
        return 0

    status = 0  # 1: trained and saved, but the push to the Hub failed
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        model_config = unwrapped.config
        training_info = {
            "data": ", ".join(
                f"{s['name']} ({'synthetic' if uses_synthetic_data(config) else s['data_dir']}, {s.get('split', 'train')})"
                for s in config["data"]["sources"]
            ),
            "synthetic_data": all(
                source.get("data_dir") is None or is_synthetic(source["data_dir"])
                for source in config["data"]["sources"]
            ),
            "identities in the pre-training OIM table": identity_space.num_identities,
            "steps": max_steps,
            "continued from": config["model_init"]["pretrained_model"] or "no (a fresh model)",
            "batch size (images per process x processes x accumulation)": (
                f"{training['batch_size']} x {accelerator.num_processes} x {training['gradient_accumulation_steps']}"
            ),
            "optimizer": f"{config['optimizer']['name']} lr {config['optimizer']['lr']}",
            "schedule": f"{config['schedule']['name']}, warm-up {config['schedule']['warmup_steps']} steps",
            "eta (contrastive_loss_weight)": model_config.contrastive_loss_weight,
            "lambda (adversarial_loss_weight)": model_config.adversarial_loss_weight,
            "hardware": hardware_description(accelerator),
            "skipped non-finite steps": guard.skipped_steps,
        }
        folders = export_pretrained(
            unwrapped, output_dir, config, training_info, repo_id=config["hub"]["hub_model_id"]
        )
        logger.info("saved %s", ", ".join(str(p) for p in folders.values()))
        hub = config["hub"]
        if hub["push_to_hub"]:
            folder, repo_id, private = folders["person_search_model"], hub["hub_model_id"], bool(hub["private"])
            try:
                logger.info("pushed to %s", push_folder_to_hub(folder, repo_id, private=private))
            except Exception as error:  # the run's outputs are saved: say how to push them, do not lose them
                logger.error(
                    "the push to %s failed (%s: %s); the model is saved in %s: push it with\n    %s",
                    repo_id,
                    type(error).__name__,
                    error,
                    folder,
                    push_command(folder, repo_id, private),
                )
                status = 1
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return status


if __name__ == "__main__":
    sys.exit(exit_status(main, "run_pretrain"))
