"""Bench: our batched per-image RandAugment vs torchvision's RandAugment called per image.

Both get the same random uint8 images (N, 3, 32, 32) and the same policy: 2 ops per
image from the 14-op list, magnitude 15 of 31, nearest sampling, grey fill. Ours is
``job.ml.augment.rand_augment`` (every image draws its own ops) on the images as a training
epoch of batches of ``--batch`` takes them: in chunks of K batches per call, K from
``job.ml.augment.chunk_steps`` as ``job.ml.train.Trainer`` sizes it (``--chunk`` to override),
the last chunk ragged as an epoch's is; and, for reference, one call per batch (K=1).
torchvision's ``transforms.v2.RandAugment(num_ops=2, magnitude=15, num_magnitude_bins=31)``
is called once per image, the usual way to get per-image draws from it. One run on one
machine: one warm-up pass over all images each, then the best of ``--repeats`` timed passes
(``time.perf_counter``), the three sides taking turns; torch's thread count is left at
its default for all.

    .venv/bin/python bench/augment.py [--images 5120] [--batch 128] [--chunk K] [--device cpu]

Our default batch is the seed's training batch, 128; 5120 images are 40 such batches, 4
chunks of 10 (CIFAR-10's 390 batches an epoch are 39 chunks).

The last line is ``RESULT ours_ips=<int> torchvision_ips=<int> ratio=<float> chunk=<K>
unchunked_ratio=<float>``: ours chunked vs torchvision, and ours one batch per call.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from job.config import AugmentConfig
from job.ml.augment import chunk_steps, rand_augment


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_times(runs: list[Callable[[], None]], device: torch.device, repeats: int) -> list[float]:
    """Best wall time (s) of each run after one warm-up each; the runs take turns, so a
    passing load on this shared machine hits both sides alike."""
    best = [float("inf")] * len(runs)
    for r in range(repeats + 1):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            _sync(device)
            if r:  # round 0 is the warm-up
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5120, help="images per timed run")
    parser.add_argument("--batch", type=int, default=128, help="our training batch size")
    parser.add_argument("--chunk", type=int, help="batches per call (default: the Trainer's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")
    args = parser.parse_args()

    from torchvision.transforms import v2

    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    policy = AugmentConfig(n_select=2, level=15, n_level=31)
    generator = torch.Generator(device=device).manual_seed(0)  # pixel draws
    choices = torch.Generator().manual_seed(0)  # per-image op picks, on the host
    theirs = v2.RandAugment(num_ops=2, magnitude=15, num_magnitude_bins=31, fill=policy.fill)

    k = args.chunk or chunk_steps(args.batch, images.shape[1:])

    def run_ours(k: int) -> Callable[[], None]:
        def run() -> None:
            for chunk in images.split(k * args.batch):  # (K*B, 3, 32, 32), as the Trainer's
                rand_augment(chunk, policy, generator, choices)

        return run

    def run_torchvision() -> None:
        for image in images:
            theirs(image)

    print(f"device {device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(
        f"{args.images} uint8 images 3x32x32, our batch {args.batch} in chunks of {k} "
        f"batches per call, best of {args.repeats}"
    )
    runs = [run_ours(k), run_ours(1), run_torchvision]
    ours_ips, unchunked_ips, theirs_ips = (
        args.images / s for s in _best_times(runs, device, args.repeats)
    )
    ratio, unchunked_ratio = ours_ips / theirs_ips, unchunked_ips / theirs_ips
    print(f"ours, {k:3d} batches per call:    {ours_ips:12.0f} images/s   {ratio:6.1f}x")
    print(
        f"ours, one batch per call:      {unchunked_ips:12.0f} images/s   {unchunked_ratio:6.1f}x"
    )
    print(f"torchvision v2, once per image:{theirs_ips:12.0f} images/s")
    print(
        f"RESULT ours_ips={round(ours_ips)} torchvision_ips={round(theirs_ips)} "
        f"ratio={ratio:.1f} chunk={k} unchunked_ratio={unchunked_ratio:.1f}"
    )


if __name__ == "__main__":
    main()
