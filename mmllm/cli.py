"""The `mmllm` command: Lightning subcommands for training, plus data, eval and demo."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LIGHTNING = ("fit", "validate", "test", "predict")
USAGE = """usage: mmllm {fit,validate,test,predict,export,data,pretrain,eval,compare,controls,bench,demo} ...

  fit|validate|test|predict  train and run models through LightningCLI (--config configs/nvlm_d_tiny.yaml);
                             predict writes predictions.jsonl + summary.json (--predictions.dirpath)
  export CKPT DIR            turn a Lightning .ckpt into a save_pretrained folder (MMLLM.from_pretrained)
  data synth|convert|shard   write a synthetic dataset (OCR, chart QA, ASR) / convert a public benchmark /
                             write a training set as parquet shards with its images embedded
  pretrain llm|tower         make the project's own pretrained tiny LLM / vision tower, once per recipe
                             (cached under runs/cache or $MMLLM_CACHE; `compare` builds them when a config asks)
  eval                       score a checkpoint on an eval set (predictions.jsonl + summary.json)
  compare                    train NVLM-D, -X and -H under identical conditions and report (--config)
  controls MODEL DATA        score a trained model with the signal taken apart (tiles swapped, images
                             shuffled, cross-attention off, no tile identity): model or wiring?
  bench                      step time, tokens/s and memory of D, X, H (and LLaVA, Mllama) vs tile count
  demo                       the main job: `compare` on configs/compare_tiny.yaml into runs/demo

Run `mmllm COMMAND --help` for the options of one command."""


def data_command(argv: list[str]) -> None:
    from mmllm.eval.readers import MAX_SKIPPED, READERS, SKIP_FILE, convert
    from mmllm.train.synth import LEVELS, TASK_LEVELS, TASKS, VOICES, synthesize

    parser = argparse.ArgumentParser(prog="mmllm data", description="Dataset tools.")
    sub = parser.add_subparsers(dest="action", required=True)
    synth = sub.add_parser("synth", help="write a deterministic synthetic dataset")
    synth.add_argument("--task", required=True, choices=list(TASKS))
    synth.add_argument("--n", type=int, required=True, help="number of samples")
    synth.add_argument("--out", required=True, help="output folder (train.jsonl, items.jsonl, images/ or audio/)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--level", choices=list(LEVELS), default="easy",
                       help="difficulty: " + "; ".join(f"{task} {', '.join(levels)}" for task, levels in TASK_LEVELS.items()))
    synth.add_argument("--voice", choices=list(VOICES), default="tones",
                       help="asr only: offline tone words (default) or real speech via espeak-ng")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace the synthetic set in a non-empty --out (its stale files are removed)")
    conv = sub.add_parser("convert", help="convert a public benchmark folder into items.jsonl + images/")
    conv.add_argument("--format", required=True, choices=sorted(READERS))
    conv.add_argument("--src", required=True,
                      help="the benchmark's local folder: its own release or a Hugging Face parquet snapshot")
    conv.add_argument("--out", required=True, help="output folder")
    conv.add_argument("--images", help="look up the release's images in this folder instead of where it keeps them")
    conv.add_argument("--max_skipped", type=float, default=MAX_SKIPPED,
                      help="the fraction of records that may be skipped (missing images, bad records) before the "
                           f"conversion fails (default {MAX_SKIPPED}); the skips are listed in OUT/{SKIP_FILE}")
    shard = sub.add_parser("shard", help="write a training set as self-contained parquet shards (JSON + image bytes) "
                                         "that `--data.train DIR` reads")
    shard.add_argument("--src", required=True, help="training data: LLaVA-format JSONL or JSON array")
    shard.add_argument("--image_folder", help="where relative image paths resolve (default: the file's folder)")
    shard.add_argument("--out", required=True, help="output folder, new or empty")
    shard.add_argument("--rows", type=int, default=10_000, help="records per shard")
    args = parser.parse_args(argv)
    if args.action == "shard":
        from mmllm.train.shards import write_shards

        summary = write_shards(args.src, args.out, image_folder=args.image_folder, rows=args.rows)
        print(f"wrote {summary.n} records in {len(summary.shards)} shard(s) to {args.out}; "
              f"{len(summary.bad)} bad record(s) left out")
        for bad in summary.bad:
            print(f"  skipped {bad}")
    elif args.action == "synth":
        summary = synthesize(args.task, args.out, args.n, seed=args.seed, level=args.level, voice=args.voice,
                             overwrite=args.overwrite)
        print(f"wrote {summary['n']} {args.task} samples ({args.level}) to {args.out}")
    else:
        done = convert(args.format, args.src, args.out, images=args.images, max_skipped=args.max_skipped)
        kinds = ", ".join(f"{n} {kind}" for kind, n in done.reasons().most_common())
        print(f"wrote {done.n} {args.format} items to {args.out} from {', '.join(done.files)}; skipped "
              + (f"{len(done.skipped)} ({kinds}; listed in {done.skip_file})" if done.skipped else "none"))


def pretrain_command(argv: list[str]) -> None:
    parts = ("llm", "tower")
    if not argv or argv[0] not in parts:
        raise ValueError(f"mmllm pretrain takes one of {', '.join(parts)} (then --help for its options)")
    if argv[0] == "llm":
        from mmllm.train.pretrain_llm import main as pretrain_main
    else:
        from mmllm.train.pretrain_tower import main as pretrain_main
    pretrain_main(argv[1:])


def export(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Writes the model of `ckpt` (loaded with weights_only=True) to `out` with `save_pretrained`; returns the
    files written. A non-empty `out` is refused unless `overwrite`: another model's files may be there."""
    from mmllm.train.load import load_model

    out = Path(out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    if before and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to write over it")
    load_model(ckpt).save_pretrained(out)
    return [p for p in sorted(out.rglob("*")) if p.is_file() and before.get(p) != p.stat().st_mtime_ns]


def export_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mmllm export", description="Save a checkpoint's model as a folder that "
                                     "MMLLM.from_pretrained loads (config.json, weights, tokenizer).")
    parser.add_argument("ckpt", help="a Lightning .ckpt (or a save_pretrained folder)")
    parser.add_argument("dir", help="output folder; must be empty or new")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    args = parser.parse_args(argv)
    written = export(args.ckpt, args.dir, args.overwrite)
    print(f"exported {args.ckpt} to {args.dir}:")
    for path in written:
        print(f"  {path}  ({path.stat().st_size:,} bytes)")


