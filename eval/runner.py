"""`mmllm eval`: batched greedy generation on an eval set, per-sample predictions and a summary."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmllm.eval.metrics import corpus_cer, score
from mmllm.model import MMLLM
from mmllm.train.data import ItemsDataset, PromptCollator
from mmllm.train.synth import PROMPT_TEMPLATES


@dataclass(frozen=True)
class Task:
    metric: str
    template: str
    max_new_tokens: int


TASKS = {
    "ocr": Task("exact_match", PROMPT_TEMPLATES["ocr"], 32),
    # lmms-eval's ChartQA prompt and budget (eval-metrics.md §1); the synthetic chart data uses it too.
    "chartqa": Task("chartqa_relaxed", PROMPT_TEMPLATES["chart"], 16),
}


def load_model(ckpt: str | Path) -> MMLLM:
    """A `save_pretrained` folder or a Lightning `.ckpt` (loaded with weights_only=True)."""
    ckpt = Path(ckpt)
    if ckpt.is_dir():
        return MMLLM.from_pretrained(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    from mmllm.train.module import MMLLMModule

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hparams = dict(state["hyper_parameters"])
    hparams["encoder"] = dict(hparams["encoder"], pretrained=False)  # weights come from the checkpoint
    module = MMLLMModule(**hparams)
    module.load_state_dict(state["state_dict"])
    return module.model.eval()


def evaluate(
    model: MMLLM,
    task: str,
    data: str | Path,
    out: str | Path,
    batch_size: int = 8,
    template: str | None = None,
    max_new_tokens: int | None = None,
    extra: dict | None = None,
) -> dict:
    """Writes `out/predictions.jsonl` and `out/summary.json`; returns the summary."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    spec = TASKS[task]
    template = template or spec.template
    max_new_tokens = max_new_tokens or spec.max_new_tokens
    data, out = Path(data), Path(out)
    items_file = data / "items.jsonl" if data.is_dir() else data
    items = ItemsDataset(items_file, model.processor, template)
    loader = DataLoader(items, batch_size=batch_size, collate_fn=PromptCollator(model.processor))
    skipped = [str(b) for b in items.bad_lines]
    rows, start = [], time.perf_counter()
    device = next(model.parameters()).device
    model.eval()
    for batch in loader:
        skipped += batch["skipped"]
        if not batch["ids"]:
            continue
        generated = model.generate(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["pixel_values"].to(device),
            batch["layout"], max_new_tokens=max_new_tokens,
        )
        for record, ids in zip(batch["records"], generated.tolist()):
            prediction = model.processor.decode(ids)
            answers = record.data.get("answers", [])
            row = {"id": record.id, "question": record.data["question"], "prediction": prediction, "answers": answers}
            try:
                row["score"] = score(spec.metric, prediction, answers)
                if task == "ocr":
                    row["cer"] = score("cer", prediction, answers)
            except (ValueError, TypeError) as exc:  # no or empty gold answers: a data error, not a 0
                skipped.append(f"{record.where()}: cannot score: {exc}")
                continue
            rows.append(row)
    elapsed = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    summary = {
        "task": task,
        "metric": spec.metric,
        "score": sum(r["score"] for r in rows) / len(rows) if rows else 0.0,
        "n": len(rows),
        "skipped": len(skipped),
        "skipped_items": skipped,
        "data": str(items_file),
        "prompt_template": template,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "time_s": round(elapsed, 3),
        "items_per_s": round(len(rows) / elapsed, 3) if elapsed else None,
        **(extra or {}),
    }
    if task == "ocr":
        summary["corpus_cer"] = corpus_cer([r["prediction"] for r in rows], [r["answers"] for r in rows])
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    for s in skipped:
        print(f"[mmllm] skipped {s}")
    return summary


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mmllm eval", description="Score a checkpoint on an eval set.")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--ckpt", required=True, help="a Lightning .ckpt or a save_pretrained folder")
    parser.add_argument("--data", required=True, help="folder with items.jsonl (and images/), or the JSONL itself")
    parser.add_argument("--out", required=True, help="output folder for predictions.jsonl and summary.json")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--prompt", default=None, help="prompt template with {question} (default: the task's)")
    parser.add_argument("--max_new_tokens", type=int, default=None)
    args = parser.parse_args(argv)
    model = load_model(args.ckpt)
    summary = evaluate(model, args.task, args.data, args.out, args.batch_size, args.prompt, args.max_new_tokens,
                       extra={"ckpt": str(args.ckpt)})
    print(f"{args.task}: {summary['metric']} = {summary['score']:.4f} on {summary['n']} items "
          f"({summary['skipped']} skipped) -> {args.out}")
