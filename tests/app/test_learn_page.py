"""The Learn page in AppTest: a seeded round on phantoms, answered by a script, scored correctly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fracture.config import get_settings
from fracture.data.phantoms import synthesize_phantoms

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
ROOT = Path(__file__).resolve().parents[2]
SEED = 17
N_CASES = 6


@pytest.fixture(scope="module")
def learn_env(tmp_path_factory, tiny_model_dir, fake_imagenet_weights):
    """The tiny model as default and a data folder holding a phantom set with boxes."""
    import fracture.model.imagenet as weights

    base = tmp_path_factory.mktemp("learn_page")
    shutil.copytree(tiny_model_dir, base / "models" / "default")
    dataset = synthesize_phantoms(base / "data" / "phantoms", 60, size=64, seed=4)
    patch = pytest.MonkeyPatch()
    patch.setenv("FRACTURE_CONFIG", str(base / "no-such-config.toml"))
    patch.setenv("FRACTURE_MODELS_DIR", str(base / "models"))
    patch.setenv("FRACTURE_DATA_DIR", str(base / "data"))
    patch.delenv("FRACTURE_ADMIN_PASSWORD", raising=False)
    resolved = weights.ResolvedWeights(path=fake_imagenet_weights, sha256="fake", source="explicit")
    patch.setattr(weights, "resolve_imagenet_weights", lambda *a, **k: resolved)
    get_settings.cache_clear()
    yield dataset
    patch.undo()
    get_settings.cache_clear()


def start_round(seed: int = SEED):
    at = streamlit_testing.AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.switch_page("app_pages/learn.py").run()
    assert not at.exception, [e.value for e in at.exception]
    (cases,) = [w for w in at.number_input if w.label == "Cases in the round"]
    cases.set_value(N_CASES)
    at.number_input(key="learn_seed").set_value(seed)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_same_round_number_gives_the_same_cases_twice_and_never_train(learn_env):
    first = [c.path for c in start_round().session_state["learn_round"]["cases"]]
    second = [c.path for c in start_round().session_state["learn_round"]["cases"]]
    other = [c.path for c in start_round(SEED + 1).session_state["learn_round"]["cases"]]
    assert first == second != other
    assert len(first) == N_CASES
    val = {record.path for record in learn_env.split("val")}
    assert set(first) <= val


def _rate_text(hits: int, n: int) -> str:
    return f"{100 * hits / n:.0f}% ({hits} of {n};"


def test_a_scripted_round_is_scored_correctly(learn_env):
    at = start_round()
    cases = at.session_state["learn_round"]["cases"]
    found = pointed = called_normal = 0
    for number, case in enumerate(cases):
        assert at.subheader[0].value == f"Case {number + 1} of {N_CASES}"
        # The script: right on even cases, wrong on odd ones; it points at the box's
        # centre on the first fractured case it calls and at a corner far off otherwise.
        right = number % 2 == 0
        answer = "fracture" if case.fractured == right else "normal"
        # A browser reruns on the choice, which enables the submit button.
        at.radio(key=f"learn_answer_{number}").set_value(answer).run()
        if answer == "fracture" and case.fractured:
            found += 1
            if pointed == 0:
                x0, y0, x1, y1 = case.boxes[0]
                at.number_input(key=f"learn_x_{number}").set_value(50 * (x0 + x1))
                at.number_input(key=f"learn_y_{number}").set_value(50 * (y0 + y1))
                pointed = 1
            else:
                # x0 is at least 0.3 from the box on a 64-px phantom shaft, far past the tolerance
                far = 0.0 if case.boxes[0][0] > 0.5 else 100.0
                at.number_input(key=f"learn_x_{number}").set_value(far)
                at.number_input(key=f"learn_y_{number}").set_value(far)
        if answer == "normal" and not case.fractured:
            called_normal += 1
        (submit,) = [b for b in at.button if b.label == "Submit and reveal"]
        submit.click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert "Truth" in [m.label for m in at.metric]
        truth = [m for m in at.metric if m.label == "Truth"][0].value
        assert truth == ("Fracture" if case.fractured else "Normal")
        at.button[0].click().run()
    assert at.subheader[0].value == "Your round"
    n_fractured = sum(c.fractured for c in cases)
    summary = at.dataframe[0].value
    you = dict(zip(range(3), summary["you"]))
    assert you[0].startswith(_rate_text(found, n_fractured))
    assert you[1].startswith(_rate_text(called_normal, N_CASES - n_fractured))
    assert you[2].startswith(_rate_text(pointed, n_fractured))
    # the model is scored on the same cases
    assert f"of {n_fractured};" in summary["model"][0]
    (download,) = at.get("download_button")
    assert download.proto.label == "Download my round (CSV)"
