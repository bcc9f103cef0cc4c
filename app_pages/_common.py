"""Streamlit glue shared by ``app.py`` and the pages: settings, cached model, sidebar, admin gate.

Only Streamlit plumbing lives here (caching, session state, widgets that
every page needs). What is computed or drawn comes from :mod:`fracture`,
mostly :mod:`fracture.views`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from fracture.config import Settings, get_settings
from fracture.data.records import Dataset
from fracture.model.folder import ModelConfig, ModelFolder, ModelLoadError
from fracture.views import results, summaries

_log = logging.getLogger(__name__)

__all__ = [
    "NOT_FOR_DIAGNOSIS",
    "keep_keras_state_between_reruns",
    "list_dataset",
    "ActiveModel",
    "ServedModel",
    "active_model",
    "admin_gate",
    "admin_password",
    "cache_prediction",
    "cached_prediction",
    "configure_server_logging",
    "flash",
    "get_served_model",
    "keep_scored",
    "score_upload",
    "scored_before",
    "start_loading_model",
    "hide_chart_toolbars",
    "model_changed",
    "operating_point",
    "operating_point_picker",
    "show_model_banner",
    "path_exists",
    "read_card",
    "render_sidebar",
    "settings",
    "show_flash",
    "show_no_model",
]

NOT_FOR_DIAGNOSIS = "Research demo — not for diagnosis."
OPERATING_POINT_KEY = "operating_point"
_OPERATING_POINT_WIDGET = "operating_point_choice"
SYNTHETIC_BANNER = (
    "**The active model was trained on synthetic phantoms; its output means "
    "nothing for real radiographs.** Activate a model trained on radiographs on "
    "the Model page."
)
ADMIN_OK_KEY = "admin_ok"  # a boolean only: the password itself is never kept
_FLASH_KEY = "flash_messages"
_SIDEBAR_POINT_SLOT = "_sidebar_operating_point"
# How long a looked-up active model is trusted before the registry is asked again:
# a promotion from the command line or another server shows up within this time,
# one made on this server at once (model_changed clears the cache).
_ACTIVE_MODEL_TTL_S = 10
# A wrong password costs this long, which makes guessing from the form slow.
_WRONG_PASSWORD_DELAY_S = 1.0


def settings() -> Settings:
    """The process-wide settings (environment and ``fracture.toml``)."""
    return get_settings()


def configure_server_logging() -> None:
    """The library's log on the server's stderr, with times, at the configured level.

    Hospital IT reads it like any server log: model loads, warnings, and at
    INFO one line per inference batch (its size and time), which is also how
    ``python -m fracture load --server-log`` sees the batches that form.
    """
    from fracture.logs import configure_logging

    try:
        configure_logging(settings().log_level, timestamps=True)
    except ValueError as error:
        configure_logging("INFO", timestamps=True)
        logging.getLogger("fracture").warning("%s; logging at INFO", error)


# --------------------------------------------------------------------------------------
# The active model


@dataclass(frozen=True)
class ActiveModel:
    """The model the registry serves, read without building the network."""

    directory: Path
    key: str  # identifies the model's files: cache key for the network and predictions
    config: ModelConfig
    card: dict[str, Any]


def _fingerprint(directory: Path) -> str:
    # Path plus the files' change times and sizes: a folder replaced in place
    # (git checkout of models/default) gets a new key without hashing 100 MB.
    parts = [str(directory.resolve())]
    folder = ModelFolder(directory)
    for path in (folder.config_path, folder.weights_path, folder.card_path):
        try:
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_mtime_ns}:{stat.st_size}")
        except OSError:
            parts.append(f"{path.name}:missing")
    return "|".join(parts)


@st.cache_data(ttl=_ACTIVE_MODEL_TTL_S, show_spinner=False)
def _lookup_active_model(models_dir: str, model_name: str) -> tuple[ActiveModel | None, str | None]:
    """(model, None) or (None, why not). Arguments are the cache key; settings are read inside."""
    from fracture.model import registry
    from fracture.model.folder import read_config

    del models_dir, model_name  # only the cache key: registry reads the same settings
    try:
        directory = registry.active_model_dir(get_settings())
        config, card = read_config(directory)
    except ModelLoadError as error:
        return None, str(error)
    except (OSError, ValueError) as error:
        return None, f"The model folder could not be read: {error}"
    return ActiveModel(directory, _fingerprint(directory), config, card), None


def active_model() -> tuple[ActiveModel | None, str | None]:
    """The served model and its card, or None and the reason there is none."""
    current = settings()
    return _lookup_active_model(str(current.models_dir), current.model_name)


@dataclass
class ServedModel:
    """One loaded network behind two predictors.

    ``single`` scores the image a person is looking at. It is shared by every
    session of this server: one worker thread runs the requests of all sessions
    in batches (fracture.inference.batching), so colleagues scoring at the same
    moment share network calls instead of queueing on the CPU one image at a time.
    ``batch`` runs the configured batch size for folders. They share one loaded
    network (the Keras model, or the ONNX Runtime session with ``FRACTURE_RUNTIME=onnx``),
    so the weights are in memory once.
    """

    single: Any  # fracture.inference.batching.SharedPredictor
    batch: Any
    key: str
    directory: Path

    @property
    def config(self) -> ModelConfig:
        return self.single.config


def _build_served_model(model_dir: str, key: str) -> ServedModel:
    """Load the network once and make its two predictors.

    In the runtime that ``FRACTURE_RUNTIME`` chooses (fracture.inference.runtime):
    TensorFlow is imported here and nowhere earlier, and not at all with ONNX Runtime.
    """
    from fracture.inference.batching import DEFAULT_MAX_BATCH, SharedPredictor
    from fracture.inference.runtime import load_network
    from fracture.views import display

    current = get_settings()
    network = load_network(model_dir, settings=current)
    # The image a person looks at comes back at display size, its heat map computed at
    # that size once (not at the radiograph's full size and then shrunk).
    single = SharedPredictor(
        network.predictor(
            batch_size=DEFAULT_MAX_BATCH,
            fixed_batch=False,
            display_max_side=display.DISPLAY_MAX_SIDE,
        ),
        max_wait_s=current.batch_wait_ms / 1000,
    )
    batch = network.predictor(batch_size=current.batch_size)
    return ServedModel(single=single, batch=batch, key=key, directory=Path(model_dir))


class ModelLoading:
    """One load of the served model on a background thread.

    Importing TensorFlow and tracing the graph takes seconds (13.6 s to a usable
    page before this, issue 25); pages that do not run the network must not wait
    for it, and an upload made meanwhile waits only for what is left of the load.
    """

    def __init__(self, model_dir: str, key: str) -> None:
        self.model_dir = model_dir
        self.key = key
        self.started = time.monotonic()
        self.served: ServedModel | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fracture-model-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.served = _build_served_model(self.model_dir, self.key)
            _log.info("Model %s ready in %.1f s", self.model_dir, time.monotonic() - self.started)
        except BaseException as error:  # noqa: BLE001 - handed to the page that waits
            self.error = error
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the load has finished (successfully or not)."""
        return self._done.wait(timeout)


