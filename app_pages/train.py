"""Train: start a fine-tuning run in the background, watch it, then promote or discard the model.

The run is a separate process (``fracture.training.jobs``): closing the page does not
stop it, and any page in any browser shows its progress from the run folder.
Everything here is admin-only when an admin password is configured.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_pages import _common as common
from fracture.data.records import summary_classes
from fracture.model import registry
from fracture.model.folder import ModelFolder, ModelLoadError
from fracture.training import jobs
from fracture.training.runs import candidate_dir, discard_candidate, read_confusion, read_metrics
from fracture.training.tasks import TASKS, resolve_task
from fracture.views import browse, figures, summaries

RUN_KEY = "train_run"
FINE_TUNE_POINTS = ("conv5_block1_out", "conv4_block6_out", "conv5_block2_out")
IMAGE_SIZES = (224, 320, 384)
LEARNING_RATES = (3e-5, 1e-4, 3e-4, 1e-3)
POLL_SECONDS = 2

st.title("Train")
common.show_model_banner()
common.show_flash()
settings = common.settings()
if not common.admin_gate("Training and promoting models"):
    st.stop()


@st.cache_data(ttl=30, max_entries=8, show_spinner="Checking the dataset folder…")
def check_folder(path: str, task: str = "classes") -> tuple[str | None, dict | None]:
    """(None, what the run would train on) or (why it cannot, None); cached per path briefly."""
    from fracture.data.provenance import describe_dataset
    from fracture.data.records import DatasetLayoutError, label_from_name

    try:
        dataset = jobs.check_training_data(path, task=task)
    except DatasetLayoutError as error:
        return f"{error.folder}: {error.reason}", None
    except (OSError, ValueError) as error:
        return str(error), None
    described = describe_dataset(dataset)
    classes = dataset.classes
    return None, {
        "layout": dataset.layout,
        # What the run would train on: the fracture task shows the types merged.
        "counts": resolve_task(dataset, task).summary(dataset),
        "made_splits": list(dataset.made_splits),
        "name": described["name"],
        "kind": described["kind"],
        "classes": classes,
        # A choice of task exists only for K classes with a normal one among them.
        "can_merge": bool(classes) and any(label_from_name(c) == 0 for c in classes),
    }


def show_folder_check(problem: str | None, found: dict | None) -> None:
    if problem is not None:
        st.error("This folder cannot be trained on:")
        st.code(problem, language=None)  # literal: paths hold *, _ and other Markdown
        return
    counts = found["counts"]
    names = summary_classes(counts)
    parts = [
        f"{split}: " + ", ".join(f"{row.get(name, 0):,} {name}" for name in names)
        for split, row in counts.items()
    ]
    made = (
        f" The {', '.join(found['made_splits'])} split will be made here (seeded, stratified)."
        if found["made_splits"]
        else ""
    )
    st.success(
        f"{found['name']} ({found['kind']}), {found['layout']} layout. "
        + "; ".join(parts)
        + "."
        + made,
        icon=":material/check:",
    )
    if len(names) > 2:
        st.plotly_chart(figures.class_balance_figure(counts), key="train_balance")


def _use_folder(path: str) -> None:
    st.session_state["train_data"] = path


def offer_data(data_dir: Path) -> None:
    """The first visit: no dataset in the default folder yet, so say how to get one."""
    found = [
        folder
        for folder in browse.dataset_folders(data_dir)
        if check_folder(str(folder))[0] is None
    ]
    st.info(
        "Choose a dataset folder to train on. There is none in the default folder yet: "
        "download **FracAtlas** (4,083 real radiographs) or write the **synthetic phantom set** "
        "(a demo model in minutes) on the Dataset page."
        + (" Or use one already here:" if found else ""),
        icon=":material/photo_library:",
    )
    for folder in found:
        st.button(
            f"Use {folder.name}",
            key=f"use_{folder.name}",
            on_click=_use_folder,
            args=(str(folder),),
            icon=":material/folder_open:",
        )
    st.page_link(
        "app_pages/dataset.py", label="Get FracAtlas or the phantoms", icon=":material/download:"
    )


def pick_task(found: dict | None) -> str:
    """The task picker, where the folder offers a choice (K classes, one of them normal)."""
    if not found or not found.get("can_merge"):
        return "classes"
    return st.radio(
        "What the model learns",
        list(TASKS),
        format_func=lambda name: (
            f"{TASKS[name]} ({len(found['classes'])} classes)" if name == "classes" else TASKS[name]
        ),
        horizontal=True,
        key="train_task",
        help="One class per folder: a probability for each class, and for any fracture "
        "(1 minus that of the normal class). Fracture or not: every class except the normal "
        "one counts as a fracture, and the binary fracture model is trained.",
    )


def start_form() -> None:
    """The dataset folder (checked as it is typed), the run's settings, and Start."""
    from fracture.training.config import TrainConfig

    defaults = TrainConfig()
    data_root = st.text_input(
        "Dataset folder",
        value=str(settings.data_dir),
        key="train_data",
        help="Browse it on the Dataset page first.",
    ).strip()
    problem, found = check_folder(data_root)
    task = pick_task(found)
    if task != "classes":
        problem, found = check_folder(data_root, task)
    if problem is not None and data_root == str(settings.data_dir):
        # The untouched default: nothing is wrong yet, there is just no data.
        offer_data(settings.data_dir)
    else:
        show_folder_check(problem, found)
    with st.form("new_run", border=False):
        run_name = st.text_input("Run name (optional)", placeholder="run-YYYYmmdd-HHMMSS")
        first = st.columns(4)
        epochs = first[0].number_input("Fine-tune epochs", 0, 100, defaults.epochs)
        head_epochs = first[1].number_input(
            "Head epochs",
            0,
            50,
            defaults.head_epochs,
            help="Epochs that train only the new head first.",
        )
        fine_tune_from = first[2].selectbox(
            "Fine-tune after",
            FINE_TUNE_POINTS,
            index=FINE_TUNE_POINTS.index(defaults.fine_tune_from),
            help="Layers after this block output are trained; earlier ones stay ImageNet. "
            "conv4_block6_out trains more (slower, needs more data).",
        )
        lr = first[3].select_slider(
            "Learning rate (fine-tune)",
            LEARNING_RATES,
            value=defaults.lr,
            format_func=lambda v: f"{v:.0e}",
        )
        second = st.columns(4)
        batch_size = second[0].number_input("Batch size", 1, 256, defaults.batch_size)
        image_size = second[1].selectbox(
            "Image size (px)", IMAGE_SIZES, index=IMAGE_SIZES.index(defaults.image_size)
        )
        seed = second[2].number_input("Seed", 0, 2**31 - 1, defaults.seed)
        augment = second[3].toggle(
            "Augmentation",
            value=defaults.augment,
            help="Small rotations, zoom, flips and exposure changes.",
        )
        submitted = st.form_submit_button(
            "Start training",
            type="primary",
            icon=":material/play_arrow:",
            disabled=problem is not None,
        )
    if not submitted:
        return
    try:
        # TrainConfig checks every value (e.g. no epochs at all) before anything starts.
        config = TrainConfig(
            image_size=int(image_size),
            fine_tune_from=fine_tune_from,
            head_epochs=int(head_epochs),
            epochs=int(epochs),
            batch_size=int(batch_size),
            lr=float(lr),
            seed=int(seed),
            augment=bool(augment),
            task=task,
        )
        job = jobs.start_training(
            data_root, run_name.strip() or None, config=config, settings=settings
        )
    except jobs.JobBusyError as error:
        st.error(str(error))
        return
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as error:
        st.error("Could not start training:")
        st.code(str(error), language=None)
        return
    st.session_state[RUN_KEY] = str(job.run_dir)
    common.flash("success", f"Started run {job.name} (process {job.pid}).")
    st.rerun()


