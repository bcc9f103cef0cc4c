"""TrainConfig: checked when made, one flag per field, a given 0 kept as 0 (no TensorFlow)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fracture.training.config import TrainConfig
from fracture.training.runs import read_train_config, write_train_config


def _parse(*argv: str):
    from fracture.cli.main import build_parser
    from fracture.cli.train import config_from_args

    return config_from_args(build_parser().parse_args(["train", "data", "--out", "run", *argv]))


def test_every_field_has_a_flag_that_sets_it():
    changed = {
        "image_size": 96,
        "fine_tune_from": "conv4_block6_out",
        "head_epochs": 0,
        "epochs": 3,
        "batch_size": 8,
        "head_lr": 3e-4,
        "lr": 3e-5,
        "weight_decay": 1e-3,
        "dropout": 0.5,
        "augment": False,
        "views": 1,
        "patience": 5,
        "seed": 7,
        "strategy": "mirrored",
        "val_fraction": 0.2,
        "task": "fracture",
        "box_weight": 0.0,
        "normal_evidence_weight": 0.0,
        "box_mass_weight": 0.5,
        "conv5_dilation": 2,
    }
    assert set(changed) == {f.name for f in dataclasses.fields(TrainConfig)}
    argv = []
    for name, value in changed.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    config, pretrained = _parse(*argv)
    assert config == TrainConfig(**changed)
    assert pretrained is True
    assert _parse() == (TrainConfig(), True)


def test_a_zero_is_a_zero_and_an_invalid_zero_is_an_error_in_words():
    config, _ = _parse("--box-weight", "0", "--head-epochs", "0", "--seed", "0")
    assert (config.box_weight, config.head_epochs, config.seed) == (0.0, 0, 0)
    with pytest.raises(ValueError, match="lr must be positive, got 0"):
        _parse("--lr", "0")
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        _parse("--batch-size", "0")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0, "head_epochs": 0}, "head_epochs \\+ epochs must be at least 1"),
        ({"dropout": 1.0}, "dropout must be at least 0 and below 1"),
        ({"val_fraction": 0.0}, "val_fraction must be between 0 and 1"),
        ({"strategy": "cluster"}, "strategy must be one of default, mirrored, multiworker"),
        ({"augment": 1}, "augment must be bool"),
        ({"batch_size": 8.5}, "batch_size must be int"),
        ({"box_weight": -1.0}, "box_weight must not be negative"),
        ({"image_size": 16}, "image_size must be at least 32"),
    ],
)
def test_bad_settings_are_refused_when_the_config_is_made(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_config_file_round_trips_and_flags_beside_it_win(tmp_path):
    config = TrainConfig(image_size=96, epochs=3, lr=3e-5, augment=False, box_weight=0.0)
    path = write_train_config(tmp_path / "train_config.json", config, pretrained=False)
    assert read_train_config(path) == (config, False)
    assert _parse("--config", str(path)) == (config, False)
    assert _parse("--config", str(path), "--epochs", "5")[0] == dataclasses.replace(
        config, epochs=5
    )


def test_a_config_file_with_an_unknown_or_bad_setting_is_refused_in_words(tmp_path):
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps({"epochs": 2, "learning_rate": 0.1}))
    with pytest.raises(ValueError, match="Unknown training setting.*learning_rate"):
        read_train_config(path)
    path.write_text(json.dumps({"lr": 0}))
    with pytest.raises(ValueError, match="lr must be positive"):
        read_train_config(path)
    with pytest.raises(ValueError, match="No training settings"):
        read_train_config(tmp_path / "missing.json")
