"""Predict: upload radiographs, get a calibrated fracture probability and a Grad-CAM overlay.

Uploads stay in memory: their bytes go straight to the Predictor and nothing
is written to disk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import streamlit as st
from streamlit.typing import UploadedFile

from app_pages import _common as common
from fracture.inference.gradcam import overlay_heatmap
from fracture.inference.prediction import Prediction
from fracture.io.dicom import looks_like_dicom, study_instance_uid
from fracture.io.images import SUPPORTED_SUFFIXES, InvalidImageError, describe_dicom
from fracture.model.folder import ModelFolder
from fracture.views import (
    batch,
    context,
    display,
    figures,
    overlays,
    report,
    results,
    studies,
)

# The uploader filters by extension; load_image decides by content, so a
# renamed file still gets a precise error row rather than a silent skip.
UPLOAD_TYPES = sorted({suffix.lstrip(".") for suffix in SUPPORTED_SUFFIXES} | {"dcm", "dicom"})
ALPHA_KEY = "overlay_alpha"
COUNT_WIDTH = 150  # px: two batch counts side by side on a 390 px phone
BAND_COLOURS = {
    results.BAND_NORMAL: "green",
    results.BAND_UNCERTAIN: "orange",
    results.BAND_FRACTURE: "red",
}

st.title("Predict")
common.show_model_banner()
st.caption(
    "Upload one radiograph, several, or a whole folder. Images are processed in memory and "
    "never stored. " + common.NOT_FOR_DIAGNOSIS
)

# The card and thresholds are read without the network, which loads in the background
# (app.py starts it): the picker and the uploader are usable at once.
active, problem = common.active_model()
if active is None:
    common.show_no_model(problem)
    st.stop()
threshold: float | None = None
op_name = ""
served: common.ServedModel | None = None
# The operating point is picked here, at the top (not only in the sidebar: a phone folds
# it away), but drawn by the results fragment at the bottom of the page, so a new point
# reruns only that fragment: the kept results re-thresholded, nothing read or scored again.
picker_slot = st.container()

mode = st.radio(
    "Upload",
    ["Files", "Folder"],
    horizontal=True,
    label_visibility="collapsed",
    help="A folder upload includes every supported image in it and its sub-folders.",
)
uploads = st.file_uploader(
    "Radiographs: JPEG, PNG, BMP, TIFF, GIF or DICOM",
    # A folder is taken whole and its other files are listed once as skipped:
    # the uploader's own type filter would mark each of them with a red chip.
    type=UPLOAD_TYPES if mode == "Files" else None,
    accept_multiple_files=True if mode == "Files" else "directory",
    key=f"uploads_{mode.lower()}",
)


def _overlay_caption(style: str | None, shown_class: str = "fracture") -> str:
    caption = f"Grad-CAM evidence for {shown_class}, on one fixed scale for every image"
    if style == "solid":
        return caption + "; solid box: strongest region, above the high-specificity threshold"
    if style == "dotted":
        return caption + "; dotted box: strongest region, above the high-sensitivity threshold"
    return caption


def _is_dicom(upload: UploadedFile) -> bool:
    # A view of the buffer, not a copy: this runs on every rerun.
    return upload.name.lower().endswith((".dcm", ".dicom")) or looks_like_dicom(upload.getbuffer())


def _is_image_candidate(upload: UploadedFile) -> bool:
    """A supported suffix or the DICOM marker (DICOM files often have no suffix)."""
    suffix = upload.name.rsplit(".", 1)[-1].lower() if "." in upload.name else ""
    return suffix in UPLOAD_TYPES or _is_dicom(upload)


def cam_prediction(upload: UploadedFile) -> Prediction:
    """The upload's prediction with heat map, from this session's cache when already scored."""
    key = (served.key, upload.file_id)
    prediction = common.cached_prediction(key)
    if prediction is None:
        with st.spinner(f"Scoring {upload.name}…"):
            prediction = common.score_upload(served, upload.getvalue(), upload.name)
        common.cache_prediction(key, prediction)
    return prediction


@st.fragment
def image_pair(
    name: str,
    image,
    heatmap,
    box=None,
    style=None,
    caption: str | None = None,
    shown_class: str = "fracture",
) -> None:
    """The Grad-CAM overlay (with the strongest-region box), then the image, at display size.

    The overlay comes first so that a phone, which stacks the columns, shows it
    right under the verdict. A fragment: moving the opacity slider reruns only
    this, re-blending the display-size overlay; nothing is scored or charted again.
    """
    alpha = st.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key=ALPHA_KEY)
    overlay, original = st.columns(2)
    if heatmap is not None:
        overlay.image(
            display.jpeg(overlay_heatmap(image, heatmap, alpha, box=box, style=style)),
            caption=caption or _overlay_caption(style, shown_class),
            width="stretch",
        )
        if float(heatmap.max()) <= 0.0:
            # Grad-CAM keeps only evidence *for* the class; none at all is a result too.
            overlay.caption(f"The heat map is empty: no region raised the {shown_class} score.")
    else:
        overlay.info("This model has no Grad-CAM layer, so there is no heat map.")
    original.image(display.jpeg(image), caption=name, width="stretch")


@st.fragment
def viewer(name: str, prediction: Prediction, *, allow_boxes: bool = True) -> None:
    """The zoomable viewer: the "Where" or "Why" map, the boxes, brightness and contrast.

    A fragment: every switch and slider redraws only this (nothing is scored again),
    and window/level change the shown pixels, never the network's input.
    """
    views = overlays.views_of(prediction)
    key = f"{served.key}_{name}"
    view = views[0]
    if len(views) > 1:
        view = (
            st.segmented_control(
                "Map",
                views,
                default=views[0],
                format_func=overlays.VIEW_NAMES.__getitem__,
                key=f"view_{key}",
                help="Where: the localisation head's probability of a fracture centre, trained on "
                "the radiologists' boxes. Why: the Grad-CAM evidence that raised the fracture score.",
            )
            or views[0]
        )
    with st.container(horizontal=True, vertical_alignment="center"):
        show_map = st.toggle("Map", value=True, key=f"map_{key}")
        show_boxes = allow_boxes and st.toggle("Boxes", value=True, key=f"boxes_{key}")
        with st.popover("Brightness and contrast", icon=":material/contrast:"):
            level = st.slider("Level (brightness)", 0.0, 1.0, 0.5, 0.05, key=f"level_{key}")
            window = st.slider("Window (contrast)", 0.05, 1.0, 1.0, 0.05, key=f"window_{key}")
            alpha = st.slider("Map opacity", 0.0, 1.0, 0.45, 0.05, key=ALPHA_KEY)
    if prediction.image is None:
        return
    thresholds = served.config.thresholds
    picture, empty = viewer_picture(
        key, prediction, view, alpha=alpha, show_map=show_map, window=window, level=level
    )
    marks = overlays.boxes_at(prediction, threshold, thresholds) if show_boxes else []
    st.plotly_chart(
        overlays.viewer_figure(
            picture, marks, unit=overlays.scale_title(view) if show_map else None
        ),
        key=f"viewer_{key}",
        config=overlays.VIEWER_CONFIG,
    )
    notes = [f"{name}: {overlays.VIEW_NAMES[view]}, {overlays.map_unit(view)}, from 0 to 1"]
    if marks:
        scored = " with its score" if marks[0].score is not None else ""
        above = "high-specificity" if marks[0].style == "solid" else "chosen"
        notes.append(f"{len(marks)} box(es){scored}, {marks[0].style}: above the {above} threshold")
    st.caption("; ".join(notes) + ". Drag to pan, scroll or pinch to zoom, double-tap to reset.")
    if empty:
        st.caption(
            f"No evidence above the display floor ({overlays.DISPLAY_FLOOR:.0%} of the scale): "
            "the map is empty for this image."
        )


_VIEWER_PICTURES = "viewer_pictures"
_VIEWER_PICTURES_KEPT = 4


def viewer_picture(
    key: str,
    prediction: Prediction,
    view: str,
    *,
    alpha: float,
    show_map: bool,
    window: float,
    level: float,
) -> tuple[overlays.ViewerPicture, bool]:
    """The viewer's picture, encoded once per look, and whether its map is empty.

    The map is made once (for the blend and the empty-map note) and the JPEG encoded
    once; kept for this session's last few looks, so a rerun that changes neither (an
    operating point, a row picked again, a toggle of the boxes) sends the same bytes.
    """
    kept: OrderedDict = st.session_state.setdefault(_VIEWER_PICTURES, OrderedDict())
    # The prediction itself is kept with its picture: its id cannot be reused meanwhile.
    look = (key, id(prediction), view, alpha, show_map, window, level)
    if look in kept:
        kept.move_to_end(look)
        return kept[look][1:]
    heat = overlays.map_for(prediction, view) if show_map else None
    picture = overlays.overlay_for(
        prediction,
        view,
        None,
        alpha=alpha,
        show_map=show_map,
        show_boxes=False,
        window=window,
        level=level,
        heat=heat,
    )
    assert picture is not None  # the caller checked the image
    kept[look] = (prediction, overlays.ViewerPicture.of(picture), overlays.map_is_empty(heat))
    while len(kept) > _VIEWER_PICTURES_KEPT:
        kept.popitem(last=False)
    return kept[look][1:]


def result_context(prediction: Prediction) -> None:
    """Validation sensitivity and specificity at the chosen point, and the region's figure."""
    reports = st.session_state.setdefault("evaluation_reports", {})
    if served.key not in reports:
        reports[served.key] = ModelFolder(served.directory).read_evaluation()
    found = context.result_context(
        reports[served.key],
        op_name,
        prediction.body_region,
        results.body_region_text(prediction),
        has_region_head=prediction.body_region_probability is not None,
    )
    if found is not None:
        st.caption(
            " ".join(line for line in (found.rates, found.region, found.note) if line),
            help="From the model's evaluation on its validation split; the intervals are "
            "95% Wilson intervals of the counts behind each rate.",
        )


