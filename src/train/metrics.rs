//! Evaluation metrics: the confusion matrix, per-class IoU and mIoU as Cityscapes computes them.
