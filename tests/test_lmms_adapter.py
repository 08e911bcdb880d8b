"""The lmms-eval adapter, driven with fake lmms-eval requests; the last test runs the real lmms-eval when it is installed."""
import json
import os
import socket
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
import torch.multiprocessing
from PIL import Image

from mmllm.eval.lmms_adapter import MMLLMLmms, manifest, truncate


@pytest.fixture(scope="module")
def docs(text_image) -> list[dict]:
    """The fake task's docs: doc_to_visual gives a list, nothing, several images, or a bare image."""
    return [
        {"visual": [text_image("ab12")], "context": "What text?"},
        {"visual": None, "context": "Say hi."},
        {"visual": [text_image("x", (64, 64)), text_image("hello", (200, 40))], "context": "Compare the two images."},
        {"visual": text_image("zz", (40, 90)), "context": "Read."},
        {"visual": [text_image("long line of text", (256, 32))], "context": "What is written in the image? Be brief."},
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_config):
    from mmllm.model import MMLLM

    torch.manual_seed(0)
    model = MMLLM(tiny_config()).eval()
    path = tmp_path_factory.mktemp("lmms") / "model"
    model.save_pretrained(path)
    return model, path


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lmms_eval_task"


def adapter(path: Path, docs: list[dict], **kwargs) -> MMLLMLmms:
    """On the CPU unless told otherwise: answers are compared with the model's own, computed there."""
    lm = MMLLMLmms(pretrained=str(path), **{"device": "cpu", **kwargs})
    lm.task_dict = {"fake": {"test": docs}}  # what lmms-eval's evaluator sets before generating
    return lm


def requests(docs: list[dict], gen_kwargs: list[dict], doc_ids: list[int]) -> list[SimpleNamespace]:
    """Shaped like lmms-eval's Instance: args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""
    return [SimpleNamespace(args=(docs[i]["context"], kw, lambda doc: doc["visual"], i, "fake", "test"))
            for kw, i in zip(gen_kwargs, doc_ids)]


def choice_requests(docs: list[dict], doc_id: int, choices: list[str]) -> list[SimpleNamespace]:
    """Shaped like lmms-eval's multiple-choice requests: one loglikelihood request per choice."""
    return [SimpleNamespace(args=(docs[doc_id]["context"], choice, lambda doc: doc["visual"], doc_id, "fake", "test"))
            for choice in choices]


def scored(lm: MMLLMLmms, reqs: list) -> list[tuple[float, bool]]:
    """The adapter's pairs (lmms-eval >= 0.7, when installed, gets each inside its GenerationResult)."""
    return [tuple(getattr(r, "text", r)) for r in lm.loglikelihood(reqs)]


def lmms_eval_pick(values: list[float]) -> int:
    """lmms-eval's multiple-choice answer (0.6 to 0.7.3): the index of the smallest first value."""
    return min(range(len(values)), key=values.__getitem__)


def images(doc: dict) -> list:
    visual = doc["visual"]
    return [] if visual is None else visual if isinstance(visual, list) else [visual]


def test_answers_equal_model_answer_in_request_order_for_any_batch_size(saved, docs):
    model, path = saved
    doc_ids = [3, 0, 4, 1, 2, 0]
    budgets = [6, 10, 6, 10, 6, 6]  # two budgets: batched separately, answered in request order
    expected = [model.answer([docs[i]["context"]], [images(docs[i])], max_new_tokens=n)[0]
                for i, n in zip(doc_ids, budgets)]
    reqs = requests(docs, [{"max_new_tokens": n, "until": None, "do_sample": False} for n in budgets], doc_ids)
    one = adapter(path, docs, batch_size=1).generate_until(reqs)
    three = adapter(path, docs, batch_size="3").generate_until(reqs)  # lmms-eval may pass it as a string
    assert one == three == expected
    assert all(expected) and len(set(expected)) > 2


def test_until_truncates_at_the_first_stop_string(saved, docs):
    model, path = saved
    lm = adapter(path, docs, batch_size=2, max_new_tokens=12)
    full = lm.generate_until(requests(docs, [{}] * 5, range(5)))  # no gen_kwargs: the constructor's max_new_tokens
    assert full == [model.answer([d["context"]], [images(d)], max_new_tokens=12)[0] for d in docs]
    text = full[4]
    stops = [text[5:7], text[2]]  # the second one occurs first
    cut = min(text.index(s) for s in stops)
    assert 0 < cut < len(text) - 1
    kwargs = [{"until": stops}, {"until": text[0]}, {"until": "\x00never"}, {"until": ["", text[-1]]}, {"until": []}]
    got = lm.generate_until(requests(docs, kwargs, [4] * 5))
    assert got == [text[:cut], "", text, text[: text.index(text[-1])], text]
    assert truncate("a\n\nb\nc", ["\n", "\n\n"]) == "a"


