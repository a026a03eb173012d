//! PNG plots of a run: loss and mIoU curves, per-class IoU, expert usage and routing matrices.
