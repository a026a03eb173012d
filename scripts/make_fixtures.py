#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures the Rust tests compare against.

    pip install torch torchvision safetensors   # torchvision: nets_a, nets_b
    python3 scripts/make_fixtures.py            # every family
    python3 scripts/make_fixtures.py conv pool  # some families

Each family lives in scripts/fixtures/<family>.py with a `make()` returning named tensors; the
result goes to tests/fixtures/<family>.safetensors, with the torch version (and
torchvision's, for the families that use it) in its metadata.
Re-running is deterministic (seeded generators, CPU, float32).
"""

import importlib
import pathlib
import sys

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv):
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    families = argv or sorted(
        p.stem for p in (ROOT / "scripts" / "fixtures").glob("*.py") if p.stem != "common"
    )
    out_dir = ROOT / "tests" / "fixtures"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}: writing fixtures for {', '.join(families)}")
    for family in families:
        module = importlib.import_module(f"fixtures.{family}")
        tensors = {k: v.contiguous() for k, v in module.make().items()}
        path = out_dir / f"{family}.safetensors"
        metadata = {"torch_version": torch.__version__, "family": family}
        metadata.update(getattr(module, "METADATA", {}))
        if "torchvision" in pathlib.Path(module.__file__).read_text():
            metadata["torchvision_version"] = importlib.import_module("torchvision").__version__
        save_file(tensors, str(path), metadata=metadata)
        size = sum(t.numel() * 4 for t in tensors.values())
        print(f"  {path.relative_to(ROOT)}: {len(tensors)} tensors, {size / 1024:.1f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