def pick_run(runs: list[dict]) -> dict | None:
    """The run to show: the one just started, else the running one, else the newest."""
    if not runs:
        return None
    by_dir = {str(run["run_dir"]): run for run in runs}
    chosen = st.session_state.get(RUN_KEY)
    if chosen not in by_dir:
        running = next((run for run in runs if run["running"]), None)
        chosen = str((running or runs[0])["run_dir"])
        st.session_state[RUN_KEY] = chosen
    # Names only: Streamlit keeps a keyed selectbox's first labels, so a state in
    # the label ("running") would go stale; the state is shown below instead.
    st.selectbox("Run", list(by_dir), key=RUN_KEY, format_func=lambda d: by_dir[d]["name"])
    return by_dir[st.session_state[RUN_KEY]]


def show_progress(run_dir: Path, status: dict) -> summaries.RunProgress:
    progress = summaries.run_progress(status)
    columns = st.columns([4, 2, 2])
    with columns[0]:
        if progress.fraction is not None:
            st.progress(progress.fraction, text=progress.text)
        else:
            st.write(progress.text)
    columns[1].metric("State", progress.label.capitalize())
    columns[2].metric(
        "Time left",
        progress.eta or "–",
        help="Estimated once the first epoch is done, from how fast the epochs run.",
    )
    if status.get("epoch") and status.get("epochs"):
        st.caption(
            f"Epoch {status['epoch']}/{status['epochs']} ({progress.phase})"
            + (
                f", batch {status.get('batch')}/{status.get('batches')}"
                if status.get("batches")
                else ""
            )
        )
    if progress.state in {"failed", "interrupted", "error"}:
        # Once, and literally: Markdown would eat the * of a glob and the _ of a name.
        st.error("The run stopped with this error:")
        st.code(status.get("message") or "no message recorded", language=None)
        tail = jobs.log_tail(run_dir)
        if tail:
            with st.expander("Last lines of the training log"):
                st.code(tail, language=None)
    skipped = status.get("skipped_files") or []
    if skipped:
        st.warning(f"{len(skipped)} unreadable file(s) were skipped:")
        st.code("\n".join(str(p) for p in skipped[:20]), language=None)
    return progress