def report_header() -> report.ReportHeader:
    """Which model made the results, for the reports (the date is the moment of download)."""
    return report.ReportHeader(served.config.name or "", str(served.config.version or ""))


def report_downloads(upload: UploadedFile, prediction: Prediction) -> None:
    """This result as a report to keep (PDF) or to paste into a chat (PNG); built on click."""
    if threshold is None:
        return
    entry = report.image_report(
        prediction, threshold, op_name, name=upload.name, thresholds=served.config.thresholds
    )
    left, right = st.columns(2)
    left.download_button(
        "Report (PDF)",
        lambda: report.report_pdf(entry, report_header()),
        file_name=report.report_file_name(upload.name, "pdf"),
        mime="application/pdf",
        on_click="ignore",
        icon=":material/picture_as_pdf:",
        key=f"report_pdf_{upload.file_id}",
    )
    right.download_button(
        "Report (PNG, for chat)",
        lambda: report.report_png(entry, report_header()),
        file_name=report.report_file_name(upload.name, "png"),
        mime="image/png",
        on_click="ignore",
        icon=":material/image:",
        key=f"report_png_{upload.file_id}",
    )


def show_result(upload: UploadedFile, prediction: Prediction) -> None:
    """Label and probability first, then the overlay, then the gauge (a phone stacks them so)."""
    if not prediction.ok:
        st.error(prediction.error or f"{upload.name} could not be scored.")
        return
    if prediction.in_distribution is False:
        # No label, no gauge: the model cannot judge this input.
        st.warning(f"**Not assessed.** {results.NOT_ASSESSED_REASON}", icon=":material/block:")
        st.metric("Result", "Not assessed")
        if st.toggle(
            "Show the heat map anyway",
            key=f"show_anyway_{upload.file_id}",
            help="Where the network looked, for curiosity only: it says nothing "
            "about a fracture in this image.",
        ):
            # No strongest-region box: it would read as a finding.
            # No boxes: they would read as a finding.
            viewer(upload.name, prediction, allow_boxes=False)
        else:
            st.columns(2)[0].image(
                display.jpeg(prediction.image), caption=upload.name, width="stretch"
            )
    elif prediction.probability is None or threshold is None:
        # A K-class model without a normal class: every class is a finding, so there is
        # no fracture probability and no threshold, only the classes.
        st.metric("Most probable class", prediction.top_class or "")
        show_classes(upload, prediction)
    else:
        probability = prediction.probability
        label = results.label_for(probability, threshold)
        band = results.confidence_band(probability, threshold)
        left, middle = st.columns(2)
        left.metric(
            "Fracture probability",
            results.format_probability(probability),
            help="Calibrated on the validation split of the model's training data; "
            "shown in whole percent, which is the precision it can bear.",
        )
        middle.metric("Label", label.capitalize())
        with middle:
            st.badge(
                band.capitalize(),
                color=BAND_COLOURS[band],
                help="How far the probability lies from the decision threshold.",
            )
        left.caption(
            f"{op_name.replace('_', ' ').capitalize()} threshold "
            f"{results.format_threshold(threshold)}",
            help=f"Exactly {results.exact_percent(threshold)}.",
        )
        caution = prediction.verdict(threshold).caution
        if caution:
            st.warning(caution[0].upper() + caution[1:] + ".", icon=":material/warning:")
        region = results.body_region_text(prediction)
        if region is not None:
            middle.caption(
                f"Body region: {region}",
                help="Named by the model's region head (hand, leg, hip, shoulder or several "
                "regions), only when it is at least 50% sure.",
            )
        result_context(prediction)
        if prediction.class_probabilities is not None:
            show_classes(upload, prediction)
        else:
            viewer(upload.name, prediction)
        st.plotly_chart(
            display.probability_gauge(probability, threshold),
            key=f"gauge_{upload.file_id}",
            config={"displayModeBar": False},
        )
    if prediction.ok and prediction.class_probabilities is None:
        # A K-class model's map is of its most probable class; its report is not made yet.
        report_downloads(upload, prediction)

    if _is_dicom(upload):
        header = st.expander(
            "Show DICOM header (identifying fields redacted)",
            key=f"dicom_{upload.file_id}",
            on_change="rerun",
        )
        if header.open:
            with header:
                try:
                    fields = describe_dicom(upload.getvalue(), name=upload.name)
                except InvalidImageError as error:
                    st.error(str(error))
                else:
                    st.dataframe(
                        [{"attribute": k, "value": v} for k, v in fields.items()],
                        hide_index=True,
                        width="stretch",
                    )


