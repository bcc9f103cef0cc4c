"""Assemble a model folder from a box-supervised run of train.py, with its card and evaluation.

usage: python tools/box_supervision/assemble.py RUN_DIR EPOCH INIT_MODEL DATA OUT [EARLIER_RUN ...]

RUN_DIR/epochN.npz holds the trained layers (conv5 blocks and head); INIT_MODEL is the
model folder whose other conv5 layers were frozen (the previous default model); the
EARLIER_RUN stages before RUN_DIR count towards the training time; DATA is
FracAtlas in the folder layout. Everything fitted here (calibration, operating
points, heat-map scale, OOD gate) uses the model as served: bfloat16, BatchNorm
folded, through the same Predictor as the app: the OOD gate's class means and
covariances come from the train images' pooled features (conv4 and the head's),
its thresholds from the val images'.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

# --- configurable parameters -------------------------------------------------------------
IMAGE_SIZE = 384
DROPOUT = 0.5
PRECISION = "bfloat16"
OOD_FALSE_ALARM_RATE = 0.01
NAME = "fracatlas-384-dilated-boxes"
ARCHITECTURE = (
    "ResNet-50 (ImageNet) with conv5 at stride 1 and dilation 2 (24 x 24 Grad-CAM grid at "
    "384 px) + GAP + dropout + dense logit, sigmoid output"
)
BOX_SUPERVISION = (
    "The radiologists' boxes of FracAtlas's fractured train images trained the heat map, "
    "starting from the previous default model (fine-tuned on FracAtlas train without boxes). "
    "Every stage ran on cached features of two views per train image (one clean, one augmented "
    "with its boxes moved along), all fractured images and twice as many normal ones per epoch, "
    "AdamW with a cosine decay, the last epoch kept (no epoch chosen on val). The loss: "
    "cross-entropy, plus a peak term on the Grad-CAM map w . A (-log of the share of "
    "softmax(w . A) inside the boxes) and, where set, a mass term (-log of the share of "
    "relu(w . A) inside the boxes) for a fractured image with boxes, plus mean(relu(w . A)) on "
    "normal images. Images without boxes trained the classifier only. Val boxes were used only "
    "to measure."
)
# Which layers train after each cached cut (train.py trains everything after it).
TRAINED_AFTER = {
    "conv5_block2_out": "conv5 block 3 and the head",
    "conv5_block1_out": "conv5 blocks 2-3 and the head",
}


def describe_stages(stages: list[Path]) -> list[str]:
    """One sentence per training stage, from the settings train.py recorded in its run folder."""
    sentences = []
    for number, stage in enumerate(stages, 1):
        path = stage / "args.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: every stage needs the settings train.py records")
        args = json.loads(path.read_text())
        trained = TRAINED_AFTER.get(args["cut"], f"the layers after {args['cut']}")
        terms = f"peak {args['box']:g}, normals {args['neg']:g}"
        if args.get("energy"):
            terms += f", mass {args['energy']:g}"
        sentence = f"Stage {number}: {trained}; {terms}; {args['epochs']} epochs at {args['lr']:g}"
        if "interpolated" in args:
            alpha = args["interpolated"]
            # interpolate.py's INIT_MODEL: the model the stage's caches were made from,
            # which for a later stage is stage 1's result (README, the recipe).
            partner = "the model it started from" if number == 1 else "stage 1's result"
            sentence += (
                f"; then its trained weights averaged with those of {partner} "
                f"({alpha:g} x this stage + {1 - alpha:g} x that; WiSE-FT, Wortsman et al. 2022)"
            )
        sentences.append(sentence + ".")
    return sentences


def main(
    run_dir: Path,
    epoch: int,
    init_model: Path,
    data: Path,
    out: Path,
    earlier: list[Path],
) -> None:
    from fracture.data.layouts import load_dataset
    from fracture.evaluation.calibrate import calibrate_binary
    from fracture.evaluation.localisation import image_localisation, summarise_localisation
    from fracture.evaluation.ood_fit import extract_features, ood_probe_images
    from fracture.inference.gradcam import (
        box_style,
        evidence_heat,
        heatmap_to_image,
        strongest_region,
    )
    from fracture.inference.ood import fit_layered_ood_gate
    from fracture.inference.predictor import load_predictor
    from fracture.model.card import build_card
    from fracture.model.folder import (
        OOD_FILE,
        ModelConfig,
        ModelFolder,
        imagenet_reference,
        load_model,
        quantise_like_saved,
        save_model,
    )
    from fracture.model.imagenet import resolve_imagenet_weights
    from fracture.model.network import build_classifier
    from fracture.training.trainer import evidence_scale as fit_evidence_scale

    started = time.time()
    stages = [*earlier, run_dir]
    stage_sentences = describe_stages(stages)  # fails now, not after the scoring, if one is missing
    cut = json.loads((run_dir / "args.json").read_text())["cut"]
    resolved = resolve_imagenet_weights(allow_download=False)
    config = ModelConfig(
        image_size=IMAGE_SIZE,
        fine_tune_from="conv4_block6_out",
        dropout=DROPOUT,
        conv5_dilation=2,
        inference_precision=PRECISION,
        name=NAME,
        version=time.strftime("%Y%m%d-%H%M%S"),
    )
    model = build_classifier(config, resolved.path)
    reference = imagenet_reference(model, config)
    # conv5 blocks 1-2 from the previous model, block 3 and the head from the run.
    previous = load_model(init_model, resolved.path).model
    for layer in model.layers:
        if layer.name.startswith("conv5_") and layer.weights:
            layer.set_weights(previous.get_layer(layer.name).get_weights())
    trained = np.load(run_dir / f"epoch{epoch}.npz")
    names = sorted({key.rsplit("/", 1)[0] for key in trained.files})
    for name in names:
        layer = model.get_layer(name)
        layer.set_weights([trained[f"{name}/{i}"] for i in range(len(layer.get_weights()))])
    quantise_like_saved(model, config, reference)
    draft = out.with_name(out.name + ".draft")
    save_model(model, config, draft, reference=reference, card={"name": NAME})

    dataset = load_dataset(data)
    val, train = dataset.split("val"), dataset.split("train")
    predictor = load_predictor(draft, precision=PRECISION)
    print(f"scoring {len(val)} val images", flush=True)
    val_rows = []
    for record, result in zip(val, predictor.iter_predict([r.path for r in val], with_cam=True)):
        if result.ok:
            val_rows.append(
                (record, result.logit, result.evidence, result.geometry, result.features)
            )
    labels = np.array([r.label for r, *_ in val_rows])
    logits = np.array([z for _, z, *_ in val_rows])
    scale = fit_evidence_scale(np.stack([e for *_, e, _, _ in val_rows]), labels)
    fitted = calibrate_binary(
        dataclasses.replace(config, evidence_scale=scale),
        logits,
        labels,
        [r for r, *_ in val_rows],
        seed=0,
    )
    config, calibration, report = fitted.config, fitted.calibration, fitted.report
    probabilities = calibration.probability(logits)
    per_image = []
    for (record, _, evidence, geometry, _), probability in zip(val_rows, probabilities):
        if record.label != 1 or not record.boxes:
            continue
        raw = heatmap_to_image(evidence, geometry)
        style = box_style(float(probability), config.thresholds)
        drawn = strongest_region(evidence_heat(raw, scale)) if style else None
        per_image.append(image_localisation(raw, record.boxes, drawn))
    localisation = summarise_localisation(per_image)
    report["localisation"] = localisation
    game = localisation["pointing_game"]
    report["pointing_game"] = {"hits": game["hits"], "n": game["n"], "score": game["rate"]}

    # The gate is fitted on the model as served, like everything else here: it reads
    # conv4 as well as the head's features, and conv4 is in no cache.
    print(f"pooling the features of {len(train)} train images for the OOD gate", flush=True)
    train_features, train_kept = extract_features(predictor, [r.path for r in train])
    val_features = {layer: np.stack([f[layer] for *_, f in val_rows]) for layer in val_rows[0][-1]}
    gate = fit_layered_ood_gate(
        train_features,
        val_features,
        false_alarm_rate=OOD_FALSE_ALARM_RATE,
        train_labels=np.array([train[i].label for i in train_kept]),
        heldout_labels=labels,
    )
    val_flags = ~gate.is_in_distribution(val_features)
    probes = ood_probe_images()
    probe_features, _ = extract_features(predictor, list(probes.values()), names=list(probes))
    probe_scores = gate.score(probe_features)
    probe_flags = probe_scores > gate.threshold
    report["ood"] = {
        "val_false_alarms": {
            "fractured": f"{int(val_flags[labels == 1].sum())}/{int((labels == 1).sum())}",
            "normal": f"{int(val_flags[labels == 0].sum())}/{int((labels == 0).sum())}",
        },
        "probes_flagged": f"{int(probe_flags.sum())}/{len(probes)}",
        "lowest_probe_score": float(np.min(probe_scores)),
    }

    history = json.loads((run_dir / "history.json").read_text())
    card = build_card(
        model_config=config,
        train_config={
            "method": (
                f"box-supervised fine-tuning of {TRAINED_AFTER.get(cut, 'conv5')} on cached, "
                f"dilated conv5 features, in {len(stages)} stage(s) (tools/box_supervision)"
            ),
            "epochs": len(history) - 1,
            "shipped_epoch": epoch,
            "seed": 0,
        },
        dataset=dataset,
        report=report,
        history=history,
        best_epoch=epoch,
        # Every stage's epochs, earlier runs included.
        training_seconds=float(
            sum(
                row.get("seconds", 0)
                for stage in stages
                for row in json.loads((stage / "history.json").read_text())
            )
        ),
        imagenet_sha256=resolved.sha256,
        commit=None,
        ood_gate=gate,
        calibration=calibration,
        architecture=ARCHITECTURE,
        sections={
            "localisation": localisation,
            "box_supervision": " ".join([BOX_SUPERVISION, *stage_sentences]),
            # Served in this precision (the config says so); `fracture bench` adds the evidence.
            "inference_precision": PRECISION,
        },
    )
    ModelFolder(out).write_model(
        model, config, reference=reference, card=card, report=report, heads={OOD_FILE: gate}
    )
    summary = {
        "auroc": report.get("auroc"),
        "auroc_ci": report.get("auroc_ci"),
        "pointing": game,
        "localisation": localisation,
        "calibration": calibration.summary(),
        "ood": report["ood"],
        "evidence_scale": scale,
        "seconds": time.time() - started,
    }
    print(json.dumps(summary, indent=1, default=str), flush=True)


if __name__ == "__main__":
    run, epoch_arg, init, data_arg, out_arg = sys.argv[1:6]
    main(
        Path(run),
        int(epoch_arg),
        Path(init),
        Path(data_arg),
        Path(out_arg),
        [Path(stage) for stage in sys.argv[6:]],
    )
