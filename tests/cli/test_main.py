"""The command line's shared behaviour: one error wrapper and one handler name for every command."""

from __future__ import annotations

import argparse

from fracture.cli.main import build_parser, main


def test_a_missing_model_is_an_error_line_not_a_traceback(tmp_path, capsys):
    status = main(["evaluate", str(tmp_path), "--model", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: No model at") and "Traceback" not in err


def test_a_bad_training_setting_is_an_error_line_before_anything_loads(tmp_path, capsys):
    status = main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--lr", "0"])
    assert status == 1
    assert capsys.readouterr().err.startswith("error: Invalid training settings: lr must be")
    assert not (tmp_path / "run").exists()


def _handlers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                func = sub.get_default("func")
                if func is not None:
                    yield name, func
                yield from _handlers(sub)


def test_every_command_handler_is_named_cmd_and_takes_the_arguments():
    handlers = dict(_handlers(build_parser()))
    assert {"predict", "train", "evaluate", "fit", "export", "weights"} <= set(handlers)
    assert all(func.__name__.startswith("cmd_") for func in handlers.values()), handlers