def _release_loading(loading: ModelLoading) -> None:
    # A replaced model's worker finishes the requests it already has, then stops.
    if loading.wait(0) and loading.served is not None:
        loading.served.single.close(drain=True)


@st.cache_resource(show_spinner=False, max_entries=1, on_release=_release_loading)
def _model_loading(model_dir: str, key: str) -> ModelLoading:
    """The one background load per process and model; ``key`` changes when the model does."""
    return ModelLoading(model_dir, key)


def _load_served_model(model_dir: str, key: str) -> ServedModel:
    """The served model, waiting for its background load to finish."""
    loading = _model_loading(model_dir, key)
    loading.wait()
    if loading.served is None:
        _model_loading.clear()  # the next run tries again (a fixed file, a freed disk)
        raise loading.error or RuntimeError("the model load stopped without a result")
    return loading.served


def start_loading_model() -> None:
    """Start loading the active model in the background, if it is not loading already.

    Called by ``app.py`` on every run, before any page: the first visitor's
    Dataset or Learn page renders at once while the network is built behind it.
    """
    model, _ = active_model()
    if model is not None:
        _model_loading(str(model.directory), model.key)


_WAIT_NOTE_EVERY_S = 0.25


def get_served_model() -> ServedModel | None:
    """The active model's network, waiting (with a note) while it loads; None when there is none."""
    from fracture.errors import FractureError
    from fracture.model.imagenet import WeightsError

    model, problem = active_model()
    if model is None:
        show_no_model(problem)
        return None
    loading = _model_loading(str(model.directory), model.key)
    if not loading.ready:
        note = st.empty()
        while not loading.wait(_WAIT_NOTE_EVERY_S):
            waited = time.monotonic() - loading.started
            note.info(
                f"The model is still loading ({waited:.0f} s so far). Your upload is kept and "
                "is scored as soon as the model is ready.",
                icon=":material/hourglass_top:",
            )
        note.empty()
    try:
        return _load_served_model(str(model.directory), model.key)
    except (FractureError, ModelLoadError, WeightsError, OSError, ValueError) as error:
        # FractureError: the ONNX runtime's export could not be built or opened.
        st.error(f"The model in `{model.directory}` could not be loaded: {error}")
        return None


