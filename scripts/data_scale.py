"""What the training data costs at LLaVA-665k scale, and what length-grouped batching saves.

1. Memory and load time. A LLaVA-format JSONL of `--n` records (LLaVA-665k-like text; image paths to a
   handful of real small images) is loaded three ways, each in a fresh process: the old in-RAM list of
   records (`read_records`), the new JSONL index (`FileIndex`) and the parquet shards of the same records
   (`mmllm data shard`, read by `ShardReader`). Printed: resident memory the load added, load time, and the
   bytes a DataLoader worker receives when the index is pickled.
2. Padding. A synthetic mix (OCR and chart QA, easy and hard, merged) is batched for one epoch as training
   batches it, shuffled (EpochSampler) and length-grouped (LengthGroupedSampler); every sample's exact
   token count comes from the processor, so the fraction of pad tokens is what the collated batches hold.
   Measured for the tiny NVLM-D config (32 px tiles of 2 tokens) and for NVLM-D at the paper's scale
   (448 px tiles of 256 tokens, 1-D tile tags).

Run: nice .venv/bin/python scripts/data_scale.py --out runs/data_scale
"""
from __future__ import annotations

import argparse
import gc
import json
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORDS = ("the", "chart", "shows", "sales", "of", "three", "stores", "which", "one", "grew", "most", "in", "march",
         "answer", "with", "a", "single", "word", "describe", "image", "what", "is", "written", "on", "sign", "and")
LOADS = ("list", "index", "shards")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def make_llava_jsonl(path: Path, n: int, images: list[str]) -> None:
    """`n` LLaVA-style records: 1 to 4 question/answer rounds of 5 to 120 words each (LLaVA-665k averages
    ~1.2 kB a record), every record with one of `images`."""
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(n):
            turns = []
            for r in range(rng.randint(1, 4)):
                question = " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
                turns += [{"from": "human", "value": ("<image>\n" if r == 0 else "") + question},
                          {"from": "gpt", "value": " ".join(rng.choices(WORDS, k=rng.randint(5, 120)))}]
            fh.write(json.dumps({"id": f"r{i:06d}", "image": images[i % len(images)], "conversations": turns}) + "\n")


def measure_load(kind: str, path: str) -> dict:
    """Run in a fresh process: the resident memory and time one load adds."""
    from mmllm.jsonl import read_records
    from mmllm.train.index import FileIndex
    from mmllm.train.shards import ShardReader

    gc.collect()
    before, start = rss_bytes(), time.perf_counter()
    loaded = {"list": lambda: read_records(path, ("conversations",))[0], "index": lambda: FileIndex(path),
              "shards": lambda: ShardReader(path)}[kind]()
    seconds = time.perf_counter() - start
    gc.collect()
    return {"kind": kind, "records": len(loaded), "seconds": seconds, "rss_mb": (rss_bytes() - before) / 2**20,
            "pickle_mb": len(pickle.dumps(loaded)) / 2**20}


def load_table(root: Path, n: int) -> list[dict]:
    from mmllm.train.shards import write_shards
    from mmllm.train.synth import synthesize

    images = root / "images"
    synthesize("ocr", images, 8, seed=0, level="hard", overwrite=True)  # 8 real small PNGs of varied sizes
    src = root / f"llava-{n}.jsonl"
    if not src.is_file():
        make_llava_jsonl(src, n, [str(p) for p in sorted((images / "images").glob("*.png"))])
    shards = root / f"shards-{n}"
    if not (shards / "index.npz").is_file():
        start = time.perf_counter()
        summary = write_shards(src, shards)
        print(f"sharded {summary.n:,} records into {len(summary.shards)} shards in {time.perf_counter() - start:.1f} s "
              f"({sum(f.stat().st_size for f in shards.iterdir()) / 2**20:,.0f} MiB)", flush=True)
    rows = []
    for kind in LOADS:
        target = shards if kind == "shards" else src
        out = subprocess.run([sys.executable, __file__, "--measure", kind, str(target)], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {kind:<7} {rows[-1]['records']:>9,} records  {rows[-1]['seconds']:6.1f} s  "
              f"+{rows[-1]['rss_mb']:8.1f} MiB RSS  {rows[-1]['pickle_mb']:8.1f} MiB pickled", flush=True)
    return rows


