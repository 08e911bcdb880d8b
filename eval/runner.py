"""`mmllm eval`: batched greedy generation on an eval set (or scoring of predictions made elsewhere),
per-sample `predictions.jsonl` and a `summary.json`, with each task's prompt and metric as lmms-eval
defines them (docs/metrics.md)."""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from mmllm.config import DEFAULT_MAX_LENGTH
from mmllm.eval.metrics import corpus_cer, corpus_wer, ocrbench_aggregate, score
from mmllm.jsonl import Record, dumps_line, read_jsonl, write_json, write_jsonl, write_text_atomic
from mmllm.train.synth import PROMPT_TEMPLATES

# The model side (torch, transformers, Lightning) is imported where a model is used: scoring a predictions
# file (`--predictions`) starts in a fraction of a second instead of many.
if TYPE_CHECKING:
    import torch

    from mmllm.model import MMLLM
    from mmllm.train.data import Batch


@dataclass(frozen=True)
class Task:
    metric: str
    template: str
    max_new_tokens: int
    options: tuple[str, ...] = ()  # item fields passed to the metric (they override its defaults per item)
    capitalize: bool = False  # TextVQA's prompt capitalises the question (and lowercases the rest)
    lower_is_better: bool = False  # error rates


TASKS = {
    "ocr": Task("exact_match", PROMPT_TEMPLATES["ocr"], 32, ("ignore_case", "ignore_punctuation")),
    # The synthetic chart data is trained with lmms-eval's ChartQA prompt, so both tasks share it.
    "chartqa": Task("chartqa_relaxed", PROMPT_TEMPLATES["chart"], 16),
    "ocrbench": Task("ocrbench", "{question}", 128, ("dataset", "category")),
    "textvqa": Task("vqa_accuracy", "{question}\nAnswer the question using a single word or phrase.", 32,
                    ("variant",), capitalize=True),
    "docvqa": Task("anls", "{question}\nAnswer the question using a single word or phrase.", 32),
    # Scored as ASR is reported: the summary's score is the corpus WER (edits over all reference words).
    "asr": Task("wer", PROMPT_TEMPLATES["asr"], 48, lower_is_better=True),
}
CER_TASKS = ("ocr", "asr")  # also get a per-item and corpus character error rate
RUN_FILE = "run.json"  # what an eval folder was started with (see `resume`)


