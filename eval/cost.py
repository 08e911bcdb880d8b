"""What a training step and a generation cost: decoder length, step time, FLOPs, model FLOPs
utilisation and peak memory. `mmllm compare` reports these for each architecture; `mmllm bench`
(eval/bench.py) measures them against the peer models.

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` adds up the matrix
multiplications, convolutions and attention of one real forward + backward (docs/metrics.md).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmllm.model import MMLLM
from mmllm.sample import ModelInputs, Sample

_CLEAR_REFS = Path("/proc/self/clear_refs")
QUESTION = "What text is in the image?"
ANSWER = "abcdefgh"
WORDS = ("the", "chart", "shows", "a", "line", "of", "value", "rising", "in", "march", "read", "text")


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


def decoder_length(model: MMLLM, n_tiles: int, question: str = QUESTION) -> int:
    return len(model.processor.encode_prompt(question, [tiles_image(model, n_tiles)]).input_ids)


def train_batch(model: MMLLM, n_tiles: int, batch_size: int) -> ModelInputs:
    """A collated batch of identical one-image question/answer samples with `n_tiles` tiles each."""
    proc = model.processor
    conv = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": ANSWER}]
    return proc.collate([proc.encode(conv, [tiles_image(model, n_tiles)]) for _ in range(batch_size)])


def mixed_samples(model: MMLLM, n: int, max_tiles: int, seed: int = 0) -> list[Sample]:
    """`n` encoded samples of LLaVA-like mixed lengths: a fifth text only, the rest one image of 1 to `max_tiles`
    tiles, answers of 1 to 60 words; the same for every architecture with this seed."""
    import random

    rng, proc = random.Random(seed), model.processor
    out = []
    for i in range(n):
        k = 0 if i % 5 == 4 else rng.randint(1, max_tiles)
        answer = " ".join(rng.choices(WORDS, k=rng.randint(1, 60)))
        question = f"<image>\n{QUESTION}" if k else "Describe a chart in words."
        conv = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        out.append(proc.encode(conv, [tiles_image(model, k)] if k else []))
    return out


def packing_rows(model: MMLLM, samples: list[Sample], pack_to: list[int], device: torch.device, steps: int
                 ) -> list[dict]:
    """Train-step time, padding and real (non-pad) tokens/s of the same samples collated one per row and packed
    into rows of each `pack_to` tokens (0: as long as the longest sample, the padded rows' length); timed in turn,
    so all see the same machine load."""
    proc, longest = model.processor, max(len(s.input_ids) for s in samples)
    batches = {"padded": proc.collate(samples)}
    batches |= {f"packed to {n or longest}": proc.pack(samples, n or longest) for n in pack_to}
    fns = {name: train_step(model.train(), our_inputs(b, device)) for name, b in batches.items()}
    for fn in fns.values():  # warm-up
        fn()
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    model.zero_grad(set_to_none=True)
    rows = []
    for name, batch in batches.items():
        mask, step = batch.attention_mask, statistics.median(times[name])
        rows.append({"batching": name, "rows": mask.shape[0], "row_tokens": mask.shape[1],
                     "padding_fraction": float((mask == 0).sum() / mask.numel()), "step_s": step,
                     "real_tokens_per_s": float(mask.sum()) / step})
    return rows


def prompt_batch(model: MMLLM, n_tiles: int, batch_size: int) -> ModelInputs:
    """The generation prompts matching `train_batch` (question + assistant prefix, no answer)."""
    proc = model.processor
    return proc.collate([proc.encode_prompt(QUESTION, [tiles_image(model, n_tiles)]) for _ in range(batch_size)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of `fn` (CUDA synchronised)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def train_step(model: nn.Module, inputs: dict) -> Callable[[], None]:
    """One forward + backward of `model(**inputs).loss`: ours and the HF peers alike."""
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()

    return run


def step_time(model: nn.Module, inputs: dict, repeats: int = 3) -> float:
    """Median seconds of one forward + backward of `model(**inputs).loss`, after a warm-up step."""
    device = next(model.parameters()).device
    step = train_step(model, inputs)
    step()  # warm-up
    seconds = statistics.median(timed(step, device) for _ in range(repeats))
    model.zero_grad(set_to_none=True)
    return seconds


def tile_sweep(model: MMLLM, max_tiles: int, batch_size: int = 4) -> list[dict]:
    """Decoder length, train-step time and counted train-step FLOPs as the tile count grows from 1 to max_tiles.
    The FLOPs are exact for the shape, so the cost findings do not hang on a shared CPU's timing noise."""
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    rows = []
    for k in range(1, max_tiles + 1):
        inputs = our_inputs(train_batch(model, k, batch_size), device)  # one batch, timed and counted
        rows.append({"tiles": k, "decoder_len": decoder_length(model, k), "step_s": step_time(model, inputs),
                     "step_flops": step_flops(model, inputs)})
    model.train(was_training)
    return rows


def our_inputs(batch: ModelInputs, device: torch.device) -> dict:
    return {"inputs": batch.to(device)}


def step_flops(model: nn.Module, inputs: dict) -> int:
    """FLOPs of one forward + backward of `model(**inputs).loss`, as counted on a real run of it."""
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, inputs)()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs we measure on, by a name fragment; others need
# `--peak_tflops`.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "RTX 4090": 165.2}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
