#!/usr/bin/env python3
"""Reads a folder of TensorBoard event files with TensorBoard's own EventAccumulator and prints
every scalar and image as JSON: {"scalars": {tag: [[step, value], ...]},
"images": {tag: [[step, width, height, png_hex], ...]}}. Used by tests/tensorboard.rs."""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: read_tensorboard.py EVENT_DIR")
    acc = event_accumulator.EventAccumulator(
        sys.argv[1],
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0},
    )
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "images": {}}
    for tag in tags["scalars"]:
        out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
    for tag in tags["images"]:
        out["images"][tag] = [
            [e.step, e.width, e.height, e.encoded_image_string.hex()]
            for e in acc.Images(tag)
        ]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
