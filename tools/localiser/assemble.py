"""Put a trained localisation head into a classifier's model folder and write its card.

usage: python tools/localiser/assemble.py MODEL DATA HEAD [NAME]

MODEL is a binary classifier's model folder, already carrying its OOD gate, region and
hardware heads and its calibration (``fracture ood fit``, ``region fit``, ``hardware fit``,
``calibrate``); HEAD is ``localiser.npz`` from ``tools/localiser/train.py``. This script

1. copies HEAD into MODEL (the card's checksums cover it);
2. refits the calibration on val (``calibrate_model``), which decides whether the
   head's peak joins the probability (``ModelConfig.localiser_weight``);
3. fixes the Grad-CAM display scale on val (``evidence_scale``: the 75th percentile of
   the peak evidence of val fractures, as the trainer sets it);
4. evaluates the folder as served on DATA's val split (``evaluate_model``: the classifier,
   its Grad-CAM and the localisation head) and stores the report as ``evaluation.json``,
   keeping the calibration's figures;
5. writes the card: the new name and version, the architecture, the localisation head's
   section from the report, and the Markdown card.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def main(model: Path, data: Path, head: Path, name: str | None) -> None:
    from fracture.data.layouts import load_dataset
    from fracture.evaluation.calibrate import calibrate_model
    from fracture.evaluation.evaluate import evaluate_model
    from fracture.inference.predictor import load_predictor
    from fracture.model.card import headline
    from fracture.model.folder import ModelFolder
    from fracture.model.localiser import Localiser
    from fracture.training.trainer import evidence_scale

    folder = ModelFolder(model)
    shutil.copyfile(head, folder.localiser_path)
    folder.rewrite_card(folder.read_card())  # checksums now cover the head
    calibrate_model(model, data)

    predictor = load_predictor(model)
    fractured = [r for r in load_dataset(data).split("val") if r.label == 1]
    evidence = [
        p.evidence
        for p in predictor.predict([r.path for r in fractured], with_cam=True)
        if p.ok and p.evidence is not None
    ]
    scale = evidence_scale(np.stack(evidence), np.ones(len(evidence), int))
    config, card = folder.read()
    folder.rewrite_config(replace(config, evidence_scale=scale), card)

    predictor = load_predictor(model)
    report = evaluate_model(data, predictor=predictor)
    stored = folder.read_evaluation() or {}
    for key in ("localisation", "localiser", "pointing_game"):
        stored[key] = report[key]
    folder.write_evaluation(stored)

    localiser = Localiser.load(folder.localiser_path)
    located = {**report["localiser"], "trained_on": localiser.trained_on}
    config, card = folder.read()
    version = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = name or f"{config.name}-localiser"
    # A folder that already had a head keeps its classifier's sentence; the head's is new.
    architecture = str(card.get("architecture", ""))
    base, _, previous = architecture.partition("; a CenterNet")
    classifier = (
        previous[previous.index("The classifier is ") :].rstrip(".")
        if "The classifier is " in previous
        else f"The classifier is {card.get('name')} (version {card.get('version')}), unchanged"
    )
    folder.rewrite_config(
        replace(config, name=name, version=version),
        card,
        name=name,
        version=version,
        architecture=(f"{base}; {localiser.describe()}, in the same pass. {classifier}"),
        localiser=located,
        localisation=report["localisation"],
        val_metrics=headline(stored),
    )
    print(
        json.dumps(
            {
                "name": name,
                "version": version,
                "evidence_scale": scale,
                "localiser": {
                    k: located[k]
                    for k in (
                        "ap50",
                        "pointing_game",
                        "energy_inside_boxes",
                        "false_boxes_per_normal",
                    )
                },
            },
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), Path(args[1]), Path(args[2]), args[3] if len(args) > 3 else None)