def synth_mix(root: Path, n: int) -> Path:
    """`n` samples of each task and level, merged into root/train.jsonl (ids and image paths made unique)."""
    from mmllm.train.synth import synthesize

    lines = []
    for task in ("ocr", "chart"):
        for level in ("easy", "hard"):
            folder = root / f"{task}-{level}"
            synthesize(task, folder, n, seed=0, level=level, overwrite=True)  # the scratch folder of an earlier run
            for line in (folder / "train.jsonl").read_text().splitlines():
                row = json.loads(line)
                row.update(id=f"{folder.name}-{row['id']}", image=f"{folder.name}/{row['image']}")
                lines.append(json.dumps(row))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


def processors() -> dict:
    """The tiny D config's processor, and D at the paper's scale: 448 px tiles, 256 tokens each, 1-D tags
    (a one-block, narrow tower stands in for InternViT: only its tile geometry matters here)."""
    import yaml

    from mmllm.config import EncoderConfig, LLMConfig, MMLLMConfig, ProcessorConfig
    from mmllm.model import MMLLM

    repo = Path(__file__).resolve().parents[1]
    tiny = yaml.safe_load((repo / "configs" / "nvlm_d_tiny.yaml").read_text())["model"]
    llm = LLMConfig(options={**tiny["llm"]["options"], "max_position_embeddings": 4096})
    configs = {
        "tiny D (32 px tiles, 2 tokens)": MMLLMConfig(
            arch="nvlm_d", encoder=EncoderConfig(**tiny["encoder"]), llm=llm,
            processor=ProcessorConfig(**tiny["processor"]), pixel_shuffle=tiny["pixel_shuffle"]),
        "paper-scale D (448 px tiles, 256 tokens)": MMLLMConfig(
            arch="nvlm_d", llm=llm, pixel_shuffle=2, encoder=EncoderConfig(
                image_size=448, feature_layer=-1, options={"embed_dim": 32, "depth": 1, "num_heads": 2,
                                                           "patch_size": 14})),
    }
    return {name: MMLLM(config).processor for name, config in configs.items()}


def padding_table(mix: Path, batch_sizes: list[int]) -> list[dict]:
    from mmllm.train.data import ConversationDataset
    from mmllm.train.sampling import EpochSampler, LengthGroupedSampler

    rows = []
    for name, processor in processors().items():
        ds = ConversationDataset(str(mix), processor, measure_images=True, max_length=None)
        real = np.array([len(ds[i].sample.input_ids) for i in range(len(ds))])
        print(f"  {name}: {len(ds)} samples, {real.min()}..{real.max()} tokens", flush=True)
        for batch in batch_sizes:
            for grouped in (False, True):
                sampler = (LengthGroupedSampler(ds, ds.lengths, batch) if grouped else EpochSampler(ds, 1, 0))
                order = np.array(list(sampler))
                batches = [real[order[k:k + batch]] for k in range(0, len(order), batch)]
                pad = sum(len(b) * b.max() - b.sum() for b in batches)
                total = sum(len(b) * b.max() for b in batches)
                rows.append({"processor": name, "batch_size": batch, "grouped": grouped,
                             "padding_fraction": pad / total})
                print(f"    batch {batch:>3}  {'grouped ' if grouped else 'shuffled'}  padding_fraction "
                      f"{pad / total:.3f}  ({pad:,} of {total:,} tokens)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/data_scale", help="scratch folder (about 2 GB at 665k records)")
    parser.add_argument("--n", type=int, default=665_000, help="records of the LLaVA-like JSONL")
    parser.add_argument("--mix_n", type=int, default=250, help="samples per task and level in the padding mix")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_load(*args.measure)))
        return
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    print(f"load: {args.n:,} LLaVA-like records", flush=True)
    result = {"load": load_table(root, args.n)}
    print(f"padding: OCR + chart, easy + hard, {args.mix_n} each", flush=True)
    result["padding"] = padding_table(synth_mix(root / "mix", args.mix_n), args.batch_sizes)
    (root / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
