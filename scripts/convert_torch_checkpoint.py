#!/usr/bin/env python3
"""Converts a PyTorch checkpoint or a torchvision model into a safetensors file moeseg loads.

    pip install torch torchvision safetensors

    # a plain state_dict, a Lightning .ckpt (its `state_dict`, `model.` prefixes stripped) or a
    # DataParallel checkpoint (`module.` stripped):
    python3 scripts/convert_torch_checkpoint.py run.ckpt enet.safetensors

    # torchvision ImageNet weights for a backbone (load with `--set model.pretrained=FILE`, or
    # moeseg's `load_imagenet_backbone`: `fc.*` / `classifier.*` are skipped there):
    python3 scripts/convert_torch_checkpoint.py --torchvision resnet50 resnet50.safetensors
    python3 scripts/convert_torch_checkpoint.py --torchvision mobilenet_v3_large mnv3.safetensors

Tensors are written contiguous, in state-dict order, as float32 (`--dtype float16` halves the
file); integer buffers such as `num_batches_tracked` keep their int64 dtype. Nothing is written
unless every tensor converts, and the file is written to a temporary name and renamed.
"""

import argparse
import os
import sys
import tempfile

DEFAULT_STRIP = ["model.", "module.", "net."]
TORCHVISION_MODELS = {
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
    "mobilenet_v3_large": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
}


def load_state_dict(path):
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if hasattr(checkpoint, "state_dict") and not isinstance(checkpoint, dict):
        checkpoint = checkpoint.state_dict()
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict):
        sys.exit(f"{path}: no state dict found (got a {type(checkpoint).__name__})")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(set(checkpoint) - set(tensors))
    if skipped:
        print(f"skipped {len(skipped)} non-tensor entries: {', '.join(skipped[:5])}")
    return tensors


def torchvision_state_dict(name):
    import torchvision

    builder_name, weights_name = TORCHVISION_MODELS[name]
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1
    model = getattr(torchvision.models, builder_name)(weights=weights)
    return model.state_dict()


def strip_prefixes(tensors, prefixes):
    out = {}
    for key, value in tensors.items():
        new = key
        for prefix in prefixes:
            if new.startswith(prefix):
                new = new[len(prefix):]
        if new in out:
            sys.exit(f"stripping {prefixes} maps two keys onto `{new}`; pass --strip explicitly")
        out[new] = value
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", help="checkpoint (.pt, .pth, .ckpt, .bin)")
    parser.add_argument("output", help="safetensors file to write")
    parser.add_argument("--torchvision", choices=sorted(TORCHVISION_MODELS), help="convert torchvision ImageNet weights instead")
    parser.add_argument("--strip", action="append", help=f"key prefix to remove (repeatable; default {DEFAULT_STRIP})")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    if args.torchvision:
        tensors = torchvision_state_dict(args.torchvision)
    elif args.source:
        tensors = load_state_dict(args.source)
    else:
        parser.error("give a checkpoint or --torchvision NAME")
    tensors = strip_prefixes(tensors, args.strip if args.strip else DEFAULT_STRIP)
    dtype = getattr(torch, args.dtype)
    out = {}
    for key, value in tensors.items():
        value = value.detach().cpu().contiguous()
        out[key] = value.to(dtype) if value.is_floating_point() else value.to(torch.int64)
    directory = os.path.dirname(os.path.abspath(args.output))
    fd, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        save_file(out, temporary, metadata={"format": "pt", "converted_by": "moeseg convert_torch_checkpoint.py"})
        os.replace(temporary, args.output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    params = sum(v.numel() for v in out.values())
    print(f"wrote {args.output}: {len(out)} tensors, {params:,} values, {args.dtype}")


if __name__ == "__main__":
    main()
