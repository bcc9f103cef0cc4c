"""Model: the active model's card and validation results, and the stored versions.

Everything shown comes from files in the model folder (``model_card.md``,
``evaluation.json``), written when the model was trained; nothing is
recomputed here.
"""

from __future__ import annotations

import streamlit as st

from app_pages import _common as common
from app_pages import _localisation as localisation_section
from fracture.model import registry
from fracture.model.folder import ModelFolder, ModelLoadError
from fracture.views import figures, summaries

st.title("Model")
common.show_flash()
settings = common.settings()
model, problem = common.active_model()


def show_evaluation(report: dict) -> None:
    """ROC, PR, reliability, confusion per operating point, subgroups, pointing game."""
    curves = st.columns(3)
    with curves[0]:
        st.plotly_chart(figures.roc_figure({model.directory.name: report}), key="roc")
    with curves[1]:
        st.plotly_chart(figures.pr_figure(report), key="pr")
    with curves[2]:
        st.plotly_chart(figures.reliability_figure(report), key="reliability")

    points = report.get("operating_points") or {}
    if points:
        st.subheader("Operating points")
        columns = st.columns(len(points))
        for column, (name, point) in zip(columns, points.items()):
            with column:
                matrix = point.get("confusion_matrix")
                if matrix:
                    title = f"{name.replace('_', ' ')} (threshold {point['threshold']:.3f})"
                    st.plotly_chart(
                        figures.confusion_figure(matrix, title), key=f"confusion_{name}"
                    )
                st.caption(
                    " · ".join(
                        f"{label} {point[key]:.3f}"
                        for key, label in (
                            ("sensitivity", "sensitivity"),
                            ("specificity", "specificity"),
                            ("ppv", "PPV"),
                            ("npv", "NPV"),
                        )
                        if point.get(key) is not None
                    )
                )

    st.subheader("Subgroups and localisation")
    subgroups = report.get("subgroups") or {}
    left, right = st.columns([2, 1])
    with left:
        if subgroups:
            st.plotly_chart(figures.region_auroc_figure(report), key="regions")
        else:
            st.caption("No subgroup results in this evaluation.")
    with right:
        free = subgroups.get("hardware_free")
        if free is not None:
            value = free.get("auroc")
            st.metric(
                "AUROC without hardware",
                "n/a" if value is None else f"{value:.3f}",
                help="On cases without plates or screws: metal makes fractures easy to "
                "spot, so this is the figure that shows whether the model reads bone.",
            )
        pointing = report.get("pointing_game")
        if pointing and pointing.get("score") is not None:
            st.metric(
                "Grad-CAM pointing game",
                f"{pointing['score']:.1%}",
                help=f"{pointing['hits']} of {pointing['n']} fractured images whose heat "
                f"map peaks inside an annotated fracture box.",
            )
        if report.get("temperature") is not None:
            st.metric("Calibration temperature", f"{report['temperature']:.2f}")


if model is None:
    common.show_no_model(problem)
else:
    card_column, summary_column = st.columns([3, 2])
    with card_column:
        card_markdown = ModelFolder(model.directory).card_markdown()
        with st.container(border=True):
            if card_markdown is not None:
                st.markdown(card_markdown)
            else:
                st.info(f"`{model.directory.name}` has no model_card.md.")
    with summary_column:
        headline = summaries.card_headline(model.card)
        if headline["val_auroc"] is not None:
            st.metric("Validation AUROC", f"{headline['val_auroc']:.3f}")
        st.json(
            {
                "folder": str(model.directory),
                "image_size": model.config.image_size,
                "fine_tune_from": model.config.fine_tune_from,
                "temperature": model.config.temperature,
                "thresholds": model.config.thresholds,
            },
            expanded=True,
        )
    report = ModelFolder(model.directory).read_evaluation()
    if report:
        st.header("Validation results")
        show_evaluation(report)
        localisation_section.show(report, model.card)
    else:
        st.info(
            "This model folder has no evaluation.json, so there are no plots. "
            "`python -m fracture evaluate` writes one."
        )

st.header("Stored versions")
versions = registry.list_versions(settings)
if not versions:
    st.caption(f"No model folders in `{settings.models_dir}`.")
    st.stop()
st.dataframe(
    [
        {
            "name": v.name,
            "active": v.active,
            "valid": v.valid,
            "version": v.version,
            "created": v.created,
            "val AUROC": v.val_auroc,
            "problem": v.error or "",
        }
        for v in versions
    ],
    hide_index=True,
    width="stretch",
    column_config={"val AUROC": st.column_config.NumberColumn(format="%.3f")},
)
if not common.admin_gate("Switching the active model"):
    st.stop()
choices = [v.name for v in versions if v.valid and not v.active]
actions = st.columns([2, 1, 1])
target = actions[0].selectbox(
    "Version",
    choices,
    label_visibility="collapsed",
    placeholder="No other valid version",
    index=0 if choices else None,
)
try:
    if actions[1].button("Activate", disabled=not choices, icon=":material/check_circle:"):
        version = registry.set_active(target, settings)
        common.model_changed()
        common.flash("success", f"`{version.name}` is now the active model.")
        st.rerun()
    if actions[2].button(
        "Roll back",
        icon=":material/undo:",
        help="Re-activate the version that was active before the current one.",
    ):
        version = registry.rollback(settings)
        common.model_changed()
        common.flash("success", f"Rolled back to `{version.name}`.")
        st.rerun()
except (ModelLoadError, OSError, ValueError) as error:
    st.error(str(error))
