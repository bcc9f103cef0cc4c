"""Model: the active model's card and validation results, and the stored versions.

Everything shown comes from files in the model folder (``model_card.json``,
``evaluation.json``), written when the model was trained; nothing is
recomputed here.
"""

from __future__ import annotations

import streamlit as st

from app_pages import _common as common
from app_pages import _localisation as localisation_section
from fracture.data.provenance import is_synthetic, training_data_of
from fracture.model import registry
from fracture.model.card import calibration_sentence, render_card_markdown
from fracture.model.folder import ModelFolder, ModelLoadError
from fracture.views import figures, results, summaries

st.title("Model")
common.show_model_banner()
common.show_flash()
settings = common.settings()
model, problem = common.active_model()


def show_classes(multiclass: dict) -> None:
    """A K-class model, class by class: ROC curves, the K x K confusion matrix, sensitivity and precision."""
    st.subheader("Per class")
    st.caption(
        f"{len(multiclass['class_names'])} classes. Each class is scored against all the others; "
        "the macro average weighs every class equally, the micro average every image. "
        "An image is called the class with the highest probability."
    )
    left, right = st.columns(2)
    with left:
        st.plotly_chart(figures.class_roc_figure(multiclass), key="class_roc")
    with right:
        st.plotly_chart(
            figures.class_confusion_figure(
                multiclass["confusion_matrix"],
                multiclass["class_names"],
                "Confusion matrix (most probable class)",
            ),
            key="class_confusion",
        )
    st.plotly_chart(figures.per_class_figure(multiclass), key="per_class")
    facts = [
        (
            "Accuracy",
            multiclass.get("accuracy"),
            "Share of images whose most probable class is right.",
        ),
        (
            "Cohen's kappa",
            multiclass.get("kappa"),
            "Agreement with the labels beyond chance: 0 is chance, 1 is perfect.",
        ),
        (
            "Classwise calibration error",
            multiclass.get("classwise_ece"),
            "How far each class's probability sits from how often that class is right, "
            "averaged over the classes (lower is better).",
        ),
    ]
    for column, (label, value, help_text) in zip(st.columns(len(facts)), facts):
        column.metric(label, "not computable" if value is None else f"{value:.2f}", help=help_text)


def show_studies(study: dict) -> None:
    """Study-level figures (MURA): one score per study, the highest of its images."""
    st.subheader("Per study")
    st.caption(
        f"{study['n_studies']} studies of {study['n_images']} images; a study scores the "
        "highest probability among its images, and is called abnormal at the operating point."
    )
    kappa, auroc = study.get("kappa"), study.get("auroc")
    columns = st.columns(2)
    columns[0].metric("Study AUROC", "not computable" if auroc is None else f"{auroc:.2f}")
    columns[1].metric(
        "Study Cohen's kappa",
        "not computable" if kappa is None else f"{kappa:.2f}",
        help="Agreement of the study calls with the radiologists' labels beyond chance, "
        "the figure the MURA leaderboard ranks by.",
    )


