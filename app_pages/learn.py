"""Learn: test yourself on radiographs with radiologists' boxes, then compare with the model.

A round of cases from a val or test split (never train). For each case the
student answers fracture or normal and points at the fracture (a click on the
image, or the two coordinates below it); then the radiologists' boxes and the
model's answer are revealed. Nothing leaves the session unless the student
downloads the round's CSV. Scoring lives in :mod:`fracture.views.learn`.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import streamlit as st

from app_pages import _common as common
from fracture.data.records import DatasetLayoutError
from fracture.inference.verdict import FRACTURE
from fracture.io.images import InvalidImageError, load_image
from fracture.views import browse, display, figures, learn, results

ROUND_KEY = "learn_round"
SEED_KEY = "learn_seed"
DATASET_KEY = "learn_dataset"
SPLIT_KEY = "learn_split"
SIZE_KEY = "learn_size"
CLICK_GRID = 48  # about 2% of the side per grid step, finer than the pointing tolerance of 3%
ANSWER_LABELS = {FRACTURE: "Fracture", "normal": "Normal"}

st.title("Learn")
common.show_model_banner()
st.caption(
    "Test yourself on radiographs that radiologists have marked: decide, point, then see "
    "their boxes and the model's answer. Nothing is stored beyond this session. "
    + common.NOT_FOR_DIAGNOSIS
)

# The model's card and thresholds, without waiting for the network: it loads in the
# background and is needed only when an answer is scored.
active, problem = common.active_model()
if active is None:
    common.show_no_model(problem)
    st.stop()
config = active.config
if not config.thresholds:
    st.info(
        "The active model names one of several classes and gives no fracture probability, "
        "so it cannot be compared with a fracture-or-normal answer. Activate a fracture "
        "model on the Model page.",
        icon=":material/info:",
    )
    st.stop()


@st.cache_data(show_spinner=False, max_entries=64)
def case_image(path: str) -> tuple[bytes, int, int]:
    """A case's radiograph at display size as JPEG, with its width and height."""
    image, _ = display.fit_for_display(load_image(path), None)
    return display.jpeg(image), int(image.shape[1]), int(image.shape[0])


def start_round() -> None:
    # Read from the widgets' state, not from arguments bound at the last render: a value
    # changed in the same interaction as the click would otherwise be missed.
    dataset_root = str(st.session_state[DATASET_KEY])
    split = st.session_state[SPLIT_KEY]
    n, seed = int(st.session_state[SIZE_KEY]), int(st.session_state[SEED_KEY])
    dataset = common.list_dataset(dataset_root)
    op_name, threshold = common.operating_point(config)
    try:
        cases = learn.draw_round(dataset, split, n, seed)
    except ValueError as error:
        common.flash("warning", str(error))
        return
    st.session_state[ROUND_KEY] = {
        "cases": cases,
        "results": [],
        "revealed": False,
        "dataset": Path(dataset_root).name,
        "split": split,
        "seed": seed,
        "operating_point": op_name,
        "threshold": threshold,
    }


def setup() -> None:
    """Choose a dataset, a split, the number of cases and the seed, then start."""
    settings = common.settings()
    folders = browse.dataset_folders(settings.data_dir)
    if not folders:
        st.info(
            "No dataset yet. Download FracAtlas, or write the synthetic phantom set, on the "
            "Dataset page; a round draws its cases from their validation or test images.",
            icon=":material/photo_library:",
        )
        st.page_link(
            "app_pages/dataset.py", label="Open the Dataset page", icon=":material/photo_library:"
        )
        return
    folder = st.selectbox("Dataset", folders, format_func=lambda path: path.name, key=DATASET_KEY)
    try:
        dataset = common.list_dataset(str(folder))
    except (DatasetLayoutError, OSError) as error:
        st.warning(f"This folder cannot be used: {getattr(error, 'reason', error)}")
        return
    splits = learn.eligible_splits(dataset)
    if not splits:
        st.warning(
            "This dataset has no validation or test image with a fracture box, or it has "
            "classes other than fractured and normal. Choose another."
        )
        return
    st.radio(
        "Cases from",
        splits,
        horizontal=True,
        format_func={"val": "validation split", "test": "test split"}.get,
        key=SPLIT_KEY,
        help="Never the training split: the model has learnt those images' answers.",
    )
    left, right = st.columns(2)
    left.number_input(
        "Cases in the round", min_value=2, max_value=50, value=10, step=1, key=SIZE_KEY
    )
    st.session_state.setdefault(SEED_KEY, secrets.randbelow(10_000))
    right.number_input(
        "Round number (seed)",
        min_value=0,
        max_value=999_999,
        step=1,
        key=SEED_KEY,
        help="The same dataset, split, number of cases and round number give the same cases "
        "in the same order: a teacher can give a class the same round.",
    )
    st.button(
        "Start the round",
        type="primary",
        on_click=start_round,
        icon=":material/school:",
    )


