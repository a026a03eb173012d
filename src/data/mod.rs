//! Datasets: the Cityscapes and BDD100K on-disk readers, the built-in synthetic street-scene
//! generator, augmentations and the parallel batch loader (`../shared/spec/datasets.md`).
