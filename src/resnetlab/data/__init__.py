"""Data: sources, safe decoding, transforms, loaders, statistics and WebDataset shards."""

from .images import ImageDecodeError, open_image
from .load import load_source
from .pipeline import DataConfig, DataPipeline, build_pipeline
from .shard import parse_size, write_shards
from .sources import DataError, Source, Split
from .stats import channel_stats, dataset_stats
from .stream import ShardLoader

__all__ = [
    "DataConfig",
    "DataError",
    "DataPipeline",
    "ImageDecodeError",
    "ShardLoader",
    "Source",
    "Split",
    "build_pipeline",
    "channel_stats",
    "dataset_stats",
    "load_source",
    "open_image",
    "parse_size",
    "write_shards",
]