def model_changed() -> None:
    """Forget the cached model after a promotion, rollback or activation on this server."""
    _lookup_active_model.clear()
    _model_loading.clear()
    _scored_images.clear()
    st.session_state.pop("prediction_cache", None)
    st.session_state.pop("batch_results", None)


def show_no_model(problem: str | None) -> None:
    """Say that no model is available and how to get one."""
    current = settings()
    st.warning(
        f"**No usable model.** {problem or ''}\n\n"
        f"To get one:\n"
        f"- train on the **Train** page and press **Promote** when it finishes, or\n"
        f"- from a terminal: `python -m fracture train DATA --out runs/NAME`, then promote "
        f"`runs/NAME/model` on the Train page, or\n"
        f"- copy a model folder (with `config.json`, `weights.npz`, `model_card.json`) to "
        f"`{current.models_dir / 'default'}`.\n\n"
        f"The synthetic phantom set on the **Dataset** page trains a demo model in minutes."
    )


def operating_point(config: ModelConfig) -> tuple[str, float]:
    """The operating point chosen on the Predict page and its threshold for ``config``."""
    name = st.session_state.get(OPERATING_POINT_KEY)
    if name not in config.thresholds:
        name = config.operating_point
    return name, float(config.thresholds[name])


def _operating_point_label(name: str) -> str:
    # No threshold in the label: Streamlit keeps a keyed radio's first labels, so
    # after a promotion the old model's thresholds would stay on screen.
    return name.replace("_", " ").capitalize()


def _keep_operating_point() -> None:
    st.session_state[OPERATING_POINT_KEY] = st.session_state[_OPERATING_POINT_WIDGET]


def _show_operating_point_in_sidebar(config: ModelConfig) -> None:
    slot = st.session_state.get(_SIDEBAR_POINT_SLOT)
    if slot is None:
        return
    op_name, threshold = operating_point(config)
    slot.caption(
        f"Operating point: {_operating_point_label(op_name).lower()}, threshold "
        f"{results.format_threshold(threshold)} (change it on Predict)"
    )


def operating_point_picker(config: ModelConfig) -> tuple[str, float]:
    """The operating point selector, on the page itself (a phone folds the sidebar away).

    The choice lives under a plain session key, so it survives a visit to
    another page (Streamlit forgets a widget's state when a page lacks it).
    """
    name, _ = operating_point(config)
    st.session_state[_OPERATING_POINT_WIDGET] = name
    columns = st.columns([3, 2], vertical_alignment="center")
    with columns[0]:
        st.radio(
            "Operating point",
            list(config.thresholds),
            key=_OPERATING_POINT_WIDGET,
            format_func=_operating_point_label,
            horizontal=True,
            on_change=_keep_operating_point,
            help="High sensitivity misses fewer fractures (more false alarms); high "
            "specificity raises fewer false alarms (misses more). Both thresholds were "
            "chosen on the validation split.",
        )
    name, threshold = operating_point(config)
    # Called from a fragment on Predict: the sidebar, outside it, is told here.
    _show_operating_point_in_sidebar(config)
    columns[1].caption(
        f"Threshold {results.format_threshold(threshold)}: a probability at "
        f"or above it is labelled fracture."
    )
    return name, threshold


# Plotly's toolbar covers chart titles on hover, and zoom is by drag or scroll anyway; a
# double click resets. Hidden here for every chart of every page, in one place.
_HIDE_CHART_TOOLBAR = (
    "<style>[data-testid='stPlotlyChart'] .modebar-container {display: none !important;}</style>"
)


def hide_chart_toolbars() -> None:
    """Hide the plotly toolbar on every chart of the page being run (called once, in app.py)."""
    st.html(_HIDE_CHART_TOOLBAR)


