"""The model card's words (fracture.model.card) say what the probability is made of."""

from __future__ import annotations

from fracture.model.card import render_card_markdown


def _card(weight: float | None) -> dict:
    card = {
        "name": "m",
        "version": "1",
        "localiser": {
            "trained_on": "boxes",
            "box_threshold": 0.37,
            "pointing_game": {"hits": 52, "n": 74, "rate": 0.7027, "ci": [0.59, 0.79]},
        },
    }
    if weight is not None:
        card["localiser_weight"] = weight
    return card


def test_the_card_says_when_the_heads_peak_joins_the_probability():
    weighted = render_card_markdown(_card(4.117))
    assert "weight 4.12" in weighted and "exactly as it was" not in weighted
    for plain in (render_card_markdown(_card(None)), render_card_markdown(_card(0.0))):
        assert "leaves the probability exactly as it was" in plain and "weight" not in plain
