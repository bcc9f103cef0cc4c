"""Synthetic "phantom" radiographs of long bones: fractured and normal, or of fracture types.

THESE ARE SYNTHETIC IMAGES, NOT CLINICAL DATA. They exist so that the whole
pipeline (listing, training, evaluation, Grad-CAM, the dashboard) can be run and
tested end to end without patient data, and so that a model can be shown to
learn a fracture-like feature whose location is known exactly. A model trained
on them says nothing about real radiographs.

Each image is rendered as a projection, like an X-ray: a soft-tissue cylinder
around one or two hollow bone tubes. The projected thickness of a hollow tube is
largest at the inner edge of the wall, which gives the two bright cortical bands
and the darker medullary canal of a real long bone without drawing them by hand.
A fracture removes a band of bone across the shaft (a dark gap, transverse or
oblique, with a slightly irregular edge) and, in some images, shifts the distal
fragment sideways. The fracture box written to ``boxes.csv`` is the tight box
around the gap where it crosses the bone.

With ``classes`` (fracture types from :data:`FRACTURE_TYPES`, and ``normal``),
the type decides the picture, so that a K-class model can be trained and tested
without real data: a transverse break is straight across the shaft, an oblique
one runs at 35-55 degrees, a comminuted one has extra lines that cut out
fragments, and a displaced one shifts the distal fragment by a bone radius or
more. Everything else (bone, tissue, exposure, noise) is drawn from the same
distributions for every class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from fracture.data.layouts import load_dataset
from fracture.data.records import LABEL_NAMES, Dataset
from fracture.data.splits import make_splits
from fracture.io.files import atomic_write_text

__all__ = [
    "synthesize_phantoms",
    "render_phantom",
    "Phantom",
    "REGION",
    "FRACTURE_TYPES",
    "NORMAL_CLASS",
]

# --- configurable parameters -------------------------------------------------------------
# Lengths are fractions of the image side, so the look does not depend on ``size``.
REGION = "phantom-long-bone"
BONE_LENGTH = (0.75, 1.4)  # often runs off the image, as a shaft does on a real film
BONE_RADIUS = (0.045, 0.075)  # outer radius: shafts 9-15% of the image wide
CANAL_RATIO = (0.62, 0.78)  # inner / outer radius: the cortex is a visible band
SECOND_BONE_PROBABILITY = 0.5  # radius/ulna or tibia/fibula pairs
TISSUE_RADIUS = (2.3, 3.5)  # soft-tissue envelope, in bone radii
# A gap of 2.5-4.5% of the side is 5-10 px at 224 px, enough to survive the stride-32
# ResNet features that the classifier head sees.
GAP_WIDTH = (0.025, 0.045)
GAP_DEPTH = (0.85, 1.0)  # share of bone removed in the gap: callus and overlap leave a little
OBLIQUE_PROBABILITY = 0.5
OBLIQUE_ANGLE_DEG = (20.0, 45.0)  # transverse fractures get 0-8 degrees
DISPLACEMENT_PROBABILITY = 0.5
DISPLACEMENT = (0.3, 0.9)  # sideways shift of the distal fragment, in bone radii
BOX_MARGIN = 0.01  # padding around the fracture box
# Fracture types (folder names of a typed phantom set) and how each is drawn.
FRACTURE_TYPES: tuple[str, ...] = ("transverse", "oblique", "comminuted", "displaced")
NORMAL_CLASS = "normal"
TYPE_ANGLE_DEG = {  # the main fracture line against the shaft's cross-section
    "transverse": (0.0, 6.0),
    "oblique": (35.0, 55.0),
    "comminuted": (0.0, 10.0),
    "displaced": (0.0, 6.0),
}
TYPE_DISPLACEMENT = (1.0, 1.5)  # displaced type: sideways shift, in bone radii
COMMINUTED_LINES = (2, 3)  # extra lines cutting fragments, besides the main one
COMMINUTED_SPACING = (0.8, 1.5)  # their distance from the main line along the shaft, bone radii
COMMINUTED_ANGLE_DEG = (30.0, 60.0)
# Attenuation per unit of projected thickness (thickness is in image sides).
MU_TISSUE = (0.8, 1.3)
MU_CORTEX = (8.0, 12.0)  # low enough not to saturate, so the canal stays visible
MU_MARROW = (0.2, 0.6)
BACKGROUND = (0.02, 0.08)  # air: dark, never pure black on a real detector
GAMMA = (0.8, 1.25)
CONTRAST = (0.85, 1.15)
BRIGHTNESS = (-0.05, 0.05)
NOISE_SIGMA = (0.01, 0.03)  # quantum noise, in [0, 1] intensity units
BLUR_SIGMA_PX = (0.4, 1.0)  # detector blur
# -----------------------------------------------------------------------------------------

_README = """# Synthetic phantom radiographs: NOT CLINICAL DATA

