"""Step 3 of the default model's recipe: interpolate a run's weights with its starting model.

usage: python tools/box_supervision/interpolate.py RUN EPOCH INIT_MODEL OUT [ALPHA]

Writes OUT/epochN.npz holding, for every layer RUN/epochEPOCH.npz trained,
``(1 - ALPHA) * INIT_MODEL's weights + ALPHA * the run's`` (ALPHA 0.5 by default),
OUT/args.json (the run's, with the ALPHA) and OUT/history.json: the run's history plus row N saying what was done
(N = EPOCH + 1). assemble.py then builds the model folder from OUT, epoch N.

Why: box supervision moves the heat map's evidence into the boxes (energy inside
boxes 0.07 -> 0.22 on val) but costs some AUROC and moves the pooled features
the OOD gate reads. Weight-space ensembling of a fine-tuned model with the one
it started from (WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022) keeps part of both; both ends share every frozen layer, and
BatchNorm statistics were frozen in training, so the average of the trained
convolutions and head is well defined. ALPHA 0.5 is the paper's untuned
default; it was not chosen on val.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# --- configurable parameters -------------------------------------------------------------
ALPHA = 0.5


def main(run: Path, epoch: int, init_model: Path, out: Path, alpha: float) -> None:
    from fracture.model.folder import load_model
    from fracture.model.imagenet import resolve_imagenet_weights

    if not 0.0 <= alpha <= 1.0:
        raise SystemExit(f"ALPHA must lie in [0, 1]; got {alpha}")
    weights = resolve_imagenet_weights(allow_download=False).path
    start = load_model(init_model, weights).model
    trained = np.load(run / f"epoch{epoch}.npz")
    mixed = {}
    for key in trained.files:
        name, index = key.rsplit("/", 1)
        before = start.get_layer(name).get_weights()[int(index)]
        if before.shape != trained[key].shape:
            raise SystemExit(
                f"{key}: shape {trained[key].shape} in the run, {before.shape} in INIT"
            )
        mixed[key] = ((1.0 - alpha) * before + alpha * trained[key]).astype(before.dtype)
    history = [
        row for row in json.loads((run / "history.json").read_text()) if row["epoch"] <= epoch
    ]
    step = epoch + 1
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"epoch{step}.npz", **mixed)
    history.append(
        {
            "epoch": step,
            "phase": f"weights interpolated with the starting model, alpha {alpha:g}",
            "seconds": 0.0,
        }
    )
    (out / "history.json").write_text(json.dumps(history, indent=1))
    stage = json.loads((run / "args.json").read_text())
    (out / "args.json").write_text(json.dumps({**stage, "interpolated": alpha}, indent=1))
    print(f"wrote {out / f'epoch{step}.npz'}: {len(trained.files)} arrays, alpha {alpha:g}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        int(sys.argv[2]),
        Path(sys.argv[3]),
        Path(sys.argv[4]),
        float(sys.argv[5]) if len(sys.argv) > 5 else ALPHA,
    )
