"""The lmms-eval adapter, driven with fake lmms-eval requests (lmms-eval itself is not installed)."""
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from conftest import text_image, tiny_config
from mmllm.eval.lmms_adapter import MMLLMLmms, manifest, truncate

# doc_to_visual gives a list, nothing, several images, or a bare image
DOCS = [
    {"visual": [text_image("ab12")], "context": "What text?"},
    {"visual": None, "context": "Say hi."},
    {"visual": [text_image("x", (64, 64)), text_image("hello", (200, 40))], "context": "Compare the two images."},
    {"visual": text_image("zz", (40, 90)), "context": "Read."},
    {"visual": [text_image("long line of text", (256, 32))], "context": "What is written in the image? Be brief."},
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from mmllm.model import MMLLM

    torch.manual_seed(0)
    model = MMLLM(tiny_config()).eval()
    path = tmp_path_factory.mktemp("lmms") / "model"
    model.save_pretrained(path)
    return model, path


def adapter(path: Path, **kwargs) -> MMLLMLmms:
    lm = MMLLMLmms(pretrained=str(path), **kwargs)
    lm.task_dict = {"fake": {"test": DOCS}}  # what lmms-eval's evaluator sets before generating
    return lm


def requests(gen_kwargs: list[dict], doc_ids: list[int]) -> list[SimpleNamespace]:
    """Shaped like lmms-eval's Instance: args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""
    return [SimpleNamespace(args=(DOCS[i]["context"], kw, lambda doc: doc["visual"], i, "fake", "test"))
            for kw, i in zip(gen_kwargs, doc_ids)]


def images(doc: dict) -> list:
    visual = doc["visual"]
    return [] if visual is None else visual if isinstance(visual, list) else [visual]


def test_answers_equal_model_answer_in_request_order_for_any_batch_size(saved):
    model, path = saved
    doc_ids = [3, 0, 4, 1, 2, 0]
    budgets = [6, 10, 6, 10, 6, 6]  # two budgets: batched separately, answered in request order
    expected = [model.answer([DOCS[i]["context"]], [images(DOCS[i])], max_new_tokens=n)[0]
                for i, n in zip(doc_ids, budgets)]
    reqs = requests([{"max_new_tokens": n, "until": None, "do_sample": False} for n in budgets], doc_ids)
    one = adapter(path, batch_size=1).generate_until(reqs)
    three = adapter(path, batch_size="3").generate_until(reqs)  # lmms-eval may pass it as a string
    assert one == three == expected
    assert all(expected) and len(set(expected)) > 2


def test_until_truncates_at_the_first_stop_string(saved):
    model, path = saved
    lm = adapter(path, batch_size=2, max_new_tokens=12)
    full = lm.generate_until(requests([{}] * 5, range(5)))  # no gen_kwargs: the constructor's max_new_tokens
    assert full == [model.answer([d["context"]], [images(d)], max_new_tokens=12)[0] for d in DOCS]
    text = full[4]
    stops = [text[5:7], text[2]]  # the second one occurs first
    cut = min(text.index(s) for s in stops)
    assert 0 < cut < len(text) - 1
    kwargs = [{"until": stops}, {"until": text[0]}, {"until": "\x00never"}, {"until": ["", text[-1]]}, {"until": []}]
    got = lm.generate_until(requests(kwargs, [4] * 5))
    assert got == [text[:cut], "", text, text[: text.index(text[-1])], text]
    assert truncate("a\n\nb\nc", ["\n", "\n\n"]) == "a"


def test_a_rejected_request_answers_empty_and_the_others_are_unaffected(saved):
    model, path = saved
    lm = adapter(path, batch_size=4)
    reqs = requests([{"max_new_tokens": 5}] * 3, [0, 1, 4])
    reqs[1].args = ("<image> <image> Two markers, no image.", *reqs[1].args[1:])
    with pytest.warns(UserWarning, match="fake/test doc 1: .*marker"):
        got = lm.generate_until(reqs)
    first, last = (model.answer([DOCS[i]["context"]], [images(DOCS[i])], max_new_tokens=5)[0] for i in (0, 4))
    assert got == [first, "", last]


def test_unsupported_requests_and_arguments_fail_clearly(saved):
    _, path = saved
    with pytest.raises(ValueError, match="batch_size"):
        MMLLMLmms(pretrained=str(path), batch_size="auto")
    lm = adapter(path)
    with pytest.warns(UserWarning, match="greedily"):
        assert lm.generate_until(requests([{"max_new_tokens": 2, "temperature": 0.7}], [0])) == [
            lm.generate_until(requests([{"max_new_tokens": 2}], [0]))[0]]
    video = [SimpleNamespace(args=("q", {}, lambda doc: ["clip.mp4"], 0, "fake", "test"))]
    with pytest.raises(TypeError, match="PIL images"):
        lm.generate_until(video)


def test_multi_round_follows_the_task_rounds(saved):
    """lmms-eval's protocol: doc_to_text gets the answers so far and returns the next round's input."""
    model, path = saved
    lm = adapter(path, max_new_tokens=6)
    calls = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        calls.append((list(previous_output), round_idx, previous_round_info))
        if round_idx == 1:  # round 2: another doc's images and question
            return DOCS[2]["visual"], DOCS[2]["context"], False, previous_output, {"seen": 1}
        if round_idx == 2:  # round 3: text only, the history folded into the context
            return None, "Earlier: " + " | ".join(previous_output), False, previous_output, {"seen": 2}
        return None, None, True, [a.upper() for a in previous_output], None

    reqs = [SimpleNamespace(args=(DOCS[i]["context"], {"until": ["\x00never"]}, lambda doc: doc["visual"], doc_to_text,
                                  i, "fake", "test")) for i in (0, 3)]
    got = lm.generate_until_multi_round(reqs)

    def answer(context, imgs):
        return model.answer([context], [imgs], max_new_tokens=6)[0]

    for k, (i, result) in enumerate(zip((0, 3), got)):
        first = answer(DOCS[i]["context"], images(DOCS[i]))
        second = answer(DOCS[2]["context"], images(DOCS[2]))
        third = answer(f"Earlier: {first} | {second}", [])
        assert result == [first.upper(), second.upper(), third.upper()] and len({first, second, third}) == 3
        assert calls[3 * k : 3 * k + 3] == [([first], 1, None), ([first, second], 2, {"seen": 1}),
                                            ([first, second, third], 3, {"seen": 2})]
    assert len(calls) == 6

    never = [SimpleNamespace(args=("Read.", {}, lambda doc: doc["visual"],
                                   lambda doc, previous_output, **kw: (None, "Again.", False, previous_output, None),
                                   3, "fake", "test"))]
    with pytest.warns(UserWarning, match="fake/test doc 3: no terminal signal after 2 rounds"):
        assert len(adapter(path, max_rounds=2).generate_until_multi_round(never)[0]) == 2


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


def test_loglikelihood_scores_the_continuation_as_the_answer(saved):
    model, path = saved
    lm = adapter(path)
    targets = ["ab12", lambda doc: "ab12", "ab12 and more", "z"]
    reqs = [SimpleNamespace(args=(DOCS[0]["context"], t, lambda d: d["visual"], 0, "fake", "test")) for t in targets]
    scores = lm.loglikelihood(reqs)
    assert scores[0] == scores[1] and scores[2][0] < scores[0][0] < 0  # a string or doc_to_target; longer is less likely
    for (lp, greedy), text in zip(scores, ["ab12", "ab12", "ab12 and more", "z"]):
        expected_lp, expected_greedy = by_hand(model, DOCS[0]["context"], images(DOCS[0]), text)
        assert lp == pytest.approx(expected_lp, abs=1e-4) and greedy == expected_greedy
    # the model's own greedy token (the argmax after the prompt) is greedy by definition
    prompt = model.processor.collate([model.processor.encode_prompt(DOCS[1]["context"], [])])
    with torch.no_grad():
        first = int(model(prompt).logits[0, -1].argmax())
    token = model.tokenizer.decode([first])
    req = SimpleNamespace(args=(DOCS[1]["context"], token, lambda d: d["visual"], 1, "fake", "test"))
    assert model.tokenizer(token, add_special_tokens=False).input_ids == [first]  # seed 0: an ASCII byte
    assert lm.loglikelihood([req])[0][1] is True