Every image in this folder is a SYNTHETIC phantom drawn by `fracture.data.phantoms`
(a computer-generated long bone in soft tissue). None comes from a patient. They
are for smoke tests, demos and teaching only; a model trained or evaluated on
them says nothing about real radiographs and must never be used on patients.

- Generated with: `{call}`
- Layout: `{{train,val}}/{{{folders}}}/phantom_NNNNN.png`, 8-bit greyscale
- `manifest.csv`: path, region (`{region}`), hardware (always 0)
- `boxes.csv`: one normalised box (x0, y0, x1, y1) per fractured phantom, around the fracture gap

| split | {header} |
|---|{rule}|
{table}
"""


@dataclass(frozen=True)
class Phantom:
    """One rendered phantom: 8-bit grey pixels and, when fractured, its box."""

    image: np.ndarray  # (size, size) uint8
    fractured: bool
    box: tuple[float, float, float, float] | None  # normalised x0, y0, x1, y1
    kind: str | None = None  # a fracture type or "normal"; None for a binary phantom


def synthesize_phantoms(
    dest: str | os.PathLike[str],
    n: int,
    *,
    size: int = 256,
    seed: int = 0,
    val_fraction: float = 0.2,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """Write ``n`` phantoms to ``dest`` in the folders layout.

    Binary (``classes`` None): exactly ``n // 2`` fractured, in
    ``dest/{train,val}/{fractured,normal}/phantom_XXXXX.png``. With ``classes``
    (names from :data:`FRACTURE_TYPES` and :data:`NORMAL_CLASS`, at least two):
    ``n`` split evenly over them, in ``dest/{train,val}/<class>/``, the class
    deciding how the fracture is drawn. Also writes ``boxes.csv`` (fractured
    images only), ``manifest.csv`` and a README saying the images are synthetic.
    The same arguments give the same files. Returns the dataset as
    :func:`fracture.data.layouts.load_dataset` reads it back.
    """
    names_of_classes = _check_classes(classes)
    if n < len(names_of_classes):
        raise ValueError(f"n must be at least {len(names_of_classes)} (one per class), got {n}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty; choose a new folder")

    if classes is None:
        labels = np.zeros(n, dtype=int)
        labels[: n // 2] = 1
    else:
        labels = np.arange(n) % len(names_of_classes)
    np.random.default_rng(seed).shuffle(labels)
    names = [f"phantom_{index:05d}.png" for index in range(n)]
    splits = make_splits(labels.tolist(), names, {"val": val_fraction}, seed=seed)

    for split in set(splits):
        for class_name in names_of_classes:
            (dest / split / class_name).mkdir(parents=True, exist_ok=True)
    manifest = ["path,region,hardware"]
    boxes = ["path,x0,y0,x1,y1"]
    for index, (name, label, split) in enumerate(zip(names, labels, splits)):
        # One generator per image: image i does not change when n does.
        rng = np.random.default_rng([seed, index])
        if classes is None:
            phantom = render_phantom(rng, size, fractured=bool(label))
        else:
            kind = names_of_classes[int(label)]
            phantom = render_phantom(rng, size, fractured=kind != NORMAL_CLASS, kind=kind)
        rel = f"{split}/{names_of_classes[int(label)]}/{name}"
        if not cv2.imwrite(str(dest / rel), phantom.image):
            raise OSError(f"Could not write {dest / rel}")
        manifest.append(f"{rel},{REGION},0")
        if phantom.box is not None:
            boxes.append(rel + "," + ",".join(f"{v:.5f}" for v in phantom.box))
    atomic_write_text(dest / "manifest.csv", "\n".join(manifest) + "\n")
    atomic_write_text(dest / "boxes.csv", "\n".join(boxes) + "\n")
    dataset = load_dataset(dest, val_fraction=val_fraction, seed=seed)
    shown = dataset.label_names[::-1] if classes is None else dataset.label_names
    table = "\n".join(
        f"| {split} | " + " | ".join(str(counts[name]) for name in shown) + " |"
        for split, counts in dataset.summary().items()
    )
    atomic_write_text(
        dest / "README.md",
        _README.format(
            call=f"synthesize_phantoms(n={n}, size={size}, seed={seed}, "
            f"val_fraction={val_fraction}"
            + ("" if classes is None else f", classes={list(names_of_classes)}")
            + ")",
            folders=",".join(shown),
            region=REGION,
            header=" | ".join(shown),
            rule="|".join("---" for _ in shown),
            table=table,
        ),
    )
    return dataset


def _check_classes(classes: Sequence[str] | None) -> tuple[str, ...]:
    """The class folder names to write, indexed by label: normal and fractured, or the types."""
    if classes is None:
        return (LABEL_NAMES[0], LABEL_NAMES[1])
    known = (*FRACTURE_TYPES, NORMAL_CLASS)
    unknown = [name for name in classes if name not in known]
    if unknown:
        raise ValueError(
            f"Unknown phantom class(es) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    if len(set(classes)) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"Phantom classes must be at least two different names, got {classes}")
    return tuple(classes)


def render_phantom(
    rng: np.random.Generator, size: int, *, fractured: bool, kind: str | None = None
) -> Phantom:
    """Draw one phantom. Nuisance parameters share one distribution for every class,
    so the fracture is the only thing that tells them apart.

    ``kind``: a fracture type of :data:`FRACTURE_TYPES` (drawn as that type) or
    ``"normal"``; None draws the binary phantoms' mix of fractures.
    """
    if kind is not None and kind not in (*FRACTURE_TYPES, NORMAL_CLASS):
        raise ValueError(f"Unknown phantom kind {kind!r}")
    if kind is not None and fractured != (kind != NORMAL_CLASS):
        raise ValueError(f"A {kind!r} phantom cannot have fractured={fractured}")
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32) / size

    # The fracture (or, for a normal image, an equivalent point) lies well inside
    # the frame so that every box is whole.
    point = rng.uniform(0.3, 0.7, size=2)
    theta = rng.uniform(0.0, np.pi)
    length = rng.uniform(*BONE_LENGTH)
    radius = rng.uniform(*BONE_RADIUS)
    along = rng.uniform(-0.2, 0.2) * length  # where on the shaft the point falls
    axis = np.array([np.cos(theta), np.sin(theta)])
    centre = point - along * axis

    attenuation = np.zeros((size, size), np.float32)
    tissue_radius = radius * rng.uniform(*TISSUE_RADIUS)
    two_bones = rng.random() < SECOND_BONE_PROBABILITY
    side = rng.choice([-1.0, 1.0])
    offset = side * radius * rng.uniform(2.2, 3.0)
    if two_bones:
        # The envelope has to hold both bones.
        tissue_radius += abs(offset) / 2
    normal = np.array([-axis[1], axis[0]])
    tissue_centre = centre + (offset / 2 if two_bones else 0.0) * normal
    u, v = _bone_frame(grid_x, grid_y, tissue_centre, theta)
    attenuation += (
        rng.uniform(*MU_TISSUE)
        * _tube_chord(v, tissue_radius, 0.0)[0]
        * _ends(u, length * 1.3, 0.03)
    )
    # Uneven tissue thickness, so that brightness alone does not outline the bone.
    # Smooth noise made small and enlarged: the same look as blurring full-size noise, 50x cheaper.
    lumps = cv2.resize(
        rng.standard_normal((6, 6)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    attenuation *= 1.0 + 0.15 * lumps / (np.abs(lumps).max() + 1e-6)

    mu_cortex = rng.uniform(*MU_CORTEX)
    mu_marrow = rng.uniform(*MU_MARROW)
    canal = rng.uniform(*CANAL_RATIO)
    if kind is None:
        fracture = _draw_fracture(rng, radius) if fractured else None
    else:
        # The type draws from a stream of its own, so that the same seed gives the
        # same bone, tissue, exposure and noise whatever the type: only the break differs.
        fracture_rng = np.random.default_rng(int(rng.integers(2**32)))
        fracture = None if not fractured else _draw_typed_fracture(fracture_rng, radius, kind)
    attenuation += _bone(
        grid_x, grid_y, centre, theta, length, radius, canal, mu_cortex, mu_marrow, fracture, along
    )
    if two_bones:
        second_theta = theta + np.deg2rad(rng.uniform(-4.0, 4.0))
        second_radius = radius * rng.uniform(0.6, 0.9)
        attenuation += _bone(
            grid_x,
            grid_y,
            centre + offset * normal,
            second_theta,
            length * rng.uniform(0.9, 1.05),
            second_radius,
            rng.uniform(*CANAL_RATIO),
            mu_cortex,
            mu_marrow,
            None,
            0.0,
        )

    # Film-like response: bright where much is absorbed, saturating smoothly.
    intensity = 1.0 - np.exp(-attenuation)
    background = rng.uniform(*BACKGROUND)
    intensity = background + (1.0 - background) * intensity
    intensity = np.power(np.clip(intensity, 0.0, 1.0), rng.uniform(*GAMMA))
    intensity = (intensity - 0.5) * rng.uniform(*CONTRAST) + 0.5 + rng.uniform(*BRIGHTNESS)
    intensity = cv2.GaussianBlur(intensity.astype(np.float32), (0, 0), rng.uniform(*BLUR_SIGMA_PX))  # type: ignore[assignment]
    intensity += rng.normal(0.0, rng.uniform(*NOISE_SIGMA), size=intensity.shape).astype(np.float32)
    image = np.clip(np.rint(intensity * 255.0), 0, 255).astype(np.uint8)

    box = None
    if fracture is not None:
        box = _fracture_box(grid_x, grid_y, centre, theta, radius, fracture, along, size)
    return Phantom(image=image, fractured=fractured, box=box, kind=kind)


@dataclass(frozen=True)
class _Fracture:
    angle: float  # of the fracture line against the shaft's cross-section, radians
    gap: float  # width of the gap, image sides
    depth: float  # share of bone removed in the gap
    shift: float  # sideways displacement of the distal fragment, image sides
    wobble: float  # amplitude of the irregular edge, image sides
    phase: float
    # Further straight gaps (offset along the shaft from the main line, image
    # sides; angle, radians) that cut a comminuted fracture into fragments.
    extra_lines: tuple[tuple[float, float], ...] = ()


def _draw_fracture(rng: np.random.Generator, radius: float) -> _Fracture:
    if rng.random() < OBLIQUE_PROBABILITY:
        angle = rng.uniform(*OBLIQUE_ANGLE_DEG)
    else:
        angle = rng.uniform(0.0, 8.0)
    angle = np.deg2rad(angle) * rng.choice([-1.0, 1.0])
    shift = 0.0
    if rng.random() < DISPLACEMENT_PROBABILITY:
        shift = rng.uniform(*DISPLACEMENT) * radius * rng.choice([-1.0, 1.0])
    return _with_gap(rng, angle, shift)


def _with_gap(
    rng: np.random.Generator,
    angle: float,
    shift: float,
    extra_lines: tuple[tuple[float, float], ...] = (),
) -> _Fracture:
    """A fracture with these lines and shift, its gap drawn the same way for every kind."""
    gap = rng.uniform(*GAP_WIDTH)
    return _Fracture(
        angle=float(angle),
        gap=float(gap),
        depth=float(rng.uniform(*GAP_DEPTH)),
        shift=float(shift),
        wobble=float(gap * rng.uniform(0.05, 0.2)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
        extra_lines=extra_lines,
    )


def _draw_typed_fracture(rng: np.random.Generator, radius: float, kind: str) -> _Fracture:
    """A fracture of one type (see the module's docstring); the gap is drawn as for any phantom."""
    angle = np.deg2rad(rng.uniform(*TYPE_ANGLE_DEG[kind])) * rng.choice([-1.0, 1.0])
    shift = 0.0
    if kind == "displaced":
        shift = rng.uniform(*TYPE_DISPLACEMENT) * radius * rng.choice([-1.0, 1.0])
    extra: list[tuple[float, float]] = []
    if kind == "comminuted":
        for index in range(int(rng.integers(COMMINUTED_LINES[0], COMMINUTED_LINES[1] + 1))):
            side = 1.0 if index % 2 == 0 else -1.0
            offset = side * rng.uniform(*COMMINUTED_SPACING) * radius
            tilt = np.deg2rad(rng.uniform(*COMMINUTED_ANGLE_DEG)) * rng.choice([-1.0, 1.0])
            extra.append((float(offset), float(tilt)))
    return _with_gap(rng, angle, shift, tuple(extra))


def _gap_distance(u: np.ndarray, v: np.ndarray, fracture: _Fracture, along: float) -> np.ndarray:
    """Distance to the nearest fracture line: the main one and any extra lines."""
    distance = np.abs(_fracture_side(u, v, fracture, along))
    for offset, angle in fracture.extra_lines:
        line = ((u - along - offset) - np.tan(angle) * v) * np.cos(angle)
        distance = np.minimum(distance, np.abs(line))
    return distance


def _bone_frame(
    grid_x: np.ndarray, grid_y: np.ndarray, centre: np.ndarray, theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) a shaft through ``centre`` at angle ``theta``."""
    dx, dy = grid_x - np.float32(centre[0]), grid_y - np.float32(centre[1])
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    return dx * c + dy * s, -dx * s + dy * c


def _tube_chord(v: np.ndarray, outer: float, inner: float) -> tuple[np.ndarray, np.ndarray]:
    """Projected thickness of a tube's wall and of its hollow at distance ``v`` from its axis."""
    outer_chord = 2.0 * np.sqrt(np.maximum(outer * outer - v * v, 0.0))
    inner_chord = 2.0 * np.sqrt(np.maximum(inner * inner - v * v, 0.0))
    return outer_chord - inner_chord, inner_chord


def _ends(u: np.ndarray, length: float, softness: float) -> np.ndarray:
    """A smooth 0-1 window that ends the shaft at +-length/2."""
    return 1.0 / (1.0 + np.exp(-(length / 2 - np.abs(u)) / softness))


def _fracture_side(u: np.ndarray, v: np.ndarray, fracture: _Fracture, along: float) -> np.ndarray:
    """Signed distance to the (wavy) fracture line; positive on the distal side."""
    edge = fracture.wobble * np.sin(v * (2 * np.pi / max(fracture.gap * 3, 1e-3)) + fracture.phase)
    return ((u - along) - np.tan(fracture.angle) * v) * np.cos(fracture.angle) + edge


def _bone(
    grid_x: np.ndarray,
    grid_y: np.ndarray,
    centre: np.ndarray,
    theta: float,
    length: float,
    radius: float,
    canal: float,
    mu_cortex: float,
    mu_marrow: float,
    fracture: _Fracture | None,
    along: float,
) -> np.ndarray:
    u, v = _bone_frame(grid_x, grid_y, centre, theta)
    gap_mask = None
    if fracture is not None:
        side = _fracture_side(u, v, fracture, along)
        distance = _gap_distance(u, v, fracture, along)
        # The distal fragment slides sideways; the gap stays where the break was.
        v = np.where(side > 0, v - fracture.shift, v)
        # Anti-aliased over one pixel, so the gap has no staircase for a model to key on.
        pixels = grid_x.shape[0]
        gap_mask = np.clip((fracture.gap / 2 - distance) * pixels + 0.5, 0.0, 1.0)
    wall, hollow = _tube_chord(v, radius, radius * canal)
    bone = (mu_cortex * wall + mu_marrow * hollow) * _ends(u, length, 0.01)
    if gap_mask is not None:
        bone *= 1.0 - fracture.depth * gap_mask  # type: ignore[union-attr]
    return bone.astype(np.float32)


def _fracture_box(
    grid_x: np.ndarray,
    grid_y: np.ndarray,
    centre: np.ndarray,
    theta: float,
    radius: float,
    fracture: _Fracture,
    along: float,
    size: int,
) -> tuple[float, float, float, float]:
    u, v = _bone_frame(grid_x, grid_y, centre, theta)
    distance = _gap_distance(u, v, fracture, along)
    # The gap where it crosses the bone, both where the bone was and where the
    # displaced fragment went.
    inside = (np.abs(v) <= radius) | (np.abs(v - fracture.shift) <= radius)
    mask = (distance <= fracture.gap / 2) & inside
    rows, cols = np.nonzero(mask)
    margin = BOX_MARGIN * size
    x0 = max(0.0, cols.min() - margin) / size
    y0 = max(0.0, rows.min() - margin) / size
    x1 = min(float(size), cols.max() + 1 + margin) / size
    y1 = min(float(size), rows.max() + 1 + margin) / size
    return (x0, y0, x1, y1)