def show_classes(upload: UploadedFile, prediction: Prediction) -> None:
    """A K-class model: every class's probability, and the heat map of the class picked.

    All classes' maps came from the one scoring pass; picking another class only
    redraws (nothing is scored again).
    """
    names = list(prediction.class_probabilities or {})
    top = prediction.top_class
    picked = st.selectbox(
        "Heat map for",
        names,
        index=names.index(top) if top in names else 0,
        key=f"cam_class_{upload.file_id}",
        format_func=lambda name: f"{name} (most probable)" if name == top else name,
        help="Where the image raised the score of this class. The most probable class is shown first.",
    )
    shown = prediction
    if prediction.class_evidence is not None and picked != prediction.cam_class:
        shown = results.heat_for_class(prediction, picked, served.config)
    image_pair(
        upload.name,
        shown.image,
        shown.heatmap,
        shown.box,
        shown.box_style,
        shown_class=picked,
    )
    st.plotly_chart(
        figures.class_probability_figure(prediction.class_probabilities or {}, shown=picked),
        key=f"classes_{upload.file_id}",
        config={"displayModeBar": False},
    )


def score_batch(uploads: Sequence[UploadedFile]) -> dict:
    """Score the batch once, through the shared queue, drawing the table as results arrive.

    One pass with heat maps at display size (fracture.views.batch): each result's overlay
    goes to the ZIP's worker pool at once, the table keeps its light copy, and the first
    rows a person sees keep their pixels for the viewer (kept by content, like a single
    upload). A bad file is an error row; the rest go on.
    """
    names = [upload.name for upload in uploads]
    sources = [upload.getvalue() for upload in uploads]
    model = served.config
    archive = None
    if threshold is not None:
        archive = results.OverlayArchive(
            float(st.session_state.get(ALPHA_KEY, 0.45)),
            threshold,
            model_name=model.name or "",
            model_version=str(model.version or ""),
            thresholds=model.thresholds,
            max_bytes=results.MAX_PREPARED_ZIP_BYTES,
        )
    scores = batch.BatchScores(archive)
    total = len(uploads)
    progress = st.progress(0.0, text=f"Scoring {total} images…")
    table = st.empty()
    step = served.single.predictor.batch_size  # one redraw per network batch
    for done, prediction in enumerate(
        served.single.iter_predict(sources, names=names, with_cam=True), start=1
    ):
        scores.add(prediction)
        if done % step and done != total:
            continue
        progress.progress(done / total, text=f"Scored {done} of {total}")
        if threshold is None:
            table.dataframe(results.class_results_frame(scores.predictions), hide_index=True)
        else:
            frame = results.results_frame(scores.predictions, threshold)
            shown, columns = _table_columns(frame)
            table.dataframe(
                frame, hide_index=True, width="stretch", column_order=shown, column_config=columns
            )
    progress.empty()
    table.empty()
    for position, prediction in scores.shown_first():
        common.keep_scored(served, sources[position], prediction)
    return {"predictions": scores.predictions, "archive": archive}


