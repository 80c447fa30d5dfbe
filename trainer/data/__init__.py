"""Training data: procedural SIMD-like classes, augmentation steps, torch datasets.

Main entry points (see each module for details)::

    from trainer.data import SyntheticDataset, CompositionDataset, AlphamattingDataset, MixedDataset
    from trainer.data import build_dataset, worker_init_fn, SAMPLE_KEYS
    from trainer.data.synthetic import generate, write_dataset, contact_sheet
    from trainer.data.transforms import matting_pipeline, build_pipeline

Every dataset item is ``{"image", "fg", "bg": 3×S×S, "alpha", "trimap": 1×S×S (float32; trimap holds
0/128/255), "class_id": int64}``.
"""

from trainer.data.datasets import (
    ALPHAMATTING_HELD_OUT,
    ALPHAMATTING_TRAIN,
    SAMPLE_KEYS,
    VIEWS,
    AlphamattingDataset,
    CompositionDataset,
    HeldOutError,
    MattingDataset,
    MixedDataset,
    SyntheticDataset,
    build_dataset,
    check_trainable,
    default_backgrounds,
    to_tensors,
    worker_init_fn,
)

__all__ = [
    "ALPHAMATTING_HELD_OUT",
    "ALPHAMATTING_TRAIN",
    "SAMPLE_KEYS",
    "VIEWS",
    "AlphamattingDataset",
    "CompositionDataset",
    "HeldOutError",
    "MattingDataset",
    "MixedDataset",
    "SyntheticDataset",
    "build_dataset",
    "check_trainable",
    "default_backgrounds",
    "to_tensors",
    "worker_init_fn",
]