def show_model_banner() -> None:
    """A banner on every page while the active model was trained on synthetic data.

    A warning box, not an error box: nothing failed, and load tests count error boxes
    as failed requests.
    """
    from fracture.data.provenance import is_synthetic

    model, _ = active_model()
    if model is not None and is_synthetic(model.card):
        st.warning(SYNTHETIC_BANNER, icon=":material/science:")


def render_sidebar() -> None:
    """Active model, its training data and the not-for-diagnosis notice, on every page."""
    from fracture.data.provenance import training_data_of

    with st.sidebar:
        model, _ = active_model()
        if model is None:
            st.warning("No model available: see the Model page.")
        else:
            headline = summaries.card_headline(model.card)
            name = headline["name"] or model.config.name
            version = headline["version"] or model.config.version
            st.markdown(f"**Model:** {name}  \nversion {version}")
            data = training_data_of(model.card)
            st.caption(f"Trained on {data.get('name')} ({data.get('kind')})")
            auroc = headline["val_auroc"]
            if auroc is not None:
                ci = headline["val_auroc_ci"]
                interval = f" (95% CI {ci[0]:.2f}–{ci[1]:.2f})" if ci else ""
                st.caption(f"Validation AUROC {auroc:.2f}{interval}")
            if model.config.thresholds:
                # A slot the Predict page's results fragment rewrites when the point changes.
                st.session_state[_SIDEBAR_POINT_SLOT] = st.empty()
                _show_operating_point_in_sidebar(model.config)
            else:
                # A K-class model without a normal class: nothing to threshold.
                st.caption(f"Names the most probable of {len(model.config.class_names)} classes")
        st.divider()
        st.caption(NOT_FOR_DIAGNOSIS)


# --------------------------------------------------------------------------------------
# Admin gate


def _secrets() -> Any:
    # st.secrets raises on access when no secrets.toml exists; probe first.
    try:
        return st.secrets if st.secrets.load_if_toml_exists() else None
    except (OSError, ValueError):
        return None


def admin_password() -> str | None:
    """The configured admin password (settings, environment or Streamlit secrets), or None."""
    from fracture.views import auth

    return auth.admin_password(settings(), secrets=_secrets())


def admin_gate(purpose: str) -> bool:
    """True when admin actions are allowed; otherwise shows a password form and returns False.

    With no password configured every visitor is admin (a local install). The
    session remembers only that the password was right; the form clears its
    field on submit so the password is not kept in the widget state either.
    """
    from fracture.views import auth

    expected = admin_password()
    if expected is None:
        return True
    if st.session_state.get(ADMIN_OK_KEY) is True:
        if st.sidebar.button("Lock admin actions", key="admin_lock"):
            st.session_state[ADMIN_OK_KEY] = False
            st.rerun()
        return True
    st.info(f"{purpose} needs the admin password.", icon=":material/lock:")
    with st.form("admin_login", clear_on_submit=True):
        candidate = st.text_input("Admin password", type="password", autocomplete="off")
        submitted = st.form_submit_button("Unlock")
    if submitted:
        if auth.check_password(candidate or "", expected):
            st.session_state[ADMIN_OK_KEY] = True
            st.rerun()
        time.sleep(_WRONG_PASSWORD_DELAY_S)
        st.error("Wrong password.")
    return False


# --------------------------------------------------------------------------------------
# Messages that survive a rerun


def flash(kind: str, message: str) -> None:
    """Queue a message for the next run (after st.rerun, which drops this run's output)."""
    st.session_state.setdefault(_FLASH_KEY, []).append((kind, message))


def show_flash() -> None:
    """Show and forget the queued messages."""
    for kind, message in st.session_state.pop(_FLASH_KEY, []):
        getattr(st, kind)(message)


# --------------------------------------------------------------------------------------
# Datasets


@st.cache_data(show_spinner="Listing the dataset…", ttl=300, max_entries=8)
def list_dataset(root: str) -> Dataset:
    """The dataset at ``root`` (listing only, nothing decoded); cached per path (Dataset, Learn)."""
    from fracture.data.layouts import load_dataset

    return load_dataset(root)


# --------------------------------------------------------------------------------------
# Per-session prediction cache


def cache_prediction(key: tuple[str, ...], value: Any, keep: int = 8) -> None:
    """Remember a prediction (with its heat map) for this session, keeping the last ``keep``.

    Moving the opacity slider or picking another row reruns the page; the
    network must not run again for an image it has already scored.
    """
    cache: OrderedDict = st.session_state.setdefault("prediction_cache", OrderedDict())
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > keep:
        cache.popitem(last=False)


