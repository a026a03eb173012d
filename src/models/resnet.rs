//! ResNet-50/101 backbone with torchvision key names (DeepLabv3+, PSPNet).
