"""The dashboard before and after its model is ready, and the server's cache of scored images.

Issue 25: a hosted demo link is opened by a whole class at once, often on a
server that has just woken up. The pages that do not run the network must not
wait for it (nor import TensorFlow), an upload made while it loads must be
kept and scored once it is ready, and the same radiograph uploaded again (by
anyone) must not run the network a second time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from test_app import _app, app_env  # noqa: F401 - the module's fixture, reused

from app_helpers import png_bytes

ROOT = Path(__file__).resolve().parents[2]


def _fresh_load(monkeypatch, gate: threading.Event | None = None) -> list[str]:
    """Forget any loaded model; the next load waits for ``gate``. Returns the loads made."""
    from app_pages import _common

    _common._model_loading.clear()
    _common._scored_images.clear()
    real = _common._build_served_model
    loads: list[str] = []

    def slow_build(model_dir: str, key: str):
        loads.append(model_dir)
        if gate is not None:
            assert gate.wait(120), "the test never let the model load"
        return real(model_dir, key)

    monkeypatch.setattr(_common, "_build_served_model", slow_build)
    return loads


def test_the_uploader_takes_a_file_before_the_model_loads_and_scores_it_after(
    app_env,  # noqa: F811
    monkeypatch,
):
    from app_pages import _common

    gate = threading.Event()
    loads = _fresh_load(monkeypatch, gate)
    at = _app().run()
    assert not at.exception, [e.value for e in at.exception]
    model, _ = _common.active_model()
    loading = _common._model_loading(str(model.directory), model.key)
    # The page is drawn, uploader included, while the network is still being built.
    assert not loading.ready
    assert len(at.file_uploader) == 1
    assert any(radio.label == "Operating point" for radio in at.radio)

    at.file_uploader[0].upload("knee.png", png_bytes(3), "image/png")
    timer = threading.Timer(1.0, gate.set)  # the load finishes while the upload waits
    timer.start()
    try:
        at.run()
    finally:
        timer.cancel()
        gate.set()
    assert not at.exception, [e.value for e in at.exception]
    assert loading.ready and len(loads) == 1
    assert any(metric.label == "Fracture probability" for metric in at.metric)


def test_a_page_without_the_network_renders_while_the_model_loads(
    app_env,  # noqa: F811
    monkeypatch,
):
    from app_pages import _common

    gate = threading.Event()  # never set during the page's run: the load stays unfinished
    _fresh_load(monkeypatch, gate)
    try:
        for page in ("app_pages/dataset.py", "app_pages/model.py", "app_pages/learn.py"):
            at = _app().run()
            at.switch_page(page).run()
            assert not at.exception, (page, [e.value for e in at.exception])
            assert at.title, page
        model, _ = _common.active_model()
        assert not _common._model_loading(str(model.directory), model.key).ready
    finally:
        gate.set()


def test_the_same_image_uploaded_twice_is_scored_once(app_env, monkeypatch):  # noqa: F811
    from app_pages import _common

    _fresh_load(monkeypatch)
    model, _ = _common.active_model()
    served = _common._load_served_model(str(model.directory), model.key)
    calls: list[int] = []
    original = served.single.predict

    def counted(sources, *args, **kwargs):
        calls.append(len(sources))
        return original(sources, *args, **kwargs)

    monkeypatch.setattr(served.single, "predict", counted)
    image = png_bytes(5)
    probabilities = []
    # Two sessions (two people), two file names, the same bytes.
    for name in ("first.png", "copy of first.png"):
        at = _app().run()
        at.file_uploader[0].upload(name, image, "image/png")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        probabilities.append(next(m.value for m in at.metric if m.label == "Fracture probability"))
    assert calls == [1]
    assert probabilities[0] == probabilities[1]

    # A different image is scored.
    at = _app().run()
    at.file_uploader[0].upload("other.png", png_bytes(6), "image/png")
    at.run()
    assert calls == [1, 1]


def test_dataset_model_and_learn_pages_do_not_import_tensorflow(app_env):  # noqa: F811
    # A fresh interpreter: this test process imported TensorFlow long ago.
    script = textwrap.dedent(
        """
        import json, sys
        from app_pages import _common
        _common.start_loading_model = lambda: None  # what the pages themselves import
        from streamlit.testing.v1 import AppTest
        seen = {}
        for page in ("app_pages/dataset.py", "app_pages/model.py", "app_pages/learn.py"):
            at = AppTest.from_file("app.py", default_timeout=120).run()
            at.switch_page(page).run()
            seen[page] = [bool(at.exception), "tensorflow" in sys.modules, "keras" in sys.modules]
        print(json.dumps(seen))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {page: [False, False, False] for page in seen}, seen


def test_the_predict_page_scores_with_the_onnx_runtime_without_tensorflow(
    tiny_onnx_model_dir, tmp_path
):
    """FRACTURE_RUNTIME=onnx: the dashboard's own process scores an upload and never
    imports TensorFlow or Keras (a fresh interpreter, as a server starts)."""
    import shutil

    from app_helpers import add_evaluation

    models = tmp_path / "models"
    shutil.copytree(tiny_onnx_model_dir, models / "default")  # with its ONNX export
    add_evaluation(models / "default")
    image = tmp_path / "knee.png"
    image.write_bytes(png_bytes(4))
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file("app.py", default_timeout=120).run()
        at.file_uploader[0].upload("knee.png", Path(sys.argv[1]).read_bytes(), "image/png")
        at.run()
        print(json.dumps({
            "errors": [str(e.value) for e in at.exception] + [e.value for e in at.error],
            "metrics": {m.label: m.value for m in at.metric},
            "tensorflow": "tensorflow" in sys.modules,
            "keras": "keras" in sys.modules,
        }))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FRACTURE_RUNTIME": "onnx",
        "FRACTURE_CONFIG": str(tmp_path / "no-such-config.toml"),
        "FRACTURE_MODELS_DIR": str(models),
        "FRACTURE_DATA_DIR": str(tmp_path / "data"),
        "FRACTURE_RUNS_DIR": str(tmp_path / "runs"),
        "FRACTURE_CACHE_DIR": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [sys.executable, "-c", script, str(image)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["errors"] == []
    assert "Fracture probability" in seen["metrics"], seen["metrics"]
    assert seen["tensorflow"] is False and seen["keras"] is False