def show_evaluation(report: dict) -> None:
    """ROC, PR, reliability, confusion per operating point, subgroups, pointing game.

    A K-class model's per-class results come first; a model without a normal
    class has no fracture-or-not figures, so the binary plots are left out.
    """
    if report.get("multiclass"):
        show_classes(report["multiclass"])
        if report.get("roc"):
            st.subheader("Any fracture")
            st.caption("Fracture of any kind against normal: 1 minus the probability of normal.")
    if report.get("study_level"):
        show_studies(report["study_level"])
    if "roc" not in report:
        return
    curves = st.columns(2)
    with curves[0]:
        st.plotly_chart(figures.roc_figure({"this model": report}), key="roc")
    with curves[1]:
        st.plotly_chart(figures.pr_figure(report), key="pr")
    # Its own full-width row: in a third column it shrank to ~70 px with its legend on the curves.
    st.plotly_chart(figures.reliability_figure(report), key="reliability")
    st.caption(calibration_sentence(report, model.card if model else None))

    points = report.get("operating_points") or {}
    if points:
        st.subheader("Operating points")
        columns = st.columns(len(points))
        for column, (name, point) in zip(columns, points.items()):
            with column:
                matrix = point.get("confusion_matrix")
                if matrix:
                    title = (
                        f"{name.replace('_', ' ').capitalize()} (threshold "
                        f"{results.format_threshold(point['threshold'])})"
                    )
                    st.plotly_chart(
                        figures.confusion_figure(matrix, title), key=f"confusion_{name}"
                    )
                st.caption(
                    " · ".join(
                        f"{label} {results.format_probability(point[key])}"
                        for key, label in (
                            ("sensitivity", "sensitivity"),
                            ("specificity", "specificity"),
                            ("ppv", "positive predictive value"),
                            ("npv", "negative predictive value"),
                        )
                        if point.get(key) is not None
                    )
                )

    subgroups = report.get("subgroups") or {}
    free = summaries.hardware_free_subgroup(report)
    pointing = report.get("pointing_game")
    if not (subgroups.get("region") or free or pointing):
        return
    st.subheader("Subgroups and localisation")
    left, right = st.columns([2, 1])
    with left:
        if subgroups.get("region") or free:
            st.plotly_chart(figures.region_auroc_figure(report), key="regions")
    with right:
        if free is not None:
            value = free.get("auroc")
            st.metric(
                "AUROC without hardware",
                "not computable" if value is None else f"{value:.2f}",
                help=f"On the {free.get('n')} validation images without plates or screws: "
                "metal makes fractures easy to spot, so this is the figure that shows "
                "whether the model reads bone.",
            )
        if pointing and pointing.get("score") is not None:
            st.metric(
                "Grad-CAM pointing game",
                f"{pointing['score']:.0%}",
                help=f"{pointing['hits']} of {pointing['n']} fractured images whose heat "
                f"map peaks inside an annotated fracture box.",
            )


def show_body_region(card: dict) -> None:
    """The region head's validation accuracy per region, when the model has one."""
    region = card.get("region_head")
    if not region or not region.get("per_region"):
        return
    st.subheader("Body region")
    left, right = st.columns([2, 1])
    with left:
        st.plotly_chart(figures.body_region_accuracy_figure(region), key="body_regions")
    with right:
        single = region.get("single_region_accuracy") or {}
        if single.get("rate") is not None:
            st.metric(
                "Region named correctly",
                f"{single['rate']:.0%}",
                help=f"{single['hits']} of {single['n']} validation images showing one body "
                "region; images labelled as showing several regions are counted apart.",
            )
        st.caption(
            "A small second head on the same image features names the body region. It was "
            "fitted after training, so it leaves the fracture probability unchanged, and it "
            "names a region only when it is at least 50% sure."
        )


def show_hardware(card: dict) -> None:
    """The hardware head's validation accuracy and AUROC, when the model has one."""
    hardware = card.get("hardware_head")
    if not hardware or not hardware.get("accuracy"):
        return
    st.subheader("Metal implant caution")
    left, right = st.columns(2)
    accuracy = hardware["accuracy"]
    left.metric(
        "Metal seen correctly",
        f"{accuracy['rate']:.0%}",
        help=f"{accuracy['hits']} of {accuracy['n']} validation images "
        f"({hardware.get('n_hardware', 0)} with metal).",
    )
    if hardware.get("auroc") is not None:
        right.metric("AUROC, metal or not", f"{hardware['auroc']:.2f}")
    st.caption(
        "A small head on the same image features says whether a plate, screw or nail is "
        'visible. Where it is, results say "metal implant visible: the score may reflect the '
        'implant": metal marks operated bones, the shortcut a fracture model learns first.'
    )


def show_summary(model: common.ActiveModel, report: dict | None) -> None:
    """The figures a reader looks for first, in words and units."""
    from fracture.data.provenance import training_data_of

    headline = summaries.card_headline(model.card)
    st.markdown(
        f"**{headline['name'] or model.config.name}**, version "
        f"{headline['version'] or model.config.version}"
    )
    if headline["val_auroc"] is not None:
        ci = headline["val_auroc_ci"]
        st.metric(
            "Validation AUROC",
            f"{headline['val_auroc']:.2f}",
            help="Area under the ROC curve on the validation split: 0.5 is chance, 1 is perfect.",
        )
        if ci:
            st.caption(f"95% bootstrap interval {ci[0]:.2f} to {ci[1]:.2f}")
    data = training_data_of(model.card)
    config = model.config
    st.markdown(
        f"- **Trained on:** {data.get('name')} ({data.get('kind')})\n"
        f"- **Input size:** {config.image_size} × {config.image_size} px\n"
        f"- **Thresholds:** "
        + ", ".join(
            f"{name.replace('_', ' ')} {results.format_threshold(value)}"
            for name, value in config.thresholds.items()
        )
        + "\n"
        f"- **Model folder:** {model.directory.name}"
    )