def cached_prediction(key: tuple[str, ...]) -> Any:
    """This session's cached prediction for ``key`` (model key, file id), or None."""
    cache: OrderedDict | None = st.session_state.get("prediction_cache")
    if cache is None or key not in cache:
        return None
    cache.move_to_end(key)
    return cache[key]


@st.cache_resource(show_spinner=False, max_entries=1)
def _scored_images(model_key: str) -> Any:  # noqa: ARG001 - the key: a new model, a new cache
    """Results of this server's model, by content hash: one cache per process, bounded by bytes."""
    from fracture.views.scored import ScoredImages

    return ScoredImages()


def score_upload(served: ServedModel, data: bytes, name: str) -> Any:
    """The prediction for an uploaded image, with its heat map, at display size.

    An image this server has scored before (any session, any file name) comes
    from the process-wide cache (fracture.views.scored) instead of the network.
    The page shows the image at display size: the shared predictor returns it
    so (heat map included, computed at that size), which is what is kept, not
    the full-size pixels (downloads start again from the upload itself); the
    pooled features (only the OOD gate's input) are dropped.
    """
    found = scored_before(served, data, name)
    if found is not None:
        return found
    prediction = served.single.predict([data], names=[name], with_cam=True)[0]
    return keep_scored(served, data, prediction)


def scored_before(served: ServedModel, data: bytes, name: str) -> Any:
    """This server's kept prediction for an upload with these bytes (named ``name``), or None."""
    from fracture.views.scored import content_key

    return _scored_images(served.key).get(content_key(data), name=name)


def keep_scored(served: ServedModel, data: bytes, prediction: Any) -> Any:
    """Keep a prediction made with heat maps for the upload ``data``, at display size.

    Shared by single uploads and a batch's first rows (fracture.views.batch), so the
    image a person opens is found by its content instead of scored again. Returns
    what is kept: the display-size image and map, without the pooled features (only
    the OOD gate's input). A failed prediction is returned but not kept: the error
    may be passing (a worker stopping), so the next request asks again.
    """
    import dataclasses

    from fracture.views import display
    from fracture.views.scored import content_key

    image, heatmap = prediction.image, prediction.heatmap
    if image is not None:
        # A no-op for the shared predictor's results, which come at display size already.
        image, heatmap = display.fit_for_display(image, heatmap)
    prediction = dataclasses.replace(prediction, features=None, image=image, heatmap=heatmap)
    if prediction.ok:
        _scored_images(served.key).put(content_key(data), prediction)
    return prediction


def path_exists(text: str) -> bool:
    """Whether a typed folder exists, without raising on odd input."""
    try:
        return bool(text) and Path(os.path.expanduser(text)).is_dir()
    except (OSError, ValueError):
        return False


def read_card(model_dir: Path) -> dict[str, Any]:
    """A model folder's card, or an empty dict."""
    return ModelFolder(model_dir).read_card()


def keep_keras_state_between_reruns() -> None:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every script run.

    Streamlit (1.67, ``scriptrunner.script_runner._clean_problem_modules``) clears
    the Keras session after each run of any page whenever Keras is imported. Keras 3
    then runs a full ``gc.collect()`` over TensorFlow's heap and clears TensorFlow's
    eager kernel cache. Profiled with py-spy on the Predict page, one session, that
    cleanup took 2.2x the CPU time of the network itself (1,988 samples against
    887), every rerun, every session, a slider move included. This server never
    builds models in a loop (training runs in its own process; the served model is
    built once and cached), which is the leak ``clear_session`` exists for, so the
    Keras part is dropped and the rest of Streamlit's cleanup (matplotlib) kept.
    Idempotent; warns when a Streamlit release has moved the function.
    """
    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:  # pragma: no cover - depends on the Streamlit release
        _log.warning("Streamlit's script runner moved; reruns will clear the Keras session")
        return
    current = getattr(script_runner, "_clean_problem_modules", None)
    if current is None:
        _log.warning("Streamlit's cleanup hook moved; reruns will clear the Keras session")
        return
    if getattr(current, "keeps_keras", False):
        return

    def clean_problem_modules_but_keras() -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close("all")  # what Streamlit's own cleanup does for matplotlib

    clean_problem_modules_but_keras.keeps_keras = True  # type: ignore[attr-defined]
    script_runner._clean_problem_modules = clean_problem_modules_but_keras
    _log.info("Keras state is kept between script runs (the served model is built once)")