def _submit(state: dict, case: learn.Case, number: int) -> None:
    answer = st.session_state.get(f"learn_answer_{number}")
    if answer not in ANSWER_LABELS:
        common.flash("warning", "Choose fracture or normal first.")
        return
    x = st.session_state.get(f"learn_x_{number}")
    y = st.session_state.get(f"learn_y_{number}")
    point = (float(x) / 100.0, float(y) / 100.0) if x is not None and y is not None else None
    served = common.get_served_model()
    if served is None:
        return
    prediction = served.single.predict([str(case.path)], names=[case.name], with_cam=True)[0]
    state["results"].append(
        learn.CaseResult(
            case=case,
            answer=answer,
            point=point,
            model=learn.model_answer(prediction, state["threshold"]),
        )
    )
    state["revealed"] = True


def _next() -> None:
    st.session_state[ROUND_KEY]["revealed"] = False


def ask(state: dict) -> None:
    """One case: the image (click to point), the answer and the point's coordinates."""
    number = len(state["results"])
    case: learn.Case = state["cases"][number]
    st.subheader(f"Case {number + 1} of {len(state['cases'])}")
    try:
        jpeg, width, height = case_image(str(case.path))
    except InvalidImageError as error:
        st.error(f"This image could not be read: {error}")
        return
    x_key, y_key = f"learn_x_{number}", f"learn_y_{number}"
    points = []
    if st.session_state.get(x_key) is not None and st.session_state.get(y_key) is not None:
        points.append(
            figures.PointMark(
                (st.session_state[x_key] / 100.0, st.session_state[y_key] / 100.0),
                "your point",
                figures.COLOUR_STUDENT,
            )
        )
    event = st.plotly_chart(
        figures.radiograph_figure(jpeg, width, height, points=points, click_grid=CLICK_GRID),
        key=f"learn_click_{number}",
        on_select="rerun",
        selection_mode="points",
        config={"displayModeBar": False, "scrollZoom": True},
    )
    clicked = event.selection.points if event and event.selection else []
    if clicked:
        x, y = clicked[0]["x"] / width, clicked[0]["y"] / height
        spot = (round(100 * x, 1), round(100 * y, 1))
        if st.session_state.get(f"learn_clicked_{number}") != spot:
            # A new click moves the point; typed coordinates stay until the next click.
            st.session_state[f"learn_clicked_{number}"] = spot
            st.session_state[x_key], st.session_state[y_key] = spot
            st.rerun()
    st.caption("Click where you see the fracture (scroll or pinch to zoom), or type the point.")
    answer = st.radio(
        "Your answer",
        list(ANSWER_LABELS),
        index=None,
        horizontal=True,
        format_func=ANSWER_LABELS.get,
        key=f"learn_answer_{number}",
    )
    left, right = st.columns(2)
    left.number_input("Across, % from the left", 0.0, 100.0, value=None, step=1.0, key=x_key)
    right.number_input("Down, % from the top", 0.0, 100.0, value=None, step=1.0, key=y_key)
    st.button(
        "Submit and reveal",
        type="primary",
        disabled=answer is None,
        on_click=_submit,
        args=(state, case, number),
        icon=":material/visibility:",
    )


