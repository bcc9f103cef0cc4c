"""The body-region head: its maths on constructed features, the tiny model, and (slow) the shipped one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracture.evaluation.region_fit import fit_for_model, fit_region_head, region_report
from fracture.inference.region import MIN_REGION_PROBABILITY, RegionHead, RegionHeadError

REGIONS = ("hand", "hip", "leg", "shoulder")


def _clustered(
    rng: np.random.Generator, centres: np.ndarray, per_region: int
) -> tuple[np.ndarray, list[str]]:
    """Points around ``centres`` (one per region), on wildly different scales per dimension."""
    features = np.concatenate([rng.normal(c, 1.0, (per_region, c.size)) for c in centres])
    # Standardisation is folded into the head: raw features on scales 1e-3..1e3 must still work.
    features *= np.logspace(-3, 3, centres.shape[1])
    labels = [region for region in REGIONS for _ in range(per_region)]
    return features, labels


def test_fitted_head_names_held_out_regions_and_folds_its_standardisation() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2, (len(REGIONS), 48))
    train, train_labels = _clustered(rng, centres, 40)
    head = fit_region_head(train, train_labels)
    assert head.classes == REGIONS  # sorted, as scikit-learn orders them

    held_out, held_out_labels = _clustered(rng, centres, 40)  # fresh draws, same regions
    report = region_report(head, held_out, held_out_labels)
    assert report["single_region_accuracy"]["rate"] >= 0.95
    assert report["unsure"] <= 4
    probabilities = head.probabilities(held_out)
    assert probabilities.shape == (160, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Features the head never saw scaled like this would be nonsense without the folding.
    scrambled = region_report(head, held_out / np.logspace(-3, 3, 48), held_out_labels)
    assert scrambled["single_region_accuracy"]["rate"] < 0.9


def test_report_counts_unsure_images_as_wrong_and_keeps_mixed_apart() -> None:
    # A hand-made head on 2-d features: x decides hand vs leg, y decides "mixed".
    head = RegionHead(
        classes=("hand", "leg", "mixed"),
        weights=np.array([[4.0, -4.0, 0.0], [0.0, 0.0, 4.0]], np.float32),
        bias=np.zeros(3, np.float32),
    )
    features = np.array(
        [
            [2.0, 0.0],  # hand, right
            [-2.0, 0.0],  # leg, right
            [2.0, 0.0],  # labelled leg: wrong
            [0.0, 0.0],  # all logits equal: 1/3 each, below the minimum -> unsure
            [0.0, 3.0],  # mixed, right
        ],
        np.float32,
    )
    labels = ["hand", "leg", "leg", "hand", "mixed"]
    report = region_report(head, features, labels)
    assert report["per_region"]["hand"]["hits"] == 1 and report["per_region"]["hand"]["n"] == 2
    assert report["per_region"]["leg"]["hits"] == 1 and report["per_region"]["leg"]["n"] == 2
    assert report["single_region_accuracy"]["hits"] == 2
    assert report["single_region_accuracy"]["n"] == 4
    assert report["multi_region_accuracy"]["hits"] == report["multi_region_accuracy"]["n"] == 1
    assert report["unsure"] == 1
    # Rows: true region; columns: named region, then unsure.
    assert report["confusion"][0] == [1, 0, 0, 1]
    assert report["confusion"][1] == [1, 1, 0, 0]
    name, probability = head.name(head.probabilities(features[3])[0])
    assert name is None and probability < MIN_REGION_PROBABILITY


def test_head_round_trips_and_refuses_what_is_not_a_head(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    head = RegionHead(
        classes=("hand", "leg"),
        weights=rng.normal(size=(8, 2)).astype(np.float32),
        bias=rng.normal(size=2).astype(np.float32),
        fitted_precision="bfloat16",
    )
    path = head.save(tmp_path / "region_head.npz")
    again = RegionHead.load(path)
    assert again.classes == head.classes and again.fitted_precision == "bfloat16"
    features = rng.normal(size=(5, 8))
    np.testing.assert_array_equal(again.probabilities(features), head.probabilities(features))

    with pytest.raises(RegionHeadError, match="8 features"):
        head.probabilities(np.zeros((2, 9)))
    with pytest.raises(RegionHeadError, match="two regions"):
        RegionHead(classes=("hand",), weights=np.zeros((8, 1)), bias=np.zeros(1))
    with pytest.raises(RegionHeadError, match="non-finite"):
        RegionHead(
            classes=("hand", "leg"),
            weights=np.full((8, 2), np.nan, np.float32),
            bias=np.zeros(2, np.float32),
        )
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RegionHeadError, match="not a readable region head"):
        RegionHead.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", classes=np.array(["a", "b"]))
    with pytest.raises(RegionHeadError, match="lacks"):
        RegionHead.load(tmp_path / "other.npz")


def test_fit_refuses_a_single_region_or_too_few_images() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="at least two regions"):
        fit_region_head(rng.normal(size=(10, 4)), ["hand"] * 10)
    with pytest.raises(ValueError, match="too few training images"):
        fit_region_head(rng.normal(size=(12, 4)), ["hand"] * 10 + ["hip"] * 2)


# --------------------------------------------------------------------------- through the Predictor


def _two_region_dataset(root: Path, per_split: dict[str, int]) -> Path:
    """Folders layout whose region is visible: 'hand' images are dark, 'leg' images bright."""
    rows = ["path,region,hardware"]
    rng = np.random.default_rng(5)
    for split, count in per_split.items():
        for index in range(count):
            region = "hand" if index % 2 == 0 else "leg"
            label = "fractured" if index % 4 < 2 else "normal"
            level = 40 if region == "hand" else 200
            image = rng.normal(level, 10, (64, 64)).clip(0, 255).astype(np.uint8)
            relative = f"{split}/{label}/{region}-{index:03d}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / relative)
            rows.append(f"{relative},{region},0")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_fit_for_model_stores_the_head_and_predictions_name_the_region(
    tmp_path: Path, tiny_model_dir: Path, use_fake_weights: Path
) -> None:
    from fracture.inference.predictor import load_predictor
    from fracture.model.folder import REGION_FILE, ModelLoadError, read_config

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    data = _two_region_dataset(tmp_path / "data", {"train": 24, "val": 12})
    predictor = load_predictor(model_dir, batch_size=8, warmup=False)
    assert predictor.region_head is None
    assert all(p.body_region is None for p in predictor.predict(sorted(data.rglob("*.png"))[:2]))

    head, report = fit_for_model(model_dir, data, predictor=predictor)

    assert predictor.region_head is head and head.classes == ("hand", "leg")
    assert report["n_train"] == 24 and report["n"] == 12
    assert report["single_region_accuracy"]["rate"] >= 0.8
    _, card = read_config(model_dir)  # raises if the checksums were not re-written
    assert REGION_FILE in card["checksums"]
    assert card["region_head"]["per_region"]["hand"]["n"] == 6
    assert card["name"] == "tiny-test"  # the rest of the card survives

    fresh = load_predictor(model_dir, batch_size=8, warmup=False)
    val = sorted((data / "val").rglob("*.png"))
    results = fresh.predict(val)
    truth = ["hand" if path.name.startswith("hand") else "leg" for path in val]
    named = [result.body_region for result in results]
    assert sum(n == t for n, t in zip(named, truth)) >= 0.8 * len(val)
    row = results[0].row()
    assert row["body_region"] in ("hand", "leg", "uncertain")
    assert 0.0 <= float(row["body_region_probability"]) <= 1.0

    # The card's checksum guards the head: a swapped file is refused.
    (model_dir / REGION_FILE).write_bytes((model_dir / REGION_FILE).read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match=REGION_FILE):
        read_config(model_dir)


def test_an_input_the_gate_flags_gets_no_region(
    tmp_path: Path, tiny_model_dir: Path, use_fake_weights: Path
) -> None:
    """An untrained body part still gets the nearest region, so flagged inputs get none."""
    from fracture.inference.predictor import load_predictor

    from conftest import radiograph_like

    predictor = load_predictor(tiny_model_dir, batch_size=4, warmup=False)
    dimension = predictor.engine.run(
        np.zeros((1, predictor.config.image_size, predictor.config.image_size, 3), np.float32),
        with_cam=False,
    ).pooled.shape[1]
    # A head that is always sure it is a hand, whatever the features.
    predictor.region_head = RegionHead(
        classes=("hand", "leg"),
        weights=np.zeros((dimension, 2), np.float32),
        bias=np.array([5.0, 0.0], np.float32),
    )
    assert predictor.predict([radiograph_like(0)])[0].body_region == "hand"

    class FlagEverything:
        threshold = -1.0

        def score(self, features: np.ndarray) -> np.ndarray:
            return np.zeros(len(features))

    predictor.ood_gate = FlagEverything()  # type: ignore[assignment]
    flagged = predictor.predict([radiograph_like(0)])[0]
    assert flagged.in_distribution is False
    assert flagged.body_region is None and flagged.body_region_probability is None
    assert flagged.row()["body_region"] == ""


@pytest.mark.slow
def test_shipped_model_names_the_fracatlas_body_region(shared_fracatlas: Path) -> None:
    """models/default's region head on FracAtlas val: single-region accuracy >= 0.95."""
    from fracture.data.layouts import load_dataset
    from fracture.inference.predictor import load_predictor

    model_dir = Path(__file__).resolve().parents[2] / "models" / "default"
    predictor = load_predictor(model_dir)
    if predictor.region_head is None:
        pytest.fail("models/default has no region head (python -m fracture region fit)")
    val = [r for r in load_dataset(shared_fracatlas).split("val") if r.region]
    from fracture.evaluation.ood_fit import extract_features
    from fracture.model.network import POOL_LAYER

    features, kept = extract_features(predictor, [r.path for r in val])
    report = region_report(
        predictor.region_head, features[POOL_LAYER], [val[i].region for i in kept]
    )
    assert report["single_region_accuracy"]["rate"] >= 0.95
    for region in ("hand", "leg"):
        assert report["per_region"][region]["rate"] >= 0.9
