"""Shared data layer: corpus schema, readers, splits, indexing, image features, DataModules.

The DataModules are imported lazily so that readers and splits can be used without importing Lightning.
"""

from common.data.corpus import Corpus, DataError, Item, Review, User

_DATAMODULES = ("AmazonDataModule", "MovieLensDataModule", "POGDataModule", "RecData", "RecDataModule",
                "SampleBuilder")


def __getattr__(name: str):
    if name in _DATAMODULES:
        from common.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'common.data' has no attribute {name!r}")


__all__ = ["Corpus", "DataError", "Item", "Review", "User", *_DATAMODULES]