def batch_predictions(uploads: Sequence[UploadedFile]) -> dict:
    """The batch's light predictions and its prepared ZIP, scored once per set of uploads."""
    batch_key = (served.key, tuple(upload.file_id for upload in uploads))
    stored = st.session_state.get("batch_results")
    if not stored or stored["key"] != batch_key:
        stored = {"key": batch_key, **score_batch(uploads)}
        st.session_state["batch_results"] = stored
    return stored


def _table_columns(frame) -> tuple[list[str], dict]:
    """The batch table's columns: the error column only when some row failed, so it never
    pushes the rest off screen (the same while results arrive and when they are all in)."""
    shown = ["file", "shown_probability", "label", "confidence", "in_distribution"]
    if (frame["body_region"] != "").any():
        shown.append("body_region")
    if (frame["caution"] != "").any():
        shown.append("caution")
    if (frame["error"] != "").any():
        shown.append("error")
    columns = {
        "file": st.column_config.TextColumn("file", width="medium"),
        "shown_probability": st.column_config.TextColumn(
            "fracture probability",
            width="small",
            help="Most suspicious first; images the model cannot judge and unreadable "
            "files come last.",
        ),
        "label": st.column_config.TextColumn("label", width="small"),
        "confidence": st.column_config.TextColumn("distance from threshold", width="small"),
        "in_distribution": st.column_config.CheckboxColumn(
            "radiograph-like",
            width="small",
            help="Unticked: the out-of-distribution check flagged it (not assessed).",
        ),
        "body_region": st.column_config.TextColumn("body region", width="small"),
        "caution": st.column_config.TextColumn("caution", width="medium"),
        "error": st.column_config.TextColumn("problem", width="medium"),
    }
    return shown, columns


