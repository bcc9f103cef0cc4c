"""``python -m fracture train``: fine-tune ResNet-50 on a dataset.

Every :class:`~fracture.training.config.TrainConfig` field is a flag of the same
name (``--head-lr`` for ``head_lr``; ``--augment``/``--no-augment`` for a yes/no
one), generated from the dataclass, so a new field is a new flag with nothing to
write here. ``--config FILE`` starts from a run's ``train_config.json`` (what the
dashboard's background launcher writes); a flag given beside it wins.
"""

from __future__ import annotations

import argparse
import dataclasses

from fracture.training.config import TrainConfig

__all__ = ["add_train_parser", "config_from_args"]


def add_train_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("train", help="fine-tune ResNet-50 on a dataset")
    p.add_argument("data", help="dataset folder (image folders, FracAtlas or MURA layout)")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/my-run")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="training settings as JSON (a run's train_config.json); flags given beside it win",
    )
    settings = p.add_argument_group("training settings (defaults in brackets)")
    for field in dataclasses.fields(TrainConfig):
        _add_field_flag(settings, field)
    p.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet")
    p.add_argument(
        "--logical-cpus",
        type=int,
        default=0,
        help="with --strategy mirrored on a CPU: split it into N logical devices",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=cmd_train)


def _add_field_flag(group: argparse._ArgumentGroup, field: dataclasses.Field) -> None:
    """One flag for one TrainConfig field; absent from the namespace unless given."""
    flag = "--" + field.name.replace("_", "-")
    kind = type(field.default)
    help_text = f"{field.metadata.get('help', '')} [{field.default}]"
    if kind is bool:
        group.add_argument(
            flag,
            dest=field.name,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text,
        )
        return
    group.add_argument(
        flag,
        dest=field.name,
        type=kind,
        choices=field.metadata.get("choices"),
        default=argparse.SUPPRESS,
        help=help_text,
    )


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's config and ImageNet choice: the ``--config`` file's (or the defaults), then
    every flag given.

    A value given is the value used: ``--box-weight 0`` is 0, and ``--lr 0`` is an
    error in words (:class:`TrainConfig` checks every field) rather than the default.
    """
    from fracture.training.runs import read_train_config

    base, pretrained = read_train_config(args.config) if args.config else (TrainConfig(), None)
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TrainConfig)
        if hasattr(args, field.name)
    }
    if args.no_pretrained:
        pretrained = False
    return dataclasses.replace(base, **given), True if pretrained is None else pretrained


def cmd_train(args: argparse.Namespace) -> int:
    # Checked before TensorFlow loads: a bad setting fails in a second, in words. On
    # --resume the run's own train_config.json wins (fracture.training.trainer).
    config, pretrained = config_from_args(args)
    from fracture.training.trainer import configure_logical_cpus, train

    if config.strategy == "mirrored" and args.logical_cpus:
        configure_logical_cpus(args.logical_cpus)
    model_dir = train(args.data, args.out, config, pretrained=pretrained, resume=args.resume)
    print(f"model saved to {model_dir}")
    return 0
