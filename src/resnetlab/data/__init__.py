"""Data: sources, safe decoding, transforms, loaders and statistics."""

from .images import ImageDecodeError, open_image
from .load import load_source
from .pipeline import DataConfig, DataPipeline, build_pipeline
from .sources import DataError, Source, Split
from .stats import channel_stats, dataset_stats

__all__ = [
    "DataConfig",
    "DataError",
    "DataPipeline",
    "ImageDecodeError",
    "Source",
    "Split",
    "build_pipeline",
    "channel_stats",
    "dataset_stats",
    "load_source",
    "open_image",
]