def quiet_weight_progress() -> None:
    """Weight loading and saving are ours to report (an error stays one line): no per-file progress bars
    from transformers or the hub library. Both read the variable when they load; one loaded before this
    command ran is switched off directly (importing transformers here would cost every command seconds)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    # Before torch loads: spinning OpenMP workers stall for seconds when other jobs share the cores
    # (a tiny training step took 1.7 s instead of 8 ms). The user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from_sys = argv is None
    argv = list(sys.argv[1:] if from_sys else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        quiet_weight_progress()
        if command in LIGHTNING:
            from mmllm.train.cli import run

            run(None if from_sys else [command, *rest])  # None: LightningCLI reads sys.argv itself
        elif command == "data":
            data_command(rest)
        elif command == "pretrain":
            pretrain_command(rest)
        elif command == "export":
            export_command(rest)
        elif command == "eval":
            from mmllm.eval.runner import main as eval_main

            eval_main(rest)
        elif command == "controls":
            from mmllm.eval.controls import main as controls_main

            controls_main(rest)
        elif command == "bench":
            from mmllm.eval.bench import main as bench_main

            bench_main(rest)
        elif command in ("compare", "demo"):
            from mmllm.eval.compare import REPO, main as compare_main

            # demo = compare on the embedded default config, into runs/demo
            defaults = ["--config", str(REPO / "configs" / "compare_tiny.yaml"), "--out", "runs/demo"]
            compare_main((defaults if command == "demo" else []) + rest)
        else:
            print(f"mmllm: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("mmllm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for the user; MMLLM_DEBUG=1 shows the traceback
        if os.environ.get("MMLLM_DEBUG"):
            raise
        print(f"mmllm: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
