"""One settings object for the whole project.

Values come, lowest priority first, from the dataclass defaults, a TOML file
(``$FRACTURE_CONFIG`` or ``./fracture.toml``), and ``FRACTURE_<FIELD>``
environment variables. Nothing else in the package invents a path: anything
that needs a folder asks :func:`get_settings`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["Settings", "get_settings", "PROJECT_ROOT", "RUNTIMES"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_ENV_PREFIX = "FRACTURE_"
# The values of Settings.runtime.
RUNTIMES = ("auto", "tensorflow", "onnx")


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fracture"


@dataclass(frozen=True)
class Settings:
    """Configurable parameters, with the reason for each default."""

    # ``models/`` holds versioned model folders; ``models/default`` is the
    # FracAtlas model shipped in git. Which one is served is the registry's
    # business (models/ACTIVE, see fracture.model.registry.active_model_dir).
    models_dir: Path = PROJECT_ROOT / "models"
    # The model served while models/ACTIVE does not exist yet.
    model_name: str = "default"
    # Datasets browsed by the dashboard and used by ``train`` when no path is given.
    data_dir: Path = PROJECT_ROOT / "data"
    runs_dir: Path = PROJECT_ROOT / "runs"
    # User cache for converted ImageNet weights and feature caches.
    cache_dir: Path = field(default_factory=_default_cache_dir)
    # Explicit ImageNet weights file; first in the resolution order.
    imagenet_weights: Path | None = None
    batch_size: int = 16
    # How long the dashboard's shared inference worker waits for other sessions'
    # requests after one arrives (fracture.inference.batching). One network call
    # takes 100-300 ms here, so 5 ms costs a lone user nothing visible, and
    # requests that arrive while the network runs are batched without any wait.
    batch_wait_ms: int = 5
    # "float32" or "bfloat16" for every Predictor; None follows the model, which
    # recommends bfloat16 only after `fracture bench --apply` checked it on val.
    inference_precision: str | None = None
    # 40000 x 40000 decompression bombs must fail fast; the largest radiographs
    # (detector panels of 43 x 43 cm at 0.1 mm) are about 4300 x 4300 = 18.5 MP.
    max_image_pixels: int = 60_000_000
    min_image_side: int = 32
    # Admin gate for training/promotion in the dashboard; None means open.
    admin_password: str | None = None
    # Working folder of `fracture dicom listen` (received studies, results not yet
    # delivered, health); the dashboard's Inbox reads the same folder.
    dicom_spool: Path = PROJECT_ROOT / "dicom-spool"
    # The library's log (DEBUG, INFO, WARNING, ERROR) on stderr of the CLI and the
    # dashboard server; at INFO the server logs one line per inference batch.
    log_level: str = "INFO"
    # Which runtime the dashboard server runs the network in: "tensorflow" (Keras,
    # bfloat16 where the CPU computes it natively), "onnx" (the model folder's ONNX
    # export in ONNX Runtime: the server never imports TensorFlow, about a fifth of
    # its memory), or "auto", which picks per machine
    # (fracture.inference.runtime.choose_runtime says how). Training and the CLI's
    # other commands keep TensorFlow.
    runtime: str = "auto"

    def __post_init__(self) -> None:
        # Frozen: normalised through object.__setattr__ ("ONNX" in an env file is meant).
        object.__setattr__(self, "runtime", str(self.runtime).strip().lower())
        if self.runtime not in RUNTIMES:
            raise ValueError(
                f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r} "
                "(FRACTURE_RUNTIME or runtime in fracture.toml)"
            )

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "Settings":
        """Build settings from defaults, then the TOML file, then the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = config_file or environ.get(_ENV_PREFIX + "CONFIG")
        path = Path(path) if path else PROJECT_ROOT / "fracture.toml"
        if path.is_file():
            with path.open("rb") as handle:
                values.update(tomllib.load(handle))
        elif config_file is not None:
            raise FileNotFoundError(f"Settings file {path} does not exist")
        for f in dataclasses.fields(cls):
            env_value = environ.get(_ENV_PREFIX + f.name.upper())
            if env_value not in (None, ""):
                values[f.name] = env_value
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
        return cls(**{name: _coerce(cls, name, value) for name, value in values.items()})


def _coerce(cls: type[Settings], name: str, value: Any) -> Any:
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    kind = str(default.type)
    if value is None:
        return None
    if "Path" in kind:
        path = Path(os.path.expanduser(str(value)))
        return path if path.is_absolute() else PROJECT_ROOT / path
    if kind.startswith("int"):
        return int(value)
    return str(value)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.load()
