"""Model page section: how well the maps point at fractures, with a gallery of val cases."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_pages import _common as common
from fracture.views import localisation

WHERE_NOTE = (
    "**Where: the localisation head.** A second head on the same network pass marks where "
    "a fracture is: a map of how likely each place is a fracture's centre, and boxes with "
    "scores. It was trained on the radiologists' boxes after the classifier, so it leaves "
    "the probability as it was. Boxes appear only on an image labelled fracture: dotted at "
    "the high-sensitivity point, solid at the high-specificity one."
)
SCALE_NOTE = (
    "**Why: the classifier's Grad-CAM.** Its colour is the model's evidence for fracture in each "
    "region, on one fixed scale set on the validation images (a region as strong as the "
    "clearest quarter of validation fractures is fully red). It is not stretched to each "
    "image's own peak, so a confident normal shows little or no colour. A dotted box marks "
    "the strongest region when the probability is above the high-sensitivity threshold, a "
    "solid box above the high-specificity threshold."
)
REFERENCE_NOTE = (
    "For reference, the FracAtlas authors' YOLOv8s fracture detector reaches a box mAP50 of "
    "0.56 on their test split (Abedeen et al., Sci Data 2023), 0.48 in a reproduction on a "
    "split that keeps the test images out of training."
)


def show(report: dict, card: dict) -> None:
    st.subheader("Where the maps point")
    where = localisation.localisation_lines(report, "localiser")
    why = localisation.localisation_lines(report)
    if not (where or why):
        st.caption(
            "These validation results have no radiologists' boxes, so localisation was "
            "not measured."
        )
        return
    if where:
        st.markdown(WHERE_NOTE)
        st.table([{"Figure": a, "Value": b, "On": c} for a, b, c in where])
    if why:
        st.markdown(SCALE_NOTE)
        st.table([{"Figure": a, "Value": b, "On": c} for a, b, c in why])
    st.caption(REFERENCE_NOTE)
    data_root = _validation_data(card)
    if data_root is None:
        st.caption("The gallery of validation cases needs the training dataset on this machine.")
        return
    if st.toggle("Show a gallery of validation cases", key="localisation_gallery"):
        _gallery(data_root)


def _validation_data(card: dict) -> Path | None:
    root = (card.get("training_data") or {}).get("root")
    candidates = [Path(root)] if root else []
    candidates.append(common.settings().data_dir / "fracatlas")
    return next((path for path in candidates if (path / "val").is_dir()), None)


@st.cache_data(show_spinner="Scoring validation cases…", max_entries=2)
def _cases(data_root: str, model_key: str) -> list:  # noqa: ARG001 - model_key keys the cache
    from fracture.data.layouts import load_dataset

    served = common.get_served_model()
    if served is None:
        return []
    records = load_dataset(data_root).split("val")
    fractured = [r for r in records if r.label == 1 and r.boxes][:24]
    normal = [r for r in records if r.label == 0][:3]
    chosen = fractured + normal
    predictions = served.batch.predict([r.path for r in chosen], with_cam=True)
    cases = localisation.gallery_cases(chosen, predictions)
    return [
        (case.group, localisation.case_picture(case), case.prediction.probability) for case in cases
    ]


def _gallery(data_root: Path) -> None:
    model, _ = common.active_model()
    cases = _cases(str(data_root), model.key if model else "")
    titles = {
        "hit": "Peak inside the box",
        "miss": "Peak outside the box",
        "normal": "Normal radiograph",
    }
    st.caption("Green: the radiologists' boxes. White: the model's box, when it draws one.")
    columns = st.columns(3)
    for index, (group, picture, probability) in enumerate(cases):
        with columns[index % 3]:
            st.image(
                picture,
                caption=f"{titles[group]} · fracture probability {_probability_text(probability)}",
            )


def _probability_text(probability: float | None) -> str:
    if probability is None:
        return "not assessed"
    if probability > 0.99:
        return "> 99%"
    if probability < 0.01:
        return "< 1%"
    return f"{probability:.0%}"
