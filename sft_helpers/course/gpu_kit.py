"""The GPU kit: what the GPU machine's image lacks for `bench gpu`, in one folder that travels with the
working tree (at most 64 MiB, a path git ignores).

The image has Python 3.12, torch 2.11 (CUDA 13), transformers 5.17, accelerate and peft, but no
bitsandbytes, trl, datasets, flash-attn or kernels, and nothing downloads there. Of these `bench gpu`
needs bitsandbytes only (QLoRA; the bench reads every version through `importlib.metadata` and never
imports trl or datasets). Its wheel holds one native library per CUDA, ROCm and XPU version (125 MB);
the kit keeps the package's Python files, its metadata (transformers and peft look for it), the CPU
library and the CUDA 13 one: about 5 MB.

    sft-course gpu-kit                       # builds build/gpu-kit/, prints its size
    PYTHONPATH=build/gpu-kit python3 -m sft_helpers.course.bench gpu --out $OUT/benchmarks.md   # there
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path

KIT_PACKAGES = ("bitsandbytes",)
CUDA_LIBRARY = "libbitsandbytes_cuda130.so"  # the image's torch is built for CUDA 13.0
LIMIT_MIB = 64
_NATIVE = re.compile(r"libbitsandbytes_\w+\.(so|dll|dylib)$")
RUN_THERE = "PYTHONPATH={kit} python3 -m sft_helpers.course.bench gpu --out $OUT/benchmarks.md"


def kit_files(package: str, keep_library: str = CUDA_LIBRARY) -> list[tuple[Path, str]]:
    """`(source file, path inside the kit)` for an installed distribution: its files as its RECORD lists
    them (package and metadata, no scripts or compiled caches), without the native libraries of other
    CUDA / ROCm / XPU versions than `keep_library` (the CPU library stays).

    >>> names = [p for _, p in kit_files("bitsandbytes")]
    >>> "bitsandbytes/__init__.py" in names, "bitsandbytes/libbitsandbytes_cuda118.so" in names
    (True, False)
    """
    dist = importlib.metadata.distribution(package)
    out = []
    for f in dist.files or []:
        name = f.as_posix()
        if name.startswith("..") or "__pycache__" in name or name.endswith(".pyc"):
            continue
        base = name.rsplit("/", 1)[-1]
        if _NATIVE.match(base) and base not in (keep_library, "libbitsandbytes_cpu.so"):
            continue
        out.append((Path(dist.locate_file(f)), name))
    return out


def build_kit(out: str | Path = "build/gpu-kit", packages=KIT_PACKAGES, keep_library: str = CUDA_LIBRARY,
              limit_mib: float = LIMIT_MIB) -> dict:
    """Copy `packages` (`kit_files`) into a fresh `out` folder; returns `{"path", "bytes", "files",
    "packages": {name: version}}`. Raises when the kit would not travel (over `limit_mib`) or when the
    kept library is missing."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    total, count = 0, 0
    for package in packages:
        files = kit_files(package, keep_library)
        if package == "bitsandbytes" and not any(p.endswith(keep_library) for _, p in files):
            raise FileNotFoundError(f"the installed bitsandbytes has no {keep_library}")
        for source, name in files:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            total, count = total + target.stat().st_size, count + 1
    if total > limit_mib * 2**20:
        raise ValueError(f"the kit holds {total / 2**20:.1f} MiB, more than the {limit_mib} MiB that travel")
    return {"path": str(out), "bytes": total, "files": count,
            "packages": {p: importlib.metadata.version(p) for p in packages}}


def main(out: str = "build/gpu-kit") -> int:
    """`sft-course gpu-kit`: build the kit and say how to run the bench with it on the GPU machine."""
    kit = build_kit(out)
    versions = ", ".join(f"{p} {v}" for p, v in kit["packages"].items())
    print(f"{kit['path']}: {kit['files']} files, {kit['bytes'] / 2**20:.1f} MiB ({versions}; "
          f"limit {LIMIT_MIB} MiB)\non the GPU machine, carry {kit['path']} and run:\n  "
          + RUN_THERE.format(kit=kit["path"]))
    return 0