def task_spec(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[task]


def score_row(task: str, row: dict, item: dict) -> dict:
    """Adds `score` (and `cer` for OCR and ASR); the item's option fields override the metric's defaults."""
    spec = task_spec(task)
    options = {k: item[k] for k in spec.options if k in item}
    row = {**row, "score": score(spec.metric, row["prediction"], row["answers"], **options)}
    if task in CER_TASKS:
        row["cer"] = score("cer", row["prediction"], row["answers"])
    return row


def summarise(task: str, rows: list[dict], skipped: list[str], meta: dict, out: Path) -> dict:
    """Writes `summary.json`: the task metric, counts, skipped items with reasons, and `meta`."""
    spec = task_spec(task)
    summary = {"task": task, "metric": spec.metric,
               "score": statistics.fmean(r["score"] for r in rows) if rows else 0.0,
               "n": len(rows), "skipped": len(skipped), "skipped_items": skipped, **meta}
    predictions, references = [r["prediction"] for r in rows], [r["answers"] for r in rows]
    if task in CER_TASKS and rows:
        summary["corpus_cer"] = corpus_cer(predictions, references)
    if task == "asr" and rows:
        summary["mean_item_wer"] = summary["score"]
        summary["score"] = summary["corpus_wer"] = corpus_wer(predictions, references)
    if task == "ocrbench" and rows:
        agg = ocrbench_aggregate((r["category"], r["score"]) for r in rows)
        summary.update(final_score=agg.final_score, text_recognition=agg.text_recognition,
                       category_counts=agg.category_counts)
    splits = {"human_test": "relaxed_human_split", "augmented_test": "relaxed_augmented_split"}
    for split, key in splits.items():  # lmms-eval's ChartQA split means (items from `data convert`)
        part = [r["score"] for r in rows if r.get("type") == split]
        if task == "chartqa" and part:
            summary[key] = statistics.fmean(part)
    write_json(out / "summary.json", summary)
    return summary


def _row(record_data: dict, prediction: str, item_id: str) -> dict:
    keep = ("category", "dataset", "type")
    return {"id": item_id, "question": record_data.get("question"), "prediction": prediction,
            "answers": record_data.get("answers", []), **{k: record_data[k] for k in keep if k in record_data}}


def first_by_id(records: list[Record]) -> tuple[dict[str, Record], list[str]]:
    """The first record of every id (ids compare as strings, so 777 and "777" are one id) and a skip note
    for every later one: a duplicate is never merged into, nor scored beside, the first."""
    first: dict[str, Record] = {}
    skipped = []
    for record in records:
        if record.id in first:
            skipped.append(f"{record.where()}: duplicate id (first at line {first[record.id].line}, which is scored)")
        else:
            first[record.id] = record
    return first, skipped


def weights_digest(model: torch.nn.Module, samples: int = 4096) -> str:
    """The identity of a model's weights: sha256 over every tensor's name, dtype, shape and `samples` evenly
    spaced elements (first and last included).

    Taken from the loaded weights, not the checkpoint file, so it is the same for a `.ckpt` and a
    save_pretrained copy of one model (they predict the same), it also covers models that exist only in
    memory (`mmllm compare`), and it costs milliseconds at any size. Two trainings differ in practically
    every element; an edit touching none of the sampled elements would go unseen."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        k = min(flat.numel(), samples)
        index = torch.arange(k) * (flat.numel() - 1) // max(k - 1, 1)
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat[index.to(flat.device)].cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def answers_digest(records: list[Record]) -> str:
    """sha256 over every item's id and gold answers: a corrected answer key makes another eval."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(dumps_line([record.id, record.data.get("answers")]).encode())
    return digest.hexdigest()[:16]


def inputs_digest(records: list[Record]) -> str:
    """sha256 over what the model is shown of every item: its id, question and media fields, and the bytes of
    the files those name, so an edited question or a replaced image under the same id makes another eval."""
    from mmllm.sample import SampleError
    from mmllm.train.media import paths_of

    digest = hashlib.sha256()
    for record in records:
        data = record.data
        digest.update(dumps_line([record.id, data.get("question"), data.get("image"), data.get("audio")]).encode())
        for key in ("image", "audio"):
            try:
                paths = paths_of(record, key)
            except SampleError:  # the item is skipped; its field's text is in the digest
                continue
            for path in paths:
                digest.update(file_digest(Path(path)))
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> bytes:
    """sha256 of a file's bytes, read in chunks (b"missing" when it cannot be read: the item is skipped)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return b"missing"
    return digest.digest()


def resume(out: Path, fingerprint: dict, ids: set[str]) -> dict[str, dict]:
    """The prediction rows already in `out` for `ids`, once `out/run.json` shows the folder was started with
    this `fingerprint` (otherwise they may belong to another model, task, item set or answer key: refused).

    Unreadable lines (an interrupted write) are dropped and the file rewritten without them, so their
    items are generated again and appended after a clean line end."""
    pred_file, run_file = out / "predictions.jsonl", out / RUN_FILE
    done: dict[str, dict] = {}
    if pred_file.is_file():
        fresh = f"to start fresh pass another --out or delete {out}"
        try:
            started = json.loads(run_file.read_text(encoding="utf-8"))
            if not isinstance(started, dict):
                raise ValueError
        except (OSError, ValueError):
            raise ValueError(f"{pred_file} exists but {run_file} is missing or unreadable, so what made those "
                             f"predictions is unknown; {fresh}") from None
        differ = [f"{k} ({started.get(k)!r} there, {v!r} now)" for k, v in fingerprint.items() if started.get(k) != v]
        if differ:
            raise ValueError(f"{out} was started with a different {'; '.join(differ)}; {fresh}")
        records, bad = read_jsonl(pred_file, ("id", "prediction"))
        for line in bad:
            print(f"[mmllm] unreadable prediction {line}; its item is generated again")
        done = {r.id: r.data for r in records if r.id in ids}
        write_jsonl(pred_file, done.values())
    write_json(run_file, fingerprint)
    return done


def evaluate(
    model: MMLLM,
    task: str,
    data: str | Path,
    out: str | Path,
    batch_size: int = 8,
    template: str | None = None,
    max_new_tokens: int | None = None,
    extra: dict | None = None,
    progress: bool = False,
    max_length: int | None = DEFAULT_MAX_LENGTH,
    limit: int | None = None,
    max_tiles: int | None = None,
) -> dict:
    """Generate and score; `out/predictions.jsonl` is appended batch by batch, so a rerun into the
    same folder continues an interrupted run (items already there are not generated again) as long as
    model, task, items (what the model is shown and the answers), prompt, max_new_tokens and max_length
    are the ones the folder was started with (`resume`). A prompt over `max_length` tokens is a skipped
    item. `limit` scores only the first that many items (a quick look during training); `max_tiles` tiles each
    image into at most that many tiles, fewer than the model was built for (quality against the tile budget).
    An eval that scores no item is a ValueError (after its summary.json is written)."""
    from torch.utils.data import DataLoader, Subset

    from mmllm.train.items import ItemsDataset, PromptCollator

    spec = task_spec(task)
    template = template or spec.template
    max_new_tokens = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    data, out = Path(data), Path(out)
    items_file = data / "items.jsonl" if data.is_dir() else data
    processor = model.processor if max_tiles is None else model.processor.with_max_tiles(max_tiles)
    items = ItemsDataset(items_file, processor, template, capitalize=spec.capitalize, max_length=max_length)
    first, duplicates = first_by_id(items.records)
    if limit is not None:
        first = dict(list(first.items())[:limit])
    fingerprint = {"checkpoint": weights_digest(model), "task": task, "data": str(items_file.resolve()),
                   "prompt_template": template, "max_new_tokens": max_new_tokens, "max_length": max_length,
                   "answers": answers_digest(items.records), "inputs": inputs_digest(items.records), "limit": limit,
                   "max_tiles": max_tiles}
    out.mkdir(parents=True, exist_ok=True)
    pred_file = out / "predictions.jsonl"
    done = resume(out, fingerprint, set(first))
    todo = [i for i, r in enumerate(items.records) if first.get(r.id) is r and r.id not in done]
    loader = DataLoader(Subset(items, todo), batch_size=batch_size, collate_fn=PromptCollator(processor))
    start = time.perf_counter()
    batches = tqdm(loader, desc=f"eval {task}", disable=not progress)
    skipped, truncated = generate_into(pred_file, done, model, batches, max_new_tokens)
    elapsed = time.perf_counter() - start
    rows, unscorable = score_rows(task, first, done)
    skipped = [str(b) for b in items.bad_lines] + duplicates + skipped + unscorable
    write_jsonl(pred_file, rows)
    for s in skipped:
        print(f"[mmllm] skipped {s}")
    for t in truncated:
        print(f"[mmllm] {t}")
    meta = {"data": str(items_file), "prompt_template": template, "max_new_tokens": max_new_tokens,
            "max_length": max_length, "truncated": len(truncated), "truncated_items": truncated,
            "batch_size": batch_size, "limit": limit, "max_tiles": max_tiles or processor.config.max_tiles,
            "generated": len(todo), "time_s": round(elapsed, 3),
            "items_per_s": round(len(todo) / elapsed, 3) if elapsed and todo else None, **(extra or {})}
    return require_scored(summarise(task, rows, skipped, meta, out), out)


def generate_into(pred_file: Path, done: dict[str, dict], model: MMLLM, batches: Iterable[Batch],
                  max_new_tokens: int) -> tuple[list[str], list[str]]:
    """Generates every batch, appending its rows to `pred_file` (flushed per batch, what a rerun
    resumes from) and to `done`; returns the items the collator skipped and the notes of those it truncated."""
    skipped: list[str] = []
    truncated: list[str] = []
    model.eval()
    with pred_file.open("a", encoding="utf-8") as fh:
        for batch in batches:
            skipped += batch.skipped
            truncated += batch.truncated
            for row in generate_rows(model, batch, max_new_tokens):
                done[row["id"]] = row
                fh.write(dumps_line(row))
            fh.flush()
    return skipped, truncated


def generate_rows(model: MMLLM, batch: Batch, max_new_tokens: int) -> list[dict]:
    """The prediction rows of one batch's items that encoded (none when none did)."""
    if batch.inputs is None:
        return []
    generated = model.generate(batch.inputs.to(next(model.parameters()).device), max_new_tokens=max_new_tokens)
    return [_row(record.data, model.processor.decode(ids), record.id)
            for record, ids in zip(batch.records, generated.tolist())]


def score_rows(task: str, first: dict[str, Record], done: dict[str, dict]) -> tuple[list[dict], list[str]]:
    """Every predicted item scored in the items file's order, with its gold answers and fields from that file
    (never from old rows), and the items that cannot be scored (no or empty gold answers: a data error, not a 0).
    An item without a prediction failed to load and was skipped when it was met."""
    rows, unscorable = [], []
    for item_id, record in first.items():
        if item_id not in done:
            continue
        try:
            rows.append(score_row(task, _row(record.data, done[item_id]["prediction"], item_id), record.data))
        except (ValueError, TypeError) as exc:
            unscorable.append(f"{record.where()}: cannot score: {exc}")
    return rows, unscorable


def require_scored(summary: dict, out: Path) -> dict:
    """The summary, unless it scored no item: then a score of 0 would stand for no measurement at all."""
    if not summary["n"]:
        first = f"; first: {summary['skipped_items'][0]}" if summary["skipped_items"] else ""
        raise ValueError(f"no item was scored ({summary['skipped']} skipped{first}); see {out / 'summary.json'}")
    return summary


def score_predictions(task: str, predictions: str | Path, out: str | Path) -> dict:
    """Score a JSONL of predictions made elsewhere (`id`, `prediction`, `answers` + option fields)."""
    records, bad = read_jsonl(predictions, ("id", "prediction", "answers"))
    out = Path(out)
    pred_file = out / "predictions.jsonl"
    if pred_file.exists() and pred_file.samefile(predictions):
        raise ValueError(f"--predictions {predictions} is the output file {pred_file}, which scoring rewrites; "
                         "pass another --out")
    first, skipped = first_by_id(records)
    skipped = [str(b) for b in bad] + skipped
    rows = []
    for record in first.values():
        try:
            rows.append(score_row(task, _row(record.data, record.data["prediction"], record.id), record.data))
        except (ValueError, TypeError) as exc:
            skipped.append(f"{record.where()}: cannot score: {exc}")
    (out / RUN_FILE).unlink(missing_ok=True)  # these rows are no eval's: an eval may not resume from them
    write_jsonl(pred_file, rows)
    return require_scored(summarise(task, rows, skipped, {"predictions": str(predictions)}, out), out)


def positive_int(text: str) -> int:
    """An argparse type: 0 new tokens or a batch of 0 is a mistake to report, not a value to replace."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mmllm eval", description="Score a checkpoint (or predictions) on a task.")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", action="append", help="a Lightning .ckpt or a save_pretrained folder; "
                        "repeat it to score several checkpoints into one table")
    source.add_argument("--predictions", help="score this JSONL (id, prediction, answers) without a model")
    parser.add_argument("--data", help="folder with items.jsonl (and images/), or the JSONL itself (with --ckpt)")
    parser.add_argument("--out", required=True, help="output folder for predictions.jsonl and summary.json")
    parser.add_argument("--batch_size", type=positive_int, default=8)
    parser.add_argument("--prompt", default=None, help="prompt template with {question} (default: the task's)")
    parser.add_argument("--max_new_tokens", type=positive_int, default=None, help="default: the task's")
    parser.add_argument("--max_length", type=positive_int, default=DEFAULT_MAX_LENGTH,
                        help="tokens a prompt may have; a longer one is a skipped item")
    args = parser.parse_args(argv)
    if args.predictions:
        summaries = {"predictions": score_predictions(args.task, args.predictions, args.out)}
    else:
        if not args.data:
            parser.error("--data is required with --ckpt")
        from mmllm.train.load import load_model

        names = checkpoint_names(args.ckpt)
        summaries = {}
        for name, ckpt in zip(names, args.ckpt):
            out = Path(args.out) / name if len(args.ckpt) > 1 else Path(args.out)
            summaries[name] = evaluate(load_model(ckpt), args.task, args.data, out, args.batch_size, args.prompt,
                                       args.max_new_tokens, extra={"ckpt": str(ckpt)}, progress=True,
                                       max_length=args.max_length)
    for name, summary in summaries.items():
        print(f"{name}: {args.task} {summary['metric']} = {summary['score']:.4f} on {summary['n']} items "
              f"({summary['skipped']} skipped)")
    if len(summaries) > 1:
        print(checkpoint_table(summaries, Path(args.out)))


def checkpoint_names(ckpts: list[str]) -> list[str]:
    """Short unique names: the path's last two parts (`version_0/last`), numbered if still equal."""
    names = [f"{Path(c).parent.name}-{Path(c).stem}" for c in ckpts]
    return [n if names.count(n) == 1 else f"{i}-{n}" for i, n in enumerate(names)]


def checkpoint_table(summaries: dict[str, dict], out: Path) -> str:
    """One table across checkpoints (with OCRBench categories / ChartQA splits) + `scores.png`."""
    from mmllm.eval.report import markdown_table, plot_bars

    first = next(iter(summaries.values()))
    parts = sorted(first.get("category_counts", {})) + [k for k in first if k.startswith("relaxed_")]
    header = ["checkpoint", f"{first['metric']} (%)", "n", "skipped", *parts]
    rows = [[name, f"{100 * s['score']:.1f}", s["n"], s["skipped"],
             *[s.get("category_counts", {}).get(p, s.get(p, "")) for p in parts]] for name, s in summaries.items()]
    table = markdown_table(header, rows)
    write_text_atomic(out / "table.md", f"# {first['task']}\n\n{table}\n\n![scores](scores.png)\n")
    splits = [p for p in parts if p.startswith("relaxed_")]
    groups = {key: {name: s[key] for name, s in summaries.items()} for key in ["score", *splits]}
    plot_bars(groups, out / "scores.png", f"{first['task']} per checkpoint", first["metric"])
    categories = [p for p in parts if p not in splits]
    if categories:  # OCRBench: raw hits per category
        counts = {c: {name: s["category_counts"][c] for name, s in summaries.items()} for c in categories}
        plot_bars(counts, out / "categories.png", "OCRBench hits per category", "hits", ylim=None)
    return table