def _whole_row(table_key: str) -> None:
    # A click on any cell picks its row: rewrite the cell selection as that row's.
    state = st.session_state.get(table_key)
    row = results.selected_row(state.get("selection") if state else None)
    if row is not None:
        st.session_state[table_key] = results.row_selection(row)


def _step(table_key: str, step: int, n_rows: int) -> None:
    state = st.session_state.get(table_key)
    current = results.selected_row(state.get("selection") if state else None) or 0
    st.session_state[table_key] = results.row_selection(results.step_row(current, step, n_rows))


def picked_row(table_key: str, event, n_rows: int) -> int:
    """The table row to show (the first when none is picked), with previous/next beside it.

    The buttons move through the rows in the table's order and write the table's
    own selection, so the table and the shown image never disagree.
    """
    row = results.selected_row(event.selection if event else None)
    index = 0 if row is None else min(row, n_rows - 1)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button(
            "Previous",
            key=f"{table_key}_previous",
            on_click=_step,
            args=(table_key, -1, n_rows),
            disabled=index == 0,
            icon=":material/arrow_back:",
        )
        st.caption(f"Image {index + 1} of {n_rows}")
        st.button(
            "Next",
            key=f"{table_key}_next",
            on_click=_step,
            args=(table_key, 1, n_rows),
            disabled=index == n_rows - 1,
            icon=":material/arrow_forward:",
        )
    return index


