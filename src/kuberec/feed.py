"""The documented name of the training feed (README, "Reading it for training"): `kuberec.feed.make_dataset` and
friends, which live beside the lake they read, in `kuberec.lake.feed`. Library code imports that module."""

from kuberec.lake.feed import (
           FeedArrays,
           FeedError,
           TableArrays,
           load_arrays,
           load_table_arrays,
           make_dataset,
           make_table_dataset,
)

__all__ = ["FeedArrays", "FeedError", "TableArrays", "load_arrays", "load_table_arrays", "make_dataset",
           "make_table_dataset"]
