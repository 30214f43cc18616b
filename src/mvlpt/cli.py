"""The ``mvlpt`` command line: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__

logger = logging.getLogger("mvlpt")

# Shortcut flags and the configuration keys they set; LIST_SHORTCUTS may be repeated.
LIST_SHORTCUTS = {"task"}
SHORTCUTS = {
    "task": (
        "data.tasks",
        "task: a built-in or prepared benchmark name (see `mvlpt data list`), an image-folder path or a CSV manifest; "
        "repeat the option for several tasks (train: one prompt trained on all of them)",
    ),
    "method": ("prompt.method", "prompt method: coop, vpt or upt"),
    "shots": ("data.shots", "few-shot images per class K, split into training and validation as docs/data.md says"),
    "seed": ("seed", "seed of the few-shot choice and of training"),
    "epochs": ("train.epochs", "training epochs"),
    "output_dir": ("output_dir", "run directory for the config, few-shot split, metrics, prompt and results"),
    "model": (
        "backbone.model",
        "open_clip model name, hf-hub:/local-dir: id, JSON model configuration path, or a bundled mvlpt:NAME",
    ),
    "pretrained": (
        "backbone.pretrained",
        "open_clip pretrained tag or checkpoint file; 'offline' for the CLIP of `mvlpt pretrain` "
        "(with mvlpt:mini-vit-32); 'null' for random weights",
    ),
    "device": ("train.device", "auto, cpu, cuda or cuda:N"),
    "precision": ("train.precision", "auto (bf16 autocast where supported), bf16 or fp32"),
    "data_root": ("data.root", "folder of the built-in tasks' data (default $MVLPT_DATA_ROOT or ~/.cache/mvlpt/data)"),
    "init": ("init", "prompt checkpoint directory to initialise the prompt from"),
}


def _config_epilog() -> str:
    from .config import RunConfig, fields_help

    lines = ["configuration keys (set in the YAML file or as key=value):"]
    for name, type_name, default, help_text in fields_help(RunConfig):
        lines.append(f"  {name} ({type_name}, default {default}): {help_text}")
    return "\n".join(lines)


def _add_run_options(parser: argparse.ArgumentParser, names: list[str]) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML run configuration; flags and key=value override it")
    from .config import RunConfig, fields_help

    defaults = {field_name: default for field_name, _, default, _ in fields_help(RunConfig)}
    for name in names:
        key, help_text = SHORTCUTS[name]
        action = "append" if name in LIST_SHORTCUTS else "store"
        metavar = name.upper().replace("_", "-")
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar=metavar,
            action=action,
            help=f"{help_text} (sets {key}; default {defaults.get(key, 'none')})",
        )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="configuration overrides such as train.lr=0.01 or prompt.vpt.deep=false",
    )


def _build_config(args: argparse.Namespace, names: list[str], base: dict | None = None):
    from .config import config_from_dict, load_config

    overrides = []
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(value, list):
            # JSON is valid YAML, and quoting keeps paths with spaces or colons intact.
            value = json.dumps(value)
        overrides.append(f"{SHORTCUTS[name][0]}={value}")
    overrides.extend(args.overrides)

    if base is not None and args.config is None:
        config = config_from_dict(base)
        if overrides:
            from .config import apply_overrides

            config = apply_overrides(config, overrides)
        return config
    return load_config(args.config, overrides)


def _print_results(results: dict, split: str = "test") -> None:
    """Print one line per task with its metric, then the average over tasks when there are several."""
    for task, entry in results["per_task"].items():
        metric = entry["metric"]
        values = entry[split]
        others = ", ".join(f"{name} {value:.2f}" for name, value in values.items() if name != metric)
        print(f"{task} {results['method']} {split}: {metric} {values[metric]:.2f} ({others})")
    if len(results["per_task"]) > 1:
        print(f"average over {len(results['per_task'])} tasks {results['method']} {split}: {results['average'][split]:.2f}")


# Commands -----------------------------------------------------------------------------------

TRAIN_FLAGS = list(SHORTCUTS)
EVAL_FLAGS = ["task", "model", "pretrained", "device", "precision", "data_root"]
ZERO_SHOT_FLAGS = ["task", "model", "pretrained", "device", "precision", "data_root", "output_dir"]


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    config = _build_config(args, TRAIN_FLAGS)
    results = train(config, overwrite=args.overwrite)
    _print_results(results)
    print(f"run directory: {config.output_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoints import load_prompt_checkpoint
    from .training import evaluate_checkpoint

    checkpoint = load_prompt_checkpoint(args.checkpoint)
    base = _config_base_for_checkpoint(Path(args.checkpoint), checkpoint.metadata)
    config = _build_config(args, EVAL_FLAGS, base=base)
    results = evaluate_checkpoint(args.checkpoint, config, split_name=args.split, checkpoint=checkpoint)
    _print_results(results, args.split)
    return 0


def _config_base_for_checkpoint(path: Path, metadata: dict) -> dict:
    """Rebuild the configuration a checkpoint was trained with: its run's config.yaml, else its metadata."""
    from .config import load_config

    directory = path if path.is_dir() else path.parent
    run_config = directory.parent / "config.yaml"
    if run_config.exists():
        return load_config(run_config).to_dict()

    method = metadata["method"]
    return {
        "backbone": {"model": metadata["backbone"]["model"], "pretrained": metadata["backbone"].get("pretrained")},
        "prompt": {"method": method, method: dict(metadata.get("prompt_config", {}))},
        "data": {"tasks": list(metadata.get("tasks", []))},
    }