def class_batch_view(uploads: Sequence[UploadedFile], skipped: Sequence[str]) -> None:
    """A batch for a model without a normal class: each image's most probable class."""
    predictions = batch_predictions(uploads)["predictions"]
    frame = results.class_results_frame(predictions)
    if skipped:
        st.caption(f"Skipped, not an image: {', '.join(skipped)}")
    shown = [c for c in frame.columns if c != "error" or (frame["error"] != "").any()]
    event = st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        on_select=lambda: _whole_row("class_batch_table"),
        selection_mode=["single-row", "single-cell"],
        key="class_batch_table",
        column_order=shown,
        column_config={"class": "most probable class", "error": "problem"},
    )
    model = served.config
    st.download_button(
        "Download results (CSV)",
        results.predictions_csv(
            predictions,
            None,
            model_name=model.name or "",
            model_version=str(model.version or ""),
            class_names=model.class_names,
        ),
        file_name="fracture_predictions.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
    )
    position = int(frame.index[picked_row("class_batch_table", event, len(frame))])
    st.subheader(f"{uploads[position].name}")
    show_result(uploads[position], cam_prediction(uploads[position]))


def study_of(upload: UploadedFile, root: str | None) -> str | None:
    """The upload's study: its DICOM StudyInstanceUID, else its sub-folder in folder mode."""
    known = st.session_state.setdefault("study_of_upload", {})
    if upload.file_id not in known:
        uid = study_instance_uid(upload.getbuffer()) if _is_dicom(upload) else None
        known[upload.file_id] = studies.study_name(uid) if uid else None
    if known[upload.file_id] is None and mode == "Folder":
        return studies.folder_of(upload.name, root)
    return known[upload.file_id]


def study_table(uploads: Sequence[UploadedFile], predictions: Sequence[Prediction]) -> None:
    """Views of one study as one row: its finding from its assessed views (as the DICOM node)."""
    names = [upload.name for upload in uploads]
    root = studies.common_root(names)
    rows = studies.study_rows(
        predictions, names, [study_of(upload, root) for upload in uploads], threshold
    )
    if not rows:
        return
    st.subheader("Studies")
    st.caption(
        "Views of one study (the same DICOM study, or the same sub-folder) read together: a "
        "study is as suspicious as its most suspicious view the model could judge. Views it "
        "cannot judge are excluded and listed."
    )
    st.dataframe(
        studies.studies_frame(rows),
        hide_index=True,
        width="stretch",
        key="study_table",
        column_config={
            "probability": st.column_config.TextColumn("fracture probability", width="small"),
            "views": st.column_config.TextColumn("views assessed", width="medium"),
            "excluded": st.column_config.TextColumn("excluded views", width="medium"),
        },
    )


