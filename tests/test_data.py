"""Bad input is reported with where and why, replaced and counted; the run survives or stops cleanly."""
import json

import lightning as L
import pytest
import torch

from mmllm.jsonl import read_jsonl
from mmllm.train.data import ConversationDataset, MMDataModule
from mmllm.train.health import BadSampleMonitor, TrainingAborted
from mmllm.train.module import MMLLMModule, ModuleConfig


def conv(i: int, image: str) -> dict:
    return {"id": f"s{i}", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nWhat text?"}, {"from": "gpt", "value": f"w{i}"}]}


@pytest.fixture
def messy(tmp_path, text_image):
    """8 good samples and one of every kind of bad input."""
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(8):
        text_image(f"w{i}").save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps(conv(i, f"img/{i}.png")))
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    text_image("x", size=(100_000, 1)).save(tmp_path / "img" / "huge.png")
    lines += [json.dumps(conv(100, "img/missing.png")), json.dumps(conv(101, "img/corrupt.png")),
              json.dumps(conv(102, "img/empty.png")), json.dumps(conv(103, "img/huge.png")),
              '{"id": "broken", "image": ', json.dumps({"id": "nofield", "image": "img/0.png"})]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "train.jsonl"


def test_malformed_lines_are_reported_with_file_and_line(messy):
    records, bad = read_jsonl(messy, ("conversations",))
    assert len(records) == 12
    assert [str(b) for b in bad] == [
        f"{messy}:13: invalid JSON (Expecting value at column 26)",
        f"{messy}:14: missing field(s) ['conversations']",
    ]


def test_each_bad_image_has_its_message_and_is_replaced(messy, tiny_module):
    module = tiny_module()
    ds = ConversationDataset(str(messy), module.processor)
    reasons = {}
    for i in range(8, 12):
        sample = ds[i]
        assert sample.id in {f"s{k}" for k in range(8)}  # replaced by a good sample (wrapping round)
        reasons[i] = sample.bad
    assert "image not found" in reasons[8][0] and "(id s100)" in reasons[8][0] and ":9 " in reasons[8][0]
    assert "cannot decode image" in reasons[9][0] and "(id s101)" in reasons[9][0]
    assert "cannot decode image" in reasons[10][0] and "(id s102)" in reasons[10][0]
    assert "outside 1..16384 pixels" in reasons[11][0] and "(id s103)" in reasons[11][0]
    assert ds[8].id == ds[8].id  # deterministic substitute


def fit(module, train, max_steps=3, fraction=0.9, **kw):
    data = MMDataModule(train=str(train), batch_size=4, max_bad_fraction=fraction, processor=module.processor)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[BadSampleMonitor(show=100)], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw)
    trainer.fit(module, data)
    return trainer


def test_run_survives_bad_samples_and_reports_them(messy, capsys, tiny_module):
    trainer = fit(tiny_module(), messy, max_steps=3)  # 12 records / batch 4: one full epoch
    assert trainer.global_step == 3
    out = capsys.readouterr().out
    assert "epoch 0: 4 sample(s) replaced, 2 malformed line(s) skipped at load" in out
    for needle in ("(id s100): image not found", "(id s101): cannot decode", "(id s103): image size 100000x1",
                   "invalid JSON", "missing field(s)"):
        assert needle in out


def test_run_stops_past_max_bad_fraction(messy, tiny_module):
    with pytest.raises(TrainingAborted, match=r"exceed max_bad_fraction=0.2"):
        fit(tiny_module(), messy, max_steps=3, fraction=0.2)


def test_nan_loss_stops_before_the_optimizer_step(messy, tiny_module):
    module = tiny_module()
    with torch.no_grad():
        module.model.projector[1].weight[0, 0] = float("nan")
    before = module.model.llm.lm_head.weight.clone()
    with pytest.raises(TrainingAborted, match=r"non-finite loss \(nan\) at step 0; batch sample ids: \['s"):
        fit(module, messy, max_steps=2)
    assert torch.equal(module.model.llm.lm_head.weight, before)


def test_stages_freeze_the_right_parts(tiny_module, tiny_config):
    pre = tiny_module().__class__  # noqa: F841 (the class, to build each stage below)
    cfg = tiny_config()

    def trainable(**kw):
        m = MMLLMModule(ModuleConfig(encoder=cfg.encoder, llm=cfg.llm, **kw))
        flags = {name: {p.requires_grad for p in params} for name, params in m.part_parameters().items()}
        assert all(len(f) == 1 for f in flags.values()), flags  # a part trains whole or not at all
        assert sum(len(ps) for ps in m.part_parameters().values()) == len(list(m.parameters()))  # each in one part
        return {name: f.pop() for name, f in flags.items()}

    for arch in ("nvlm_d", "nvlm_x", "nvlm_h"):  # X/H: the blocks inside the LLM's layer list train with the connector
        assert trainable(arch=arch, stage="pretrain") == {"encoder": False, "connector": True, "llm": False}
        assert trainable(arch=arch, stage="sft") == {"encoder": False, "connector": True, "llm": True}
    assert trainable(stage="sft", freeze_llm_in_sft=True) == {"encoder": False, "connector": True, "llm": False}
    assert trainable(stage="pretrain", train_encoder=True)["encoder"] is True
    module = MMLLMModule(ModuleConfig(arch="nvlm_x", encoder=cfg.encoder, llm=cfg.llm, stage="pretrain")).train()
    assert not module.model.llm.training and all(b.training for b in module.model.cross_blocks().values())


def test_lr_schedule_cosine_and_warmup_stable_decay():
    from mmllm.train.schedule import lr_factor

    cosine = [lr_factor(s, total=100, warmup=10) for s in (0, 9, 10, 55, 100)]
    assert cosine == pytest.approx([1 / 11, 10 / 11, 1.0, 0.55, 0.1])
    wsd = [lr_factor(s, total=100, warmup=10, decay=20) for s in (10, 50, 80, 90, 100)]
    assert wsd == pytest.approx([1.0, 1.0, 1.0, 0.55, 0.1])
