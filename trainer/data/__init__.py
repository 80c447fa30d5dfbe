"""Training data: procedural SIMD-like classes, augmentation steps, torch datasets."""
