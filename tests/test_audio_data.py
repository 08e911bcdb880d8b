"""Bad audio in training: each class is reported with its id and reason and replaced; a clip longer
than the window is truncated, counted and kept; the run survives."""
import json

import lightning as L
import numpy as np
import soundfile as sf
import torch

from mmllm.train.data import ConversationDataset, MMDataModule
from mmllm.train.health import BadSampleMonitor
from mmllm.train.module import MMLLMModule, ModuleConfig
from mmllm.train.synth import synthesize


def module(tiny_config, audio_config) -> MMLLMModule:
    cfg = tiny_config()
    torch.manual_seed(0)
    return MMLLMModule(ModuleConfig(encoder=cfg.encoder, llm=cfg.llm, audio=audio_config, stage="sft",
                                    train_encoder=True))


def messy_audio(root, tone, bad_audio_files) -> tuple:
    """8 good synthetic clips, one 6.5 s clip (window: 4 s) and one record per bad-audio class."""
    synthesize("asr", root, 8, seed=0)
    sf.write(root / "long.wav", tone(6.5), 16000)
    messages = bad_audio_files(root)
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    for k, name in enumerate(["long.wav", *messages]):
        records.append({"id": f"bad{k}", "audio": name, "conversations": [
            {"from": "human", "value": "<audio>\nTranscribe the audio."}, {"from": "gpt", "value": "one"}]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "train.jsonl", messages


def test_bad_audio_is_replaced_and_reported_and_long_clips_are_kept_truncated(
        tmp_path, capsys, tiny_config, audio_config, tone, bad_audio_files):
    train, messages = messy_audio(tmp_path, tone, bad_audio_files)
    model = module(tiny_config, audio_config)
    ds = ConversationDataset(str(train), model.processor)
    long = ds[8]
    assert long.id == "bad0" and long.bad == [] and len(long.sample.truncated) == 1
    assert "(id bad0): audio clip of 6.5 s truncated to the 4 s window" in long.sample.truncated[0]
    for k, message in enumerate(messages.values(), 1):
        sample = ds[8 + k]
        assert sample.id.startswith("asr-") and f"(id bad{k}): " in sample.bad[0] and message in sample.bad[0]

    data = MMDataModule(train=str(train), batch_size=4, max_bad_fraction=0.9, processor=model.processor)
    trainer = L.Trainer(max_steps=4, callbacks=[BadSampleMonitor(show=100)], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, data)  # 15 records / batch 4: one full epoch
    assert trainer.global_step == 4 and np.isfinite(trainer.callback_metrics["train_loss"].item())
    out = capsys.readouterr().out
    assert "epoch 0: 6 sample(s) replaced, 0 malformed line(s) skipped at load, 1 truncated and kept" in out
    lines = out.splitlines()
    for k, message in enumerate(messages.values(), 1):
        assert any(f"(id bad{k}): " in line and message in line for line in lines), message
    assert "(id bad0): audio clip of 6.5 s truncated" in out
