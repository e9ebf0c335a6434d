"""Training batches from in-memory uint8 images onto the training device.

The pairs are decoded and pre-resized once (`data/pairs.py`), so a step never decodes an image: it gathers
uint8 rows (4x fewer bytes than float) and converts them to [0, 1] floats on the device. On CUDA the rows are
gathered into page-locked (pinned) staging buffers and copied on a side stream one batch ahead, so the copy
of batch k+1 overlaps the compute of batch k. On the CPU the rows are simply indexed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from medvlm.data.manifest import to_pixels


def device_batches(images: torch.Tensor, tokens: torch.Tensor, batches: Iterable[torch.Tensor],
                   device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float pixels N×1×H×W, tokens) on `device` for each index batch, in order.

    `images` is the uint8 N×H×W tensor on the CPU, `tokens` every pair's tokens (on any device).
    """
    if device.type != "cuda":
        for index in batches:
            yield to_pixels(images[index].to(device)), tokens[index.to(tokens.device)].to(device)
        return
    yield from _cuda_prefetched(images, tokens, list(batches), device)


def _cuda_prefetched(images: torch.Tensor, tokens: torch.Tensor, batches: list[torch.Tensor],
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if not batches:
        return
    largest = max(len(index) for index in batches)
    # Two pinned buffers: one being copied to the GPU while the other is filled for the next batch.
    staging = [torch.empty((largest, *images.shape[1:]), dtype=images.dtype).pin_memory() for _ in range(2)]
    copied = [torch.cuda.Event(), torch.cuda.Event()]
    copy_stream = torch.cuda.Stream(device)

    def start_copy(position: int) -> torch.Tensor:
        index, slot = batches[position], position % 2
        copied[slot].synchronize()  # the copy out of this buffer two batches ago has finished
        buffer = staging[slot][:len(index)]
        torch.index_select(images, 0, index, out=buffer)
        with torch.cuda.stream(copy_stream):
            on_device = buffer.to(device, non_blocking=True)
            copied[slot].record(copy_stream)
        return on_device

    pending = start_copy(0)
    for position, index in enumerate(batches):
        current, compute = pending, torch.cuda.current_stream(device)
        compute.wait_event(copied[position % 2])  # this batch's copy only, not the next one's
        current.record_stream(compute)  # its memory is in use on the compute stream
        if position + 1 < len(batches):
            pending = start_copy(position + 1)
        yield to_pixels(current), tokens[index.to(tokens.device)].to(device, non_blocking=True)
