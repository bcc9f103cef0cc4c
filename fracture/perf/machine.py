"""Describe the machine a benchmark ran on: CPU, memory, load, library versions, peak FLOP/s."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fracture.perf.config import RESNET50_GMACS_AT_224

if TYPE_CHECKING:
    import keras


__all__ = [
    "describe_machine",
    "peak_gflops",
    "flops_per_image",
    "count_macs",
]


def describe_machine() -> dict[str, Any]:
    """CPU, memory, library versions and the load at this moment (absolute speeds depend on it)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    interesting = sorted(
        f
        for f in flags
        if f in {"fma", "avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16"}
        or f.startswith("amx")
    )
    mem_kb = _meminfo_kb("MemTotal")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    machine: dict[str, Any] = {
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "vendor": info.get("vendor_id", "unknown"),
        "cpu_family": _int_or_none(info.get("cpu family")),
        "cpu_model_number": _int_or_none(info.get("model")),
        "microarchitecture": _microarchitecture(info, flags),
        "cores": _usable_cpus(),
        "threads_per_core": _threads_per_core(info),
        "mhz": _cpu_mhz(info),
        "mhz_source": _cpu_mhz_source(),
        "simd_flags": interesting,
        "ram_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_1m": round(load[0], 2),
        "cpu_pressure_some_avg60": _cpu_pressure(),
    }
    machine["versions"] = _library_versions()
    return machine


def _usable_cpus() -> int:
    """CPUs this process may run on (honours taskset and container cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    packages = (
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "numpy",
        "opencv-python-headless",
        "pillow",
    )
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    versions["onednn"] = "off" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" else "on (default)"
    return versions


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():  # the first CPU describes them all
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def _meminfo_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _threads_per_core(info: dict[str, str]) -> int | None:
    siblings, cores = _int_or_none(info.get("siblings")), _int_or_none(info.get("cpu cores"))
    return siblings // cores if siblings and cores else None


def _lscpu_max_mhz() -> float | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("CPU max MHz:"):
            try:
                return float(line.split(":", 1)[1])
            except ValueError:
                return None
    return None


def _cpu_mhz(info: dict[str, str]) -> float | None:
    # The maximum (turbo) clock is what a busy core runs at; virtual machines
    # often hide it, and then the current clock in /proc/cpuinfo is the best figure.
    return _lscpu_max_mhz() or (float(info["cpu MHz"]) if "cpu MHz" in info else None)


def _cpu_mhz_source() -> str:
    if _lscpu_max_mhz():
        return "lscpu 'CPU max MHz'"
    return "/proc/cpuinfo 'cpu MHz' (no max clock exposed)"


def _cpu_pressure() -> float | None:
    """Percent of the last minute in which some task waited for a CPU (Linux PSI)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(part.split("=") for part in line.split()[1:])
    return float(fields.get("avg60", "nan"))


def _microarchitecture(info: dict[str, str], flags: set[str]) -> str:
    vendor, family = info.get("vendor_id"), _int_or_none(info.get("cpu family"))
    if vendor == "AuthenticAMD" and family == 25:
        return "AMD Zen 4" if "avx512f" in flags else "AMD Zen 3"
    if vendor == "AuthenticAMD" and family == 26:
        return "AMD Zen 5"
    if vendor == "GenuineIntel" and "amx_tile" in flags:
        return "Intel Sapphire Rapids or later (AMX)"
    if vendor == "GenuineIntel" and "avx512f" in flags:
        return "Intel AVX-512 (Skylake-SP or later)"
    return "unknown"


def peak_gflops(machine: dict[str, Any]) -> dict[str, Any]:
    """Peak float32 (and bfloat16) GFLOP/s = cores x GHz x FMA units x SIMD lanes x 2.

    The factor 2 counts a fused multiply-add as two FLOPs. FMA units and lanes
    come from the CPU flags and family, with the assumption written out.
    """
    flags = set(machine.get("simd_flags", []))
    cores, mhz = machine.get("cores") or 1, machine.get("mhz")
    arch = machine.get("microarchitecture", "")
    if "avx512f" in flags and arch == "AMD Zen 4":
        units, lanes = 2, 8
        how = (
            "Zen 4 runs AVX-512 on two 256-bit FMA pipes (each 512-bit FMA is double-pumped): "
            "2 units x 8 fp32 lanes"
        )
    elif "avx512f" in flags:
        units, lanes = 2, 16
        how = (
            "AVX-512: assumed 2 FMA units of 16 fp32 lanes (server parts; "
            "CPUs with one AVX-512 FMA unit have half this peak)"
        )
    elif "avx2" in flags and "fma" in flags:
        units, lanes = 2, 8
        how = "AVX2 + FMA: assumed 2 FMA units of 8 fp32 lanes"
    else:
        units, lanes = 1, 4
        how = "no FMA flags: assumed 1 unit of 4 fp32 lanes (SSE)"
    if mhz is None:
        return {"fp32": None, "bf16": None, "formula": "unknown clock", "how": how}
    ghz = mhz / 1000
    fp32 = cores * ghz * units * lanes * 2
    bf16, bf16_how = None, "no native bfloat16 (avx512_bf16 / AMX) flags"
    if any(f.startswith("amx_bf16") for f in flags):
        bf16 = cores * ghz * 1024
        bf16_how = "AMX: 1024 bf16 FLOPs per cycle per core (one TMUL tile op per 16 cycles)"
    elif "avx512_bf16" in flags:
        bf16 = 2 * fp32
        bf16_how = (
            "AVX-512 BF16: VDPBF16PS does two bf16 products per fp32 lane, so 2 x the fp32 peak"
        )
    return {
        "fp32": round(fp32, 1),
        "bf16": None if bf16 is None else round(bf16, 1),
        "formula": f"{cores} cores x {ghz:.2f} GHz x {units} FMA units x {lanes} lanes x 2",
        "how": how,
        "bf16_how": bf16_how,
    }


def flops_per_image(image_size: int) -> float:
    """Forward-pass FLOPs of ResNet-50 at ``image_size`` (2 x MACs, scaled by pixel count)."""
    return 2 * RESNET50_GMACS_AT_224 * 1e9 * (image_size / 224) ** 2


def count_macs(layers: Sequence["keras.layers.Layer"]) -> int:
    """Multiply-accumulates of one forward pass through the Conv2D and Dense ``layers``.

    Convolutions and the dense head are all but every FLOP of ResNet-50;
    batch normalisation, additions and activations are left out.
    """
    import keras

    total = 0
    for layer in layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            total += height * width * kernel_h * kernel_w * layer.input.shape[-1] * channels_out
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)