if model is None:
    common.show_no_model(problem)
else:
    report = ModelFolder(model.directory).read_evaluation()
    # Summary figures first, then the charts, then the full card folded away: the card
    # repeats the validation results and the heat-map figures the charts show.
    show_summary(model, report)
    if report:
        st.header("Validation results")
        show_evaluation(report)
        if not model.config.is_multiclass:  # the radiologists' boxes mark fractures only
            localisation_section.show(report, model.card)
    else:
        st.info(
            "This model folder has no evaluation results, so there are no plots. "
            "`python -m fracture evaluate` makes them."
        )
    show_body_region(model.card)
    show_hardware(model.card)
    with st.expander("Full model card", icon=":material/description:"):
        # Rendered from the card's data, not the stored Markdown: cards written
        # before provenance was recorded would otherwise show stale limitations.
        # Headings two levels down: the card's title is a long model name that
        # wrapped over four lines on a phone as a page title.
        st.markdown(summaries.demote_headings(render_card_markdown(model.card, report), 2))

st.header("Stored versions")
versions = registry.list_versions(settings)
if not versions:
    st.caption("No model folders yet.")
    st.stop()
st.dataframe(
    [
        {
            "name": v.name,
            "active": v.active,
            "usable": v.valid,
            "version": v.version,
            "created": (v.created or "").replace("T", " ").rstrip("Z"),
            "trained on": training_data_of(v.card).get("name"),
            "validation AUROC": v.val_auroc,
            "problem": v.error or "",
        }
        for v in versions
    ],
    hide_index=True,
    width="stretch",
    # Every column wide enough for its values: a narrow number column cut AUROC 0.90 to "0".
    column_config={
        "name": st.column_config.Column(width="medium"),
        "active": st.column_config.Column(width="small"),
        "usable": st.column_config.Column(width="small"),
        "version": st.column_config.Column(width="small"),
        "created": st.column_config.Column(width="medium"),
        "trained on": st.column_config.Column(width="medium"),
        "validation AUROC": st.column_config.NumberColumn(format="%.2f", width="medium"),
        "problem": st.column_config.Column(width="large"),
    },
)
if not common.admin_gate("Switching the active model"):
    st.stop()
by_name = {v.name: v for v in versions}
choices = [v.name for v in versions if v.valid and not v.active]
rollback_to = registry.rollback_target(settings)
actions = st.columns([2, 1, 1])
target = actions[0].selectbox(
    "Version",
    choices,
    label_visibility="collapsed",
    placeholder="No other usable version",
    index=0 if choices else None,
)
synthetic_target = target is not None and is_synthetic(by_name[target].card)
confirmed = True
if synthetic_target:
    confirmed = st.checkbox(
        f"I understand that {target} was trained on synthetic phantoms and that its output "
        "means nothing for real radiographs.",
        key="confirm_synthetic_activate",
    )
try:
    if actions[1].button(
        "Activate", disabled=not choices or not confirmed, icon=":material/check_circle:"
    ):
        version = registry.set_active(target, settings)
        common.model_changed()
        common.flash("success", f"{version.name} is now the active model.")
        st.rerun()
    if actions[2].button(
        "Roll back",
        icon=":material/undo:",
        disabled=rollback_to is None,
        help=f"Re-activate {rollback_to}, the version active before this one."
        if rollback_to
        else "No earlier version to go back to.",
    ):
        version = registry.rollback(settings)
        common.model_changed()
        common.flash("success", f"Rolled back to {version.name}.")
        st.rerun()
except (ModelLoadError, OSError, ValueError) as error:
    st.error(str(error))
