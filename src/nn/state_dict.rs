//! Loading and saving a module's state dict (safetensors).
