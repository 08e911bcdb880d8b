"""Cost measurements shared by `mmllm compare` and `mmllm bench`: decoder length, step time, memory."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image

from mmllm.model import MMLLM

_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator counter, or the process RSS high-water mark on Linux."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif _CLEAR_REFS.exists():
        _CLEAR_REFS.write_text("5")


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated, or peak process RSS (CPU: includes the Python runtime)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def tiles_image(model: MMLLM, n_tiles: int) -> Image.Image:
    """An image whose aspect ratio makes the tiler choose a 1 x n grid (n tiles, + thumbnail if n > 1)."""
    side = model.processor.tile_size
    return Image.new("RGB", (side * n_tiles, side), "white")


def decoder_length(model: MMLLM, n_tiles: int, question: str = "What text is in the image?") -> int:
    return len(model.processor.encode_prompt(question, [tiles_image(model, n_tiles)])["input_ids"])


def step_time(model: MMLLM, n_tiles: int, batch_size: int = 4, repeats: int = 3) -> float:
    """Median seconds of one forward + backward on a batch whose images have `n_tiles` tiles."""
    proc = model.processor
    conv = [{"from": "human", "value": "<image>\nWhat text is in the image?"}, {"from": "gpt", "value": "abcdefgh"}]
    batch = proc.collate([proc.encode(conv, [tiles_image(model, n_tiles)]) for _ in range(batch_size)])
    device = next(model.parameters()).device
    args = (batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["pixel_values"].to(device),
            batch["labels"].to(device), batch["layout"])
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(*args).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return sorted(times[1:])[len(times[1:]) // 2]


def tile_sweep(model: MMLLM, max_tiles: int, batch_size: int = 4) -> list[dict]:
    """Decoder length and train-step time as the tile count grows from 1 to max_tiles."""
    was_training = model.training
    model.train()
    rows = [{"tiles": k, "decoder_len": decoder_length(model, k), "step_s": step_time(model, k, batch_size)}
            for k in range(1, max_tiles + 1)]
    model.train(was_training)
    return rows