def show_curves(run_dir: Path, live_confusion: bool = True) -> None:
    history = read_metrics(run_dir)
    if history:
        # A K-class run's epoch AUROC is the macro average over its classes.
        confusion = read_confusion(run_dir)
        classes = len(confusion["classes"]) if confusion else 2
        auroc_name = f"Macro AUROC over {classes} classes" if classes > 2 else "AUROC"
        st.plotly_chart(figures.training_curves_figure(history, auroc_name), key="training_curves")
    else:
        st.caption("Loss and AUROC curves appear after the first epoch.")
    if live_confusion:
        show_live_confusion(run_dir)


def show_live_confusion(run_dir: Path) -> None:
    """The latest epoch's validation confusion matrix of a K-class run, as it trains."""
    confusion = read_confusion(run_dir)
    if confusion is None or set(confusion["classes"]) == {"normal", "fractured"}:
        return  # a fracture model's result shows its own matrix, at the chosen threshold
    latest = confusion["epochs"][-1]
    st.plotly_chart(
        figures.class_confusion_figure(
            latest["matrix"],
            confusion["classes"],
            f"Validation confusion matrix after epoch {latest['epoch']}",
        ),
        key="live_confusion",
    )
    st.caption(
        "Rows: the true class. Columns: the class the model ranks first. Darker: a larger "
        "share of the row."
    )