def test_a_rejected_request_answers_empty_and_the_others_are_unaffected(saved, docs):
    model, path = saved
    lm = adapter(path, docs, batch_size=4)
    reqs = requests(docs, [{"max_new_tokens": 5}] * 3, [0, 1, 4])
    reqs[1].args = ("<image> <image> Two markers, no image.", *reqs[1].args[1:])
    with pytest.warns(UserWarning, match="fake/test doc 1: .*marker"):
        got = lm.generate_until(reqs)
    first, last = (model.answer([docs[i]["context"]], [images(docs[i])], max_new_tokens=5)[0] for i in (0, 4))
    assert got == [first, "", last]


def test_unsupported_requests_and_arguments_fail_clearly(saved, docs):
    _, path = saved
    with pytest.raises(ValueError, match="batch_size"):
        MMLLMLmms(pretrained=str(path), batch_size="auto")
    lm = adapter(path, docs)
    with pytest.warns(UserWarning, match="greedily"):
        assert lm.generate_until(requests(docs, [{"max_new_tokens": 2, "temperature": 0.7}], [0])) == [
            lm.generate_until(requests(docs, [{"max_new_tokens": 2}], [0]))[0]]
    video = [SimpleNamespace(args=("q", {}, lambda doc: ["clip.mp4"], 0, "fake", "test"))]
    with pytest.raises(TypeError, match="PIL images"):
        lm.generate_until(video)


def test_multi_round_follows_the_task_rounds(saved, docs):
    """lmms-eval's protocol: doc_to_text gets the answers so far and returns the next round's input."""
    model, path = saved
    lm = adapter(path, docs, max_new_tokens=6)
    calls = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        calls.append((list(previous_output), round_idx, previous_round_info))
        if round_idx == 1:  # round 2: another doc's images and question
            return docs[2]["visual"], docs[2]["context"], False, previous_output, {"seen": 1}
        if round_idx == 2:  # round 3: text only, the history folded into the context
            return None, "Earlier: " + " | ".join(previous_output), False, previous_output, {"seen": 2}
        return None, None, True, [a.upper() for a in previous_output], None

    reqs = [SimpleNamespace(args=(docs[i]["context"], {"until": ["\x00never"]}, lambda doc: doc["visual"], doc_to_text,
                                  i, "fake", "test")) for i in (0, 3)]
    got = lm.generate_until_multi_round(reqs)

    def answer(context, imgs):
        return model.answer([context], [imgs], max_new_tokens=6)[0]

    for k, (i, result) in enumerate(zip((0, 3), got)):
        first = answer(docs[i]["context"], images(docs[i]))
        second = answer(docs[2]["context"], images(docs[2]))
        third = answer(f"Earlier: {first} | {second}", [])
        assert result == [first.upper(), second.upper(), third.upper()] and len({first, second, third}) == 3
        assert calls[3 * k : 3 * k + 3] == [([first], 1, None), ([first, second], 2, {"seen": 1}),
                                            ([first, second, third], 3, {"seen": 2})]
    assert len(calls) == 6

    never = [SimpleNamespace(args=("Read.", {}, lambda doc: doc["visual"],
                                   lambda doc, previous_output, **kw: (None, "Again.", False, previous_output, None),
                                   3, "fake", "test"))]
    with pytest.warns(UserWarning, match="fake/test doc 3: no terminal signal after 2 rounds"):
        assert len(adapter(path, docs, max_rounds=2).generate_until_multi_round(never)[0]) == 2


def test_entry_point_is_declared_and_registers_the_adapter(monkeypatch):
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    value = pyproject["project"]["entry-points"]["lmms_eval.models"]["mmllm"]
    assert EntryPoint("mmllm", value, "lmms_eval.models").load() is manifest
    # lmms-eval calls the entry point and registers the ModelManifest it returns; stand in for its class.
    registry = ModuleType("lmms_eval.models.registry_v2")
    registry.ModelManifest = lambda **fields: SimpleNamespace(**fields)
    for name, module in [("lmms_eval", ModuleType("lmms_eval")), ("lmms_eval.models", ModuleType("lmms_eval.models")),
                         ("lmms_eval.models.registry_v2", registry)]:
        monkeypatch.setitem(sys.modules, name, module)
    registered = manifest()
    assert registered.model_id == "mmllm"
    module, cls = registered.simple_class_path.rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[cls]), cls) is MMLLMLmms and MMLLMLmms.is_simple