def cmd_zero_shot(args: argparse.Namespace) -> int:
    from .rundir import write_json_atomic
    from .runtime import RunError
    from .training import zero_shot

    config = _build_config(args, ZERO_SHOT_FLAGS)
    config.validate_for("zero-shot")
    results_path = Path(config.output_dir) / "results.json" if args.output_dir else None
    if results_path is not None and (results_path.parent / "config.yaml").exists():
        raise RunError(
            f"{results_path.parent} contains a training run; write zero-shot results to another --output-dir"
        )
    if results_path is not None and results_path.exists() and not args.overwrite:
        raise RunError(
            f"{results_path} already exists; pass --overwrite to replace it, or choose another --output-dir"
        )

    results = zero_shot(config, split_name=args.split)
    _print_results(results, args.split)
    if results_path is not None:
        write_json_atomic(results_path, results)
        print(f"results written to {results_path}")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from .summary import collect_results, results_table

    rows = collect_results([Path(path) for path in args.run_dirs])
    if not rows:
        print("no results.json found under " + ", ".join(args.run_dirs), file=sys.stderr)
        return 1
    print(results_table(rows))
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from .averaging import average_checkpoints

    output = average_checkpoints(args.checkpoints, args.output)
    print(f"averaged {len(args.checkpoints)} prompt checkpoints into {output}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from .pipeline import format_plan, load_pipeline_config, plan_pipeline, run_pipeline

    config = load_pipeline_config(args.config, args.overrides)
    if args.dry_run:
        print(format_plan(plan_pipeline(config)))
        return 0
    result = run_pipeline(config)
    print(result.markdown, end="")
    print(f"tables written to {result.markdown_path} and {result.csv_path}")
    return 0


def _pipeline_epilog() -> str:
    from .config import fields_help
    from .pipeline import PipelineConfig

    lines = ["pipeline keys (set in the YAML file or as key=value; see docs/pipeline.md):"]
    for name, type_name, default, help_text in fields_help(PipelineConfig):
        lines.append(f"  {name} ({type_name}, default {default}): {help_text}")
    return "\n".join(lines)


def cmd_study_transfer(args: argparse.Namespace) -> int:
    from .study.config import load_transfer_config
    from .study.jobs import check_existing_runs
    from .study.transfer import format_plan, plan_study, read_failures, run_transfer_study

    config = load_transfer_config(args.config, args.overrides)
    if args.dry_run:
        jobs = plan_study(config)
        print(format_plan(jobs, read_failures(config.output_dir)))
        # The real run would stop here, so the dry run fails the same way.
        check_existing_runs(jobs)
        return 0
    result = run_transfer_study(config, analyse_only=args.analyse_only)
    print(result.report.summary, end="")
    print(f"analysis written to {result.report.directory}")
    if not result.failures:
        return 0
    print(f"mvlpt: {len(result.failures)} of {len(result.outcomes)} runs did not finish:", file=sys.stderr)
    for outcome in result.failures:
        where = f" (log: {outcome.log})" if outcome.log else ""
        print(f"  {outcome.job_id}: {outcome.error}{where}", file=sys.stderr)
    print(
        f"details are in {result.failures_path}; rerun the same command to retry only these runs "
        "(finished runs are skipped)",
        file=sys.stderr,
    )
    return 1


def _transfer_epilog() -> str:
    from .config import fields_help
    from .study.config import TransferConfig

    lines = ["transfer study keys (set in the YAML file or as key=value; see docs/transfer.md):"]
    for name, type_name, default, help_text in fields_help(TransferConfig):
        lines.append(f"  {name} ({type_name}, default {default}): {help_text}")
    return "\n".join(lines)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .builtin import BUILTIN_TASKS, load_builtin
    from .pretrain import PretrainConfig, format_report, pretrain, zero_shot_report
    from .rundir import write_json_atomic
    from .tasks import TaskError

    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        warmup_steps=min(args.warmup_steps, args.steps - 1),
        seed=args.seed,
        output=args.output,
        tasks=args.task or [],
    )
    folder = pretrain(config)
    print(f"pretrained model written to {folder}")

    tasks = []
    for name in BUILTIN_TASKS:
        try:
            tasks.append(load_builtin(name))
        except TaskError as error:
            print(f"skipping zero-shot evaluation of {name}: {error}", file=sys.stderr)
    report = zero_shot_report(folder, tasks)
    write_json_atomic(folder / "zero_shot.json", report)
    print(format_report(report))
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from .builtin import BUILTIN_TASKS, data_root, load_builtin
    from .tasks import TaskError

    root = Path(args.data_root) if args.data_root else data_root()
    print(f"data root: {root}")
    for name, info in BUILTIN_TASKS.items():
        print(f"{name}: {info.description} (source: {info.source})")
        try:
            task = load_builtin(name, root)
        except TaskError:
            print(f"  not installed; install with: {info.install_command(root)}")
            continue
        sizes = ", ".join(f"{split} {len(samples)}" for split, samples in task.splits.items())
        print(f"  installed: {task.num_classes} classes ({', '.join(task.classnames)}); {sizes} images")

    _print_benchmark_tasks(root)
    return 0