def batch_view(uploads: Sequence[UploadedFile], skipped: Sequence[str]) -> None:
    """Summary, histogram, table, downloads, and the selected image."""
    if threshold is None:
        class_batch_view(uploads, skipped)
        return
    stored = batch_predictions(uploads)
    predictions = stored["predictions"]

    counts = results.batch_counts(predictions, threshold)
    summary_column, chart_column = st.columns([2, 3])
    with summary_column:
        # A wrapping row, not nested columns: a phone stacks columns one per line.
        with st.container(horizontal=True, gap="small"):
            st.metric("Fracture", counts["fracture"], width=COUNT_WIDTH)
            st.metric("Normal", counts["normal"], width=COUNT_WIDTH)
            st.metric(
                "Not assessed",
                counts["not_assessed"],
                help="Flagged by the out-of-distribution check: the model cannot "
                "judge them, so they get no label.",
                width=COUNT_WIDTH,
            )
            st.metric("Could not be read", counts["error"], width=COUNT_WIDTH)
        st.caption(
            f"Labels at the {op_name.replace('_', ' ')} operating point (threshold "
            f"{results.format_threshold(threshold)})."
        )
        if skipped:
            st.caption(f"Skipped, not an image: {', '.join(skipped)}")
    with chart_column:
        scored = [p.probability for p in predictions if results.is_assessed(p)]
        if scored:
            st.plotly_chart(
                figures.probability_histogram(scored, threshold),
                key="batch_histogram",
                config={"displayModeBar": False},
            )

    frame = results.results_frame(predictions, threshold)
    shown, columns = _table_columns(frame)
    event = st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        on_select=lambda: _whole_row("batch_table"),
        selection_mode=["single-row", "single-cell"],
        key="batch_table",
        column_order=shown,
        column_config=columns,
    )

    study_table(uploads, predictions)

    downloads = st.columns(3)
    model = served.config
    alpha = float(st.session_state.get(ALPHA_KEY, 0.45))
    batch_predictor = served.batch
    shared = served.single
    prepared: results.OverlayArchive | None = stored.get("archive")
    zip_threshold = threshold

    def results_table() -> bytes:
        # From the kept results, relabelled at this operating point: no network (their
        # box columns came with the batch's one pass).
        return results.predictions_csv(
            predictions,
            zip_threshold,
            model_name=model.name or "",
            model_version=str(model.version or ""),
            operating_point=op_name,
            class_names=model.class_names if model.is_multiclass else None,
        )

    def overlay_archive() -> bytes:
        # On click, on a worker thread (no Streamlit calls allowed). The ZIP encoded
        # while the table was drawn, if it was made at this operating point and opacity;
        # otherwise scored again with maps, one batch in memory at a time.
        if prepared is not None and prepared.matches(alpha, zip_threshold):
            data = prepared.bytes()
            if not prepared.too_large:
                return data
        sources = [upload.getvalue() for upload in uploads]
        names = [upload.name for upload in uploads]
        return results.overlay_zip(
            shared.iter_predict(sources, names=names, with_cam=True),
            alpha,
            zip_threshold,
            model_name=model.name or "",
            model_version=str(model.version or ""),
            thresholds=model.thresholds,
        )

    downloads[0].download_button(
        "Download results (CSV)",
        results_table,
        file_name="fracture_predictions.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
    )
    downloads[1].download_button(
        "Download overlays with boxes (ZIP)",
        overlay_archive,
        file_name="fracture_overlays.zip",
        mime="application/zip",
        on_click="ignore",
        icon=":material/folder_zip:",
    )
    batch_threshold, batch_point, header = threshold, op_name, report_header()

    def batch_report() -> bytes:
        # Like the ZIP: on click, on a worker thread, one image in memory at a time.
        sources = [upload.getvalue() for upload in uploads]
        names = [upload.name for upload in uploads]
        entries = (
            report.image_report(
                prediction, batch_threshold, batch_point, name=name, thresholds=model.thresholds
            )
            for name, prediction in zip(
                names, batch_predictor.iter_predict(sources, names=names, with_cam=True)
            )
        )
        return report.batch_pdf(entries, header)

    downloads[2].download_button(
        "Report of every image (PDF)",
        batch_report,
        file_name="fracture_report.pdf",
        mime="application/pdf",
        on_click="ignore",
        icon=":material/picture_as_pdf:",
    )

    index = picked_row("batch_table", event, len(frame))
    position = int(frame.index[index])
    st.subheader(f"{uploads[position].name}")
    if results.selected_row(event.selection if event else None) is None:
        st.caption("The most suspicious image; click a row in the table, or Next, to see another.")
    show_result(uploads[position], cam_prediction(uploads[position]))


@st.fragment
def results_area() -> None:
    """The operating point and everything it changes, as one fragment.

    Picking another point reruns only this: the kept probabilities are labelled again at
    the new threshold and redrawn; the uploads are not read again, the network does not
    run, and the viewer reuses its encoded picture (only its boxes follow the point).
    """
    global threshold, op_name, served
    if active.config.thresholds:
        with picker_slot:
            op_name, threshold = common.operating_point_picker(active.config)
    # else: a K-class model without a normal class names its most probable class; there
    # is no fracture probability, so no operating point to pick.
    if not uploads:
        st.info(
            "Drop radiographs above to score them. A Grad-CAM heat map shows where the "
            "model looked.",
            icon=":material/upload_file:",
        )
        return
    # An upload made while the model loads waits here, with a note, then is scored.
    served = common.get_served_model()
    if served is None:
        return
    skipped = [upload.name for upload in uploads if not _is_image_candidate(upload)]
    images = [upload for upload in uploads if _is_image_candidate(upload)]
    if mode == "Folder":
        # Browsers hand a folder's files over in their own order; people look for paths.
        images.sort(key=lambda upload: upload.name)
    if not images:
        st.warning(
            f"No images among the {len(uploads)} uploaded file(s); skipped, not an image: "
            f"{', '.join(skipped)}"
        )
    elif len(images) == 1 and not skipped:
        show_result(images[0], cam_prediction(images[0]))
    else:
        batch_view(images, skipped)


results_area()
