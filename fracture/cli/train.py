"""``python -m fracture train``: fine-tune ResNet-50 on a dataset."""

from __future__ import annotations

import argparse

from fracture.training.tasks import TASKS

__all__ = ["add_train_parser"]


def add_train_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("train", help="fine-tune ResNet-50 on a dataset")
    p.add_argument("data", help="dataset folder (image folders, FracAtlas or MURA layout)")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/my-run")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs")
    p.add_argument("--head-epochs", type=int, default=None, help="head-only epochs first")
    p.add_argument("--fine-tune-from", default=None, help="freeze up to this layer")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--views", type=int, default=None, help="cached augmented views per image")
    p.add_argument("--head-lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default=None,
        help="classes (default): one output per class folder, a fracture model when the "
        "folders are fractured and normal, a K-class model for any other names; fracture: "
        "fracture or not, the other classes of a set with a normal class merged",
    )
    p.add_argument(
        "--box-weight",
        type=float,
        default=None,
        help="weight of the box-alignment loss that teaches the heat map the radiologists' "
        "boxes (0 turns it off; images without boxes are unaffected)",
    )
    p.add_argument(
        "--normal-evidence-weight",
        type=float,
        default=None,
        help="cost of heat-map evidence on normal images, inside the box loss",
    )
    p.add_argument(
        "--box-mass-weight",
        type=float,
        default=None,
        help="cost of heat-map evidence outside the boxes of fractured images, inside the box "
        "loss (0, the default, rewards only the peak)",
    )
    p.add_argument(
        "--conv5-dilation",
        type=int,
        choices=[1, 2],
        default=None,
        help="2: conv5 at stride 1, dilation 2, a heat-map grid twice as fine (slower)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"], default="default")
    p.add_argument(
        "--logical-cpus",
        type=int,
        default=0,
        help="with --strategy mirrored on a CPU: split it into N logical devices",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from fracture.training.config import TrainConfig
    from fracture.training.trainer import configure_logical_cpus, train

    if args.strategy == "mirrored" and args.logical_cpus:
        configure_logical_cpus(args.logical_cpus)
    if args.resume:
        config = TrainConfig()
    else:
        defaults = TrainConfig()
        config = TrainConfig(
            image_size=args.image_size or defaults.image_size,
            fine_tune_from=args.fine_tune_from or defaults.fine_tune_from,
            head_epochs=defaults.head_epochs if args.head_epochs is None else args.head_epochs,
            epochs=defaults.epochs if args.epochs is None else args.epochs,
            batch_size=args.batch_size or defaults.batch_size,
            lr=args.lr or defaults.lr,
            seed=args.seed,
            strategy=args.strategy,
            augment=not args.no_augment,
            views=args.views or defaults.views,
            **{
                name: getattr(args, name)
                for name in (
                    "head_lr",
                    "weight_decay",
                    "dropout",
                    "patience",
                    "val_fraction",
                    "task",
                    "box_weight",
                    "normal_evidence_weight",
                    "box_mass_weight",
                    "conv5_dilation",
                )
                if getattr(args, name) is not None
            },
        )
    model_dir = train(
        args.data, args.out, config, pretrained=not args.no_pretrained, resume=args.resume
    )
    print(f"model saved to {model_dir}")
    return 0