def by_hand(model, context: str, doc_images: list, continuation: str) -> tuple[float, bool]:
    """Sum of log P(answer token) and whether each is the argmax, from the model's own logits."""
    batch = model.processor.collate([model.processor.encode(
        [{"from": "human", "value": "<image>\n" * len(doc_images) + context}, {"from": "gpt", "value": continuation}],
        doc_images)])
    with torch.no_grad():
        logits = model(batch).logits
    answer = model.tokenizer(continuation, add_special_tokens=False).input_ids
    start = batch.input_ids.shape[1] - 1 - len(answer)  # the answer tokens, then eos
    rows = [logits[0, start - 1 + k].log_softmax(-1) for k in range(len(answer))]
    return sum(r[t].item() for r, t in zip(rows, answer)), all(int(r.argmax()) == t for r, t in zip(rows, answer))


def test_loglikelihood_is_minus_the_summed_log_prob_of_the_continuation_as_the_answer(saved, docs):
    model, path = saved
    lm = adapter(path, docs)
    targets = ["ab12", lambda doc: "ab12", "ab12 and more", "z"]
    reqs = [SimpleNamespace(args=(docs[0]["context"], t, lambda d: d["visual"], 0, "fake", "test")) for t in targets]
    scores = scored(lm, reqs)
    assert scores[0] == scores[1] and scores[2][0] > scores[0][0] > 0  # a string or doc_to_target; longer is less likely
    for (nll, greedy), text in zip(scores, ["ab12", "ab12", "ab12 and more", "z"]):
        expected_lp, expected_greedy = by_hand(model, docs[0]["context"], images(docs[0]), text)
        assert nll == pytest.approx(-expected_lp, abs=1e-4) and greedy == expected_greedy
    # the model's own greedy token (the argmax after the prompt) is greedy by definition
    prompt = model.processor.collate([model.processor.encode_prompt(docs[1]["context"], [])])
    with torch.no_grad():
        first = int(model(prompt).logits[0, -1].argmax())
    token = model.tokenizer.decode([first])
    req = SimpleNamespace(args=(docs[1]["context"], token, lambda d: d["visual"], 1, "fake", "test"))
    assert model.tokenizer(token, add_special_tokens=False).input_ids == [first]  # seed 0: an ASCII byte
    assert scored(lm, [req])[0][1] is True


def test_lmms_evals_argmin_picks_the_choice_the_model_finds_most_likely(saved, docs):
    """lmms-eval answers a multiple-choice item with the argmin of the first values (its own models return a
    loss) and acc_norm with the argmin per character: both must be the model's favourite, by summed log-prob."""
    model, path = saved
    lm = adapter(path, docs)
    choices = ["ab12", "z", "hello there", "x1", "ab12 and more"]
    picks = []
    for doc_id, doc in enumerate(docs):
        values = [nll for nll, _ in scored(lm, choice_requests(docs, doc_id, choices))]
        log_probs = [by_hand(model, doc["context"], images(doc), c)[0] for c in choices]
        favourite = max(range(len(choices)), key=log_probs.__getitem__)
        per_char = max(range(len(choices)), key=lambda k: log_probs[k] / len(choices[k]))
        assert lmms_eval_pick(values) == favourite
        assert lmms_eval_pick([v / len(c) for v, c in zip(values, choices)]) == per_char
        picks.append((favourite, per_char))
    assert len(set(picks)) > 1  # the items do not all share one answer
    rejected = SimpleNamespace(args=("<image> <image> Two markers, no image.", "z", lambda doc: doc["visual"], 1, "fake", "test"))
    with pytest.warns(UserWarning, match=r"fake/test doc 1: .*marker.*scoring \+inf"):
        assert scored(lm, [rejected]) == [(float("inf"), False)]  # never the pick