def reveal(state: dict) -> None:
    """The last answered case: the truth, the student's point, and the model's answer."""
    result: learn.CaseResult = state["results"][-1]
    case, model = result.case, result.model
    number = len(state["results"])
    st.subheader(f"Case {number} of {len(state['cases'])}: the answer")
    jpeg, width, height = case_image(str(case.path))
    boxes = [figures.BoxMark(box, "radiologists' box", figures.COLOUR_TRUTH) for box in case.boxes]
    if model.box is not None:
        dash = "dot" if model.box_style == "dotted" else "solid"
        boxes.append(figures.BoxMark(model.box, "model's box", figures.COLOUR_FRACTURE, dash))
    points = []
    if result.point is not None and result.answer == FRACTURE:
        points.append(figures.PointMark(result.point, "your point", figures.COLOUR_STUDENT))
    if model.point is not None:
        points.append(
            figures.PointMark(model.point, "model's peak", figures.COLOUR_FRACTURE, "circle-open")
        )
    truth, yours, models = st.columns(3)
    truth.metric("Truth", "Fracture" if case.fractured else "Normal")
    yours.metric("Your answer", ANSWER_LABELS[result.answer])
    if case.fractured:
        yours.caption(
            "Your point is inside a radiologists' box."
            if result.student_hit
            else "Your point is not inside a radiologists' box."
        )
    if model.verdict in learn.ANSWERS:
        models.metric(
            "Model",
            f"{model.verdict.capitalize()}, {results.format_probability(model.probability)}",
        )
        models.caption(
            f"Fracture probability at the {state['operating_point'].replace('_', ' ')} "
            f"threshold {results.format_threshold(state['threshold'])}"
        )
    else:
        models.metric("Model", "Not assessed" if model.verdict else "Could not score")
        models.caption(results.NOT_ASSESSED_REASON if model.verdict else "")
    st.plotly_chart(
        figures.radiograph_figure(jpeg, width, height, boxes=boxes, points=points),
        key=f"learn_reveal_{number}",
        config={"displayModeBar": False, "scrollZoom": True},
    )
    last = number == len(state["cases"])
    st.button(
        "See the round's result" if last else "Next case",
        type="primary",
        on_click=_next,
        icon=":material/arrow_forward:",
    )


def _new_round() -> None:
    st.session_state.pop(ROUND_KEY, None)


def summary(state: dict) -> None:
    """The round's figures, the student beside the model, and the per-case table."""
    outcome = state["results"]
    score = learn.score_round(outcome)
    st.subheader("Your round")
    st.caption(
        f"{score['n']} cases ({score['n_fractured']} fractured, {score['n_normal']} normal) "
        f"from the {state['split']} split of {state['dataset']}, round number {state['seed']}. "
        "The intervals are wide on purpose: a few cases cannot tell 70% from 90%."
    )
    st.dataframe(
        learn.summary_rows(score),
        hide_index=True,
        width="stretch",
        key="learn_summary",
        column_config={"figure": "", "you": "you", "model": "the model"},
    )
    if score["model_not_assessed"]:
        st.caption(
            f"The model did not assess {score['model_not_assessed']} case(s) (out-of-distribution "
            "check); they count as neither right answer for it."
        )
    st.dataframe(
        [
            {
                "case": index,
                "image": result.case.name,
                "truth": "fracture" if result.case.fractured else "normal",
                "you": result.answer,
                "model": result.model.verdict,
            }
            for index, result in enumerate(outcome, start=1)
        ],
        hide_index=True,
        width="stretch",
        key="learn_cases",
    )
    left, right = st.columns(2)
    left.download_button(
        "Download my round (CSV)",
        learn.round_csv(
            outcome,
            dataset=state["dataset"],
            split=state["split"],
            seed=state["seed"],
            operating_point=state["operating_point"],
            threshold=state["threshold"],
        ),
        file_name=f"fracture_learn_round_{state['seed']}.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
    )
    right.button("Start a new round", on_click=_new_round, icon=":material/refresh:")


common.show_flash()
current = st.session_state.get(ROUND_KEY)
if current is None:
    setup()
elif current["revealed"]:
    reveal(current)
elif len(current["results"]) < len(current["cases"]):
    ask(current)
else:
    summary(current)
