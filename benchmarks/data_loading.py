"""Data loading: our loaders vs a plain torchvision ImageFolder + transforms DataLoader.

Cases: a 224x224 JPEG folder (decoded per epoch in 2 workers, the same images as WebDataset
shards streamed by 2 workers, and decoded once into memory), and the in-memory small-data path
(32x32, CIFAR-like) against ImageFolder on the same images. Every rate is also given per CPU
core of the machine. Also measures what resnet20 consumes in training on this machine, the bar
the small-data path has to clear, and JPEG decoding alone on one core: Pillow against
libjpeg-turbo through torchvision (the shard loader's decoder for JPEG members).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, make_jpeg_folder, write_result  # noqa: E402
from resnetlab.data import DataConfig, build_pipeline, load_source, write_shards  # noqa: E402
from resnetlab.data.images import image_to_uint8, open_image  # noqa: E402
from resnetlab.data.wds import decode_image  # noqa: E402
from resnetlab.train import Trainer, resolve_config  # noqa: E402

REPS = 3


def drain_ours(pipe, split="train"):
    loader = pipe.loader(split, train=True)
    tf = pipe.batch_transform(True, loader.geometric)
    g = torch.Generator().manual_seed(0)

    def run():
        n = 0
        loader.sampler.set_epoch(0)
        for x, _ in loader:
            n += tf(x, g).shape[0]
        return n

    return run


def drain_reference(folder, size, batch, train_tf):
    ds = datasets.ImageFolder(str(folder), transform=train_tf)
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True, drop_last=True
    )

    def run():
        return sum(x.shape[0] for x, _ in loader)

    return run


def decode_per_core(folder: Path, seconds: float = 2.0) -> dict:
    """Single-threaded JPEG decode rate (images/s): Pillow (open_image) against the shard
    loader's decoder (libjpeg-turbo via torchvision, Pillow reading the header for the checks)."""
    blobs = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))[:64]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {
        "pillow_open_image": lambda d: image_to_uint8(open_image(d, 3)),
        "shard_decoder_libjpeg_turbo": lambda d: decode_image(d, 3, "x.jpg"),
    }
    out = {}
    for name, fn in runs.items():
        rates = []
        for _ in range(REPS):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / REPS:
                for d in blobs:
                    fn(d)
                n += len(blobs)
            rates.append(n / (time.perf_counter() - t0))
        out[name] = {"median": sorted(rates)[len(rates) // 2], "samples": rates}
    torch.set_num_threads(threads)
    out["speedup"] = (
        out["shard_decoder_libjpeg_turbo"]["median"] / out["pillow_open_image"]["median"]
    )
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-bench-"))
    results = {}
    load_before = os.getloadavg()  # other work on the machine skews every rate below

    big = make_jpeg_folder(
        tmp / "jpeg224", classes=4, per_class=64, sizes=[(256, 256), (320, 240), (240, 300)]
    )
    ref_tf = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(224),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    common = dict(data=str(big), input_size=224, batch_size=32, val_ratio=0.0, test_ratio=0.0)
    files = build_pipeline(DataConfig(**common, cache="none", num_workers=2))
    # The same images as shards, split as above (shards keep the split they were written with).
    whole = load_source(str(big), val_ratio=0.0, test_ratio=0.0)
    write_shards(whole, tmp / "shards", shard_size_bytes=2 * 2**20)
    shards = build_pipeline(
        DataConfig(**{**common, "data": f"wds:{tmp / 'shards'}"}, num_workers=2)
    )
    t0 = time.perf_counter()
    memory = build_pipeline(DataConfig(**common, cache="memory"))
    decode_once = time.perf_counter() - t0
    results["jpeg_224"] = alternate(
        {
            "reference_imagefolder_2_workers": drain_reference(big, 224, 32, ref_tf),
            "ours_files_2_workers": drain_ours(files),
            "ours_shards_2_workers": drain_ours(shards),
            "ours_in_memory": drain_ours(memory),
        },
        REPS,
    )
    results["jpeg_224"]["decode_once_seconds"] = decode_once

    small = make_jpeg_folder(tmp / "png32", classes=10, per_class=200, sizes=[(32, 32)])
    ref_small = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.25] * 3),
        ]
    )
    small_cfg = DataConfig(
        data=str(small),
        preset="cifar",
        input_size=32,
        batch_size=128,
        val_ratio=0.0,
        test_ratio=0.0,
    )
    small_pipe = build_pipeline(small_cfg)
    results["small_32"] = alternate(
        {
            "reference_imagefolder_2_workers": drain_reference(small, 32, 128, ref_small),
            "ours_in_memory": drain_ours(small_pipe),
        },
        REPS,
    )

    # What resnet20 training consumes (images/s) with the engine's defaults on this machine.
    cfg = resolve_config(
        dict(
            data=str(small),
            preset="cifar",
            input_size=32,
            batch_size=128,
            val_ratio=0.0,
            test_ratio=0.0,
            epochs=1,
            out=str(tmp / "runs"),
            name="consume",
        )
    )
    trainer = Trainer(cfg, verbose=False)
    stats = trainer.train_one_epoch()
    consumed = len(trainer.train_loader) * 128 / stats["seconds"]
    loader_rate = results["small_32"]["ours_in_memory"]["median"]
    results["small_32"]["resnet20_training_consumes"] = consumed
    results["small_32"]["loader_outpaces_training_by"] = loader_rate / consumed
    results["jpeg_decode_one_core"] = decode_per_core(big)
    cores = os.cpu_count() or 1
    for case in ("jpeg_224", "small_32"):
        ref = results[case]["reference_imagefolder_2_workers"]["median"]
        for k, v in list(results[case].items()):
            if isinstance(v, dict):
                v["per_core"] = v["median"] / cores
            if isinstance(v, dict) and k.startswith("ours"):
                v["ratio_vs_reference"] = v["median"] / ref
    write_result(
        "data_loading",
        {
            "repetitions": REPS,
            "unit": "images/s",
            "per_core": "images/s / os.cpu_count()",
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "results": results,
        },
    )
    for case, r in results.items():
        for k, v in r.items():
            if isinstance(v, dict) and "median" in v:
                extra = f"  x{v['ratio_vs_reference']:.1f}" if "ratio_vs_reference" in v else ""
                print(f"{case:9} {k:34} {v['median']:10.0f} img/s{extra}")
            else:
                print(f"{case:9} {k:34} {v:10.2f}")


if __name__ == "__main__":
    main()
