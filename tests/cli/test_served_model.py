"""Every command that defaults to "the model served now" asks the registry, not models/default.

Before, ``Settings.active_model_dir`` meant ``models_dir/model_name`` and ignored
``models/ACTIVE``: after a promotion, ``ood fit``, ``ood measure`` and
``bench --apply`` rewrote ``models/default`` instead of the model being served.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from fracture.cli.ood import add_ood_parser
from fracture.config import get_settings
from fracture.data.phantoms import synthesize_phantoms
from fracture.model import registry
from fracture.model.folder import OOD_FILE, read_config
from fracture.perf.bench import apply_precision_verdict
from fracture.perf.config import BenchConfig
from fracture.perf.workload import bench_image_size, bench_model


@pytest.fixture
def promoted_second_model(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """models/default plus a second model promoted over it; settings read from the environment."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    shutil.copytree(tiny_model_dir, models / "default")
    candidate = runs / "second" / "model"
    shutil.copytree(tiny_model_dir, candidate)
    monkeypatch.setenv("FRACTURE_MODELS_DIR", str(models))
    monkeypatch.setenv("FRACTURE_RUNS_DIR", str(runs))
    get_settings.cache_clear()
    version = registry.promote(candidate, name="second", settings=get_settings())
    assert registry.active_model_dir(get_settings()) == version.path
    yield models / "default", version.path
    get_settings.cache_clear()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_ood_and_bench_defaults_use_the_promoted_model(
    tmp_path: Path,
    promoted_second_model,
    use_fake_weights: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    default, promoted = promoted_second_model
    untouched = _snapshot(default)
    parser = argparse.ArgumentParser()
    add_ood_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    data = tmp_path / "phantoms"
    synthesize_phantoms(data, 24, size=64, val_fraction=0.25)

    # ood measure without --model: the served model has no gate yet, and the error names it.
    assert run("ood", "measure", str(data)) == 2
    assert str(promoted) in capsys.readouterr().err

    # ood fit without --model writes the gate into the served model, checksums included.
    assert run("ood", "fit", str(data), "--max-train", "12") == 0
    assert str(promoted / OOD_FILE) in capsys.readouterr().out
    assert (promoted / OOD_FILE).is_file()
    _, card = read_config(promoted)
    assert card["ood"]["n_train"] == 12

    # ood measure without --model measures that gate.
    report_path = tmp_path / "ood.json"
    assert run("ood", "measure", str(data), "--json", str(report_path)) == 0
    assert json.loads(report_path.read_text())["model"] == str(promoted)

    # bench benchmarks the served model, and --apply rewrites that one.
    assert bench_image_size(BenchConfig()) == read_config(promoted)[0].image_size
    _, described = bench_model(BenchConfig(), str(use_fake_weights))
    assert described["kind"] == "trained" and described["directory"] == str(promoted)
    assert apply_precision_verdict(described["directory"], {"recommended": True}) == "bfloat16"
    assert read_config(promoted)[0].inference_precision == "bfloat16"

    assert _snapshot(default) == untouched, "models/default must not change"