def show_result(run: dict) -> None:
    """The candidate's validation results, the active model's beside them when comparable, and
    what to do with the candidate."""
    from fracture.data.provenance import is_synthetic, training_data_of

    model_dir = candidate_dir(run["run_dir"])
    report = ModelFolder(model_dir).read_evaluation()
    card = common.read_card(model_dir)
    active, _ = common.active_model()
    comparable = active is not None and summaries.same_dataset(card, active.card)
    active_report = ModelFolder(active.directory).read_evaluation() if comparable else None
    promoted = registry.version_of(model_dir, settings)
    data = training_data_of(card)
    st.subheader("Result on the validation split")
    st.caption(f"Trained on {data.get('name')} ({data.get('kind')}).")
    columns = st.columns(2)
    if report and report.get("classes"):
        # A K-class model: its final (calibrated) confusion matrix; per-class figures
        # are on the Model page once it is promoted.
        with columns[0]:
            st.plotly_chart(
                figures.class_confusion_figure(
                    report["confusion_matrix"],
                    report["classes"],
                    "Confusion matrix (most likely class)",
                ),
                key="run_confusion",
            )
    elif report:
        point = report.get("operating_point", "high_sensitivity")
        matrix = (report.get("operating_points") or {}).get(point, {}).get("confusion_matrix")
        if matrix:
            with columns[0]:
                st.plotly_chart(
                    figures.confusion_figure(
                        matrix, f"Confusion matrix ({point.replace('_', ' ')})"
                    ),
                    key="run_confusion",
                )
        curves = {"new model": report}
        if active_report and not (promoted and promoted.active):
            curves["active model"] = active_report
        with columns[1]:
            st.plotly_chart(figures.roc_figure(curves), key="run_roc")
    if promoted is None:
        comparison = summaries.compare_metrics(card, active.card if comparable else None)
        if not comparable:
            comparison = comparison.drop(columns=["active model", "difference"])
        if not comparison.empty:
            st.dataframe(
                comparison,
                hide_index=True,
                width="stretch",
                column_config={
                    name: st.column_config.NumberColumn(format="%.2f")
                    for name in ("new model", "active model", "difference")
                },
            )
        if active is not None and not comparable:
            other = training_data_of(active.card)
            st.caption(
                f"The active model was trained and validated on other data "
                f"({other.get('name')}), so its figures are not shown beside these: "
                f"they would not compare like with like."
            )
    else:
        where = "the active model" if promoted.active else "a stored version (not active)"
        st.success(f"This run's model is promoted as {promoted.name}, {where}.")
        return
    synthetic = is_synthetic(card)
    confirmed = True
    if synthetic:
        st.warning(
            "This model was trained on **synthetic phantoms**. Promoted, it would label "
            "every radiograph anyone uploads, and its output means nothing for real "
            "radiographs.",
            icon=":material/science:",
        )
        confirmed = st.checkbox(
            "I understand: promote it anyway, for a demo", key=f"confirm_synthetic_{run['name']}"
        )
    actions = st.columns([1, 1, 4])
    if actions[0].button(
        "Promote", type="primary", icon=":material/rocket_launch:", disabled=not confirmed
    ):
        try:
            version = registry.promote(model_dir, settings=settings)
        except (ModelLoadError, FileExistsError, OSError, ValueError) as error:
            st.error("Promotion refused:")
            st.code(str(error), language=None)
        else:
            common.model_changed()
            common.flash("success", f"Promoted as {version.name}; predictions now use it.")
            st.rerun()
    if actions[1].button(
        "Discard",
        icon=":material/delete:",
        help="Delete this run's model (the curves and log stay).",
    ):
        try:
            discard_candidate(model_dir, settings=settings)
        except (FileNotFoundError, OSError, ValueError) as error:
            st.error(f"Could not discard: {error}")
        else:
            common.flash("info", f"Discarded the model of run {run['name']}.")
            st.rerun()


def offer_delete(run: dict) -> None:
    """Delete a finished run that has no model worth keeping (failed, cancelled, discarded).

    Only after a tick: a deleted run cannot be brought back.
    """
    sure = st.checkbox(
        f"Delete run {run['name']} for good: its log, curves and any model in it",
        key=f"confirm_delete_{run['name']}",
    )
    if st.button(
        "Delete this run",
        icon=":material/delete_forever:",
        key="delete_run",
        disabled=not sure,
        help="Removes the run folder. Tick the box above first.",
    ):
        try:
            jobs.delete_run(run["run_dir"], settings)
        except (OSError, ValueError) as error:
            st.error(str(error))
        else:
            st.session_state.pop(RUN_KEY, None)
            common.flash("info", f"Deleted run {run['name']}.")
            st.rerun()


def run_view(run_dir: Path, was_live: bool) -> None:
    """Status, curves and, once finished, the result; reruns itself every few seconds while live."""
    run = next((r for r in jobs.list_runs(settings) if Path(r["run_dir"]) == run_dir), None)
    if run is None:
        st.warning(f"Run folder {run_dir.name} disappeared.")
        return
    progress = show_progress(run_dir, run["status"])
    if was_live and progress.finished:
        # A full rerun stops the polling and shows the finished run's actions.
        st.rerun()
    if run["running"] and st.button("Cancel run", icon=":material/stop_circle:"):
        with st.spinner("Stopping the run…"):
            final = jobs.cancel(run_dir, settings)
        common.flash("info", f"Run stopped: {final.get('message', final.get('state'))}")
        st.rerun()
    has_result = run["has_model"] and progress.state == "completed"
    # A finished model's result shows its final confusion matrix: the last epoch's is not repeated.
    show_curves(run_dir, live_confusion=not has_result)
    if has_result:
        show_result(run)
    elif progress.finished and not run["running"]:
        offer_delete(run)


runs = jobs.list_runs(settings)
# Open on a first visit; once runs exist, the run below is what people come for.
with st.expander("New training run", expanded=not runs, icon=":material/add:"):
    start_form()

run = pick_run(runs)
if run is None:
    st.info("No training runs yet.")
    st.stop()
live = bool(run["running"])
st.fragment(run_every=POLL_SECONDS if live else None)(run_view)(Path(run["run_dir"]), live)