def _print_benchmark_tasks(root: Path) -> None:
    """Print the ELEVATER and CoOp catalog with each task's prepared state, read from its marker without loading images."""
    from .datasets.catalog import all_specs
    from .datasets.prepare import prepare_command, read_marker
    from .tasks import TaskError

    print("benchmark tasks (docs/elevater.md):")
    try:
        specs = all_specs()
    except TaskError as error:
        print(f"  unavailable: {error}")
        return

    for spec in specs:
        print(
            f"{spec.task_name}: {spec.title}, {spec.suite}, {spec.num_classes} classes, metric {spec.metric}, "
            f"sources {', '.join(spec.sources)}"
        )
        if spec.coop_name:
            print(f"  also named {spec.coop_name} (CoOp's DATASET.NAME, case-sensitive)")
        marker = read_marker(spec, root)
        if marker is None:
            print(f"  not prepared; prepare with: {prepare_command(spec, root)}")
            continue
        sizes = ", ".join(f"{split} {count}" for split, count in marker["images"].items())
        print(f"  prepared from {marker['source']} ({marker['data']}): {sizes} images")


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from .datasets.prepare import prepare_task

    root = Path(args.root) if args.root else None
    from_path = Path(args.from_path) if args.from_path else None
    prepared = prepare_task(args.name, root=root, source=args.source, from_path=from_path)
    print(f"prepared {prepared.summary()}")
    print(f"marker written to {prepared.marker_path}")
    return 0


# Parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvlpt",
        description="Prompt tuning (CoOp, VPT, UPT) of a frozen CLIP for few-shot image classification.",
    )
    parser.add_argument("--version", action="version", version=f"mvlpt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    epilog = _config_epilog()
    formatter = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser(
        "train",
        help="train a prompt on the few-shot split of a task and evaluate it",
        description="Train a CoOp, VPT or UPT prompt on K images per class and evaluate it on the test split. "
        "A finished run directory is not trained again; an interrupted one resumes.",
        epilog=epilog,
        formatter_class=formatter,
    )
    _add_run_options(train, TRAIN_FLAGS)
    train.add_argument("--overwrite", action="store_true", help="discard earlier results in the run directory")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a saved prompt checkpoint on a task split",
        description="Evaluate a prompt checkpoint. The method and backbone come from the checkpoint's run "
        "(its config.yaml) or its metadata; the checkpoint must match them and the task's classes exactly.",
        epilog=epilog,
        formatter_class=formatter,
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="DIR", help="prompt checkpoint directory")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"], help="task split to evaluate (default test)")
    _add_run_options(evaluate, EVAL_FLAGS)
    evaluate.set_defaults(handler=cmd_evaluate)

    zero = commands.add_parser(
        "zero-shot",
        help="evaluate zero-shot CLIP with the task's prompt templates",
        description="Zero-shot CLIP: each class is the mean of its normalised template features.",
        epilog=epilog,
        formatter_class=formatter,
    )
    zero.add_argument("--split", default="test", choices=["train", "val", "test"], help="task split to evaluate (default test)")
    zero.add_argument("--overwrite", action="store_true", help="replace results.json in --output-dir if it exists")
    _add_run_options(zero, ZERO_SHOT_FLAGS)
    zero.set_defaults(handler=cmd_zero_shot)

    summarize = commands.add_parser(
        "summarize", help="print a table of the results.json files found under run directories"
    )
    summarize.add_argument("run_dirs", nargs="+", metavar="DIR", help="run directories or folders that contain them")
    summarize.set_defaults(handler=cmd_summarize)

    average = commands.add_parser(
        "average",
        help="average the prompt tensors of several checkpoints, e.g. of one prompt trained with several seeds",
        description="Save the element-wise mean of the prompt tensors of two or more checkpoints as a new checkpoint. "
        "The checkpoints must have the same method, backbone, parameter names and shapes.",
    )
    average.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="prompt checkpoint directories, two or more")
    average.add_argument("--output", required=True, metavar="DIR", help="directory of the averaged checkpoint")
    average.set_defaults(handler=cmd_average)

    pipeline = commands.add_parser(
        "pipeline",
        help="run a multitask study from one YAML file: source prompts, averaging, targets, baselines, tables",
        description="Train the source prompt per seed, average it, train each target task from it and from scratch, "
        "train the joint groups, evaluate zero-shot CLIP, and write results.md and results.csv. "
        "Finished runs are not repeated.",
        epilog=_pipeline_epilog(),
        formatter_class=formatter,
    )
    pipeline.add_argument("config", metavar="CONFIG", help="pipeline YAML file, e.g. configs/pipeline-example.yaml")
    pipeline.add_argument("--dry-run", action="store_true", help="list the runs and their state without training")
    pipeline.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="pipeline overrides such as seeds=[1] or base.train.epochs=2",
    )
    pipeline.set_defaults(handler=cmd_pipeline)

    study = commands.add_parser("study", help="studies made of many training runs: task transferability")
    study_commands = study.add_subparsers(dest="study_command", required=True, metavar="COMMAND")
    transfer = study_commands.add_parser(
        "transfer",
        help="measure which tasks help which: train every task from every other task's prompt",
        description="Train each task alone, then each ordered pair of tasks with the target starting from the "
        "source's prompt, and write the relative gain matrix, visual and label similarity, their rank correlation "
        "with the gain, the best sources per target and suggested groups to <output_dir>/analysis/. Finished runs "
        "are skipped, so rerunning the command resumes the study and retries failed runs. "
        "Exits with status 1 when some runs failed.",
        epilog=_transfer_epilog(),
        formatter_class=formatter,
    )
    transfer.add_argument("config", metavar="CONFIG", help="transfer study YAML file, e.g. configs/transfer-offline.yaml")
    transfer.add_argument("--dry-run", action="store_true", help="list the runs and their state without training")
    transfer.add_argument(
        "--analyse-only",
        "--analyze-only",
        dest="analyse_only",
        action="store_true",
        help="write the analysis from the runs that have finished, without training",
    )
    transfer.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="study overrides such as methods=[coop], workers=2, executor=ray or base.train.epochs=5",
    )
    transfer.set_defaults(handler=cmd_study_transfer)

    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain the small offline CLIP on the built-in tasks' pretrain splits",
        description="Pretrain mvlpt:mini-vit-32 contrastively on captions made from class names and templates, "
        "using only the pretrain splits (disjoint from every test split and few-shot pool), then report its "
        "zero-shot accuracy on every built-in task. Use the result with --model mvlpt:mini-vit-32 --pretrained offline.",
    )
    pretrain.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    pretrain.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    pretrain.add_argument(
        "--warmup-steps", type=int, default=100, help="steps of linear learning-rate warm-up (default 100)"
    )
    pretrain.add_argument("--seed", type=int, default=0, help="seed of initialisation and batches (default 0)")
    pretrain.add_argument("--task", action="append", help="built-in task to pretrain on; repeat; default all with a pretrain split")
    pretrain.add_argument("--output", metavar="DIR", help="output folder (default <data root>/models/offline-clip)")
    pretrain.set_defaults(handler=cmd_pretrain)

    data = commands.add_parser("data", help="built-in and benchmark tasks")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    data_list = data_commands.add_parser(
        "list", help="list the built-in tasks and benchmark tasks, and whether their data is installed or prepared"
    )
    data_list.add_argument("--data-root", help="folder of the built-in tasks' data and of prepared benchmark tasks")
    data_list.set_defaults(handler=cmd_data_list)

    from .datasets.catalog import SOURCES

    data_prepare = data_commands.add_parser(
        "prepare",
        help="download or locate an ELEVATER or CoOp task's data, check that it loads, and record it",
        description="Prepare a benchmark task for training and evaluation by name. clip-benchmark webdataset "
        "repositories are downloaded from the Hugging Face hub; other sources are read from --from DIR, or "
        "from files put in <root>/benchmarks/<suite>/<name>/. See docs/elevater.md.",
    )
    data_prepare.add_argument("name", metavar="NAME", help="benchmark task, e.g. cifar-10 or coop:dtd (see `mvlpt data list`)")
    data_prepare.add_argument(
        "--root",
        "--data-root",
        dest="root",
        metavar="DIR",
        help="data root under which benchmarks/<suite>/<name>/ is written (default $MVLPT_DATA_ROOT or ~/.cache/mvlpt/data)",
    )
    data_prepare.add_argument(
        "--from",
        dest="from_path",
        metavar="PATH",
        help="folder that already contains the data, e.g. a local copy of the clip-benchmark repository; "
        "it is read in place, not copied",
    )
    data_prepare.add_argument(
        "--source",
        choices=SOURCES,
        help="layout of the data: wds (clip-benchmark shards), vision-datasets (ELEVATER), coop (CoOp folders "
        "and split files) or manual (Hateful Memes download); default: the task's first source, or wds when "
        "--from holds shards",
    )
    data_prepare.set_defaults(handler=cmd_data_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options; argparse collects only the first run of
    # positionals, so later key=value arguments arrive here as unknown and join the list.
    args, unknown = parser.parse_known_args(argv)
    stray = [item for item in unknown if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )

    from .backbone import BackboneError
    from .checkpoints import CheckpointError
    from .config import ConfigError
    from .tasks import ImageLoadError, TaskError
    from .training import RunError

    try:
        return args.handler(args)
    except (BackboneError, CheckpointError, ConfigError, TaskError, ImageLoadError, RunError, ValueError) as error:
        print(f"mvlpt: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # Unwritable or misplaced output paths, full disks and the like: the message names the path.
        print(f"mvlpt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("train", "pipeline", "study"):
            print("mvlpt: interrupted; rerun the same command to resume", file=sys.stderr)
        else:
            print("mvlpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
