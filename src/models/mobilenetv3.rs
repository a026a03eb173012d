//! MobileNetV3-Large backbone with torchvision key names (LR-ASPP).
