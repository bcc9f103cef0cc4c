"""The Predict page's batch at the engine's speed (issue 25), driven by AppTest.

A batch goes once through the shared queue, in full batches; the image shown first and
the ZIP come from that one pass; a new operating point re-labels the kept results
without the network. The network's calls are counted at the engine, the one place
every prediction passes through.
"""

from __future__ import annotations

import io
import zipfile

import pytest
from test_app import TIMEOUT, _open, _served, app_env  # noqa: F401 - the module's fixture

from app_helpers import png_bytes


def _count_network_calls(monkeypatch, served) -> list[int]:
    """Record the batch size of every network call either predictor makes."""
    sizes: list[int] = []
    for engine in (served.single.predictor.engine, served.batch.engine):
        original = engine.run

        def counted(images, with_cam, _original=original):
            sizes.append(len(images))
            return _original(images, with_cam)

        monkeypatch.setattr(engine, "run", counted)
    return sizes


@pytest.mark.slow  # about 40 s: TensorFlow and the tiny model load for this module
def test_a_batch_runs_the_network_once_and_a_new_operating_point_not_at_all(app_env, monkeypatch):  # noqa: F811
    at = _open("app_pages/predict.py")
    sizes = _count_network_calls(monkeypatch, _served(app_env))
    uploader = at.file_uploader[0]
    for seed in range(5):
        uploader.upload(f"view{seed}.png", png_bytes(100 + seed), "image/png")
    uploader.upload("broken.png", b"not an image", "image/png")
    at.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    # One full batch for the five images: no padding, no second pass for the image shown.
    assert sizes == [5]
    table = at.dataframe[0].value
    assert len(table) == 6 and table["label"].tolist()[-1] == "could not be read"
    assert any(m.label == "Fracture probability" for m in at.metric)  # the first row, shown

    # The ZIP was encoded while the table was drawn: one overlay per image, the broken
    # file listed, and no network call to make it.
    archive = at.session_state["batch_results"]["archive"]
    with zipfile.ZipFile(io.BytesIO(archive.bytes())) as members:
        names = members.namelist()
        assert sorted(n for n in names if n.endswith(".png")) == [
            f"view{seed}_gradcam.png" for seed in range(5)
        ]
        assert "broken.png" in members.read("errors.txt").decode()

    probabilities = dict(zip(table["file"], table["probability"]))
    from fracture.views import display

    encodes: list[int] = []
    encode = display.jpeg
    monkeypatch.setattr(display, "jpeg", lambda *a, **k: encodes.append(1) or encode(*a, **k))
    for point, threshold in (("high_specificity", 0.7), ("high_sensitivity", 0.5)):
        at.radio(key="operating_point_choice").set_value(point).run(timeout=TIMEOUT)
        assert not at.exception, [e.value for e in at.exception]
        relabelled = at.dataframe[0].value
        for name, label in zip(relabelled["file"], relabelled["label"]):
            if name == "broken.png":
                continue
            expected = "fracture" if probabilities[name] >= threshold else "normal"
            assert label == expected, (point, name, probabilities[name])
        caption = f"operating point (threshold {threshold:.1%})"
        assert any(caption in str(c.value) for c in at.caption), caption
    assert sizes == [5], "a new operating point ran the network"
    # The shown image's picture was encoded once, before; only its boxes follow the point.
    assert encodes == [], "a new operating point encoded the shown picture again"