def answer_as_rank(rank: int, world_size: int, port: int, path: str, out: str, docs: list[dict]) -> None:
    """One process of a `torchrun --nproc_per_node 2` launch on CPUs: the launcher's environment, then this
    rank's share of the docs as lmms-eval deals them (doc_id % world_size == rank), and its gather."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size), ACCELERATE_USE_CPU="1",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    lm = adapter(Path(path), docs, batch_size=2, device=None)  # the launcher's device
    doc_ids = list(range(len(docs)))[rank::world_size]
    answers = lm.generate_until(requests(docs, [{"max_new_tokens": 6}] * len(doc_ids), doc_ids))
    pairs = scored(lm, choice_requests(docs, doc_ids[0], ["ab12", "z"]))
    counts = lm.accelerator.gather(torch.tensor([len(doc_ids)], device=lm.device)).tolist()  # as lmms-eval's evaluator
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "rank": lm.rank, "world_size": lm.world_size, "device": lm.device.type, "doc_ids": doc_ids,
        "answers": answers, "pairs": pairs, "counts": counts}))
    torch.distributed.destroy_process_group()


def test_two_processes_each_answer_their_share_and_together_answer_as_one(saved, tmp_path, docs):
    _, path = saved
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(answer_as_rank, args=(2, port, str(path), str(tmp_path), docs), nprocs=2,
                                          start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["device"], r["doc_ids"], r["counts"]) for r in ranks] == [
        (0, 2, "cpu", [0, 2, 4], [3, 2]), (1, 2, "cpu", [1, 3], [3, 2])]
    lm = adapter(path, docs, batch_size=2)
    alone = lm.generate_until(requests(docs, [{"max_new_tokens": 6}] * len(docs), range(len(docs))))
    together = {i: a for r in ranks for i, a in zip(r["doc_ids"], r["answers"])}
    assert [together[i] for i in range(len(docs))] == alone
    for r in ranks:
        expected = scored(lm, choice_requests(docs, r["doc_ids"][0], ["ab12", "z"]))
        assert [g for _, g in r["pairs"]] == [g for _, g in expected]
        assert [v for v, _ in r["pairs"]] == pytest.approx([v for v, _ in expected], abs=1e-4)


def test_a_cpu_torchrun_that_accelerate_does_not_see_fails_naming_the_fix(saved, monkeypatch, docs):
    """torchrun without GPUs: lmms-eval would shard by WORLD_SIZE while accelerate gathers one process."""
    _, path = saved
    adapter(path, docs)  # accelerate's one-process state now exists, as lmms-eval creates it before the model
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="launched as 2 processes but accelerate sees 1; .*ACCELERATE_USE_CPU=1"):
        adapter(path, docs)


def lmms_eval(tmp_path: Path, include: Path, task: str, model: Path) -> tuple[dict, list[dict]]:
    """One real `python -m lmms_eval` run from the repository root, offline: its results and logged samples."""
    out = tmp_path / task
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "mmllm", "--model_args",
                          f"pretrained={model},device=cpu", "--include_path", str(include), "--tasks", task,
                          "--output_path", str(out), "--log_samples"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    (results,) = out.rglob("*_results.json")
    (samples,) = out.rglob(f"*_samples_{task}.jsonl")
    return json.loads(results.read_text()), [json.loads(line) for line in samples.read_text().splitlines()]


def test_real_lmms_eval_runs_the_shipped_task_and_scores_a_model_keyed_choice_task_right(saved, tmp_path):
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (the optional extra: pip install -e '.[lmms]')")
    model, path = saved
    subprocess.run([sys.executable, str(EXAMPLE / "keyed_items.py"), str(path), str(tmp_path / "keyed")], check=True)
    results, samples = lmms_eval(tmp_path, tmp_path / "keyed", "mmllm_choice_keyed", path)
    assert results["results"]["mmllm_choice_keyed"]["acc,none"] == 1.0 and len(samples) == 8

    results, samples = lmms_eval(tmp_path, EXAMPLE, "mmllm_ocr_local", path)
    items = [json.loads(line) for line in (EXAMPLE / "items.jsonl").read_text().splitlines()]
    expected = [truncate(model.answer([it["question"]], [[Image.open(EXAMPLE / it["image"]).convert("RGB")]],
                                      max_new_tokens=16)[0], "\n") for it in items]
    got = {s["doc_id"]: s["filtered_resps"] for s in samples}
    assert [got[i][0] if isinstance(got[i], list) else got[i] for i in range(len(items))] == expected
    hits = sum(e.strip() == it["answers"][0] for e, it in zip(expected, items))  # lmms-eval strips answers
    assert results["results"]["mmllm_ocr_local"]["exact_match,none"] == hits / len(items)


def test_lmms_eval_check_sets_up_the_venv_itself_on_a_fresh_clone(tmp_path):
    """The script runs `make install` before it uses .venv: a stand-in Makefile makes a .venv python that only
    records how it is called, so the script stops at its first use of it."""
    (tmp_path / "scripts").mkdir()
    script = Path(__file__).resolve().parents[1] / "scripts" / "lmms_eval_check.sh"
    (tmp_path / "scripts" / script.name).write_text(script.read_text())
    (tmp_path / "Makefile").write_text(
        "install:\n\tmkdir -p .venv/bin\n"
        "\tprintf '#!/bin/sh\\necho \"$$*\" >> calls.log\\nexit 3\\n' > .venv/bin/python\n\tchmod +x .venv/bin/python\n")
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / script.name)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 3 and proc.stdout.startswith("== make install")
    assert (tmp_path / "calls.log").read_text().startswith("-m venv ")
