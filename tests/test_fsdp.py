"""Sharded training on the CPU: FSDP1 (`NamedUnitsFSDP`) and FSDP2 (`NamedUnitsFSDP2`) with two gloo processes
train D, X and H exactly as DDP does, in both stages and in bf16-mixed, on a data mix where a rank's batch is
often all text; checkpoints (consolidated or sharded) resume, export and start the next stage.

One `torchrun` pair runs every fit in turn (`DRIVER`), so the processes and the imports are paid for once."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from timm.models.vision_transformer import Block
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from mmllm.connectors import GatedCrossAttention
from mmllm.layers import CrossAttentionDecoderLayer
from mmllm.model import MMLLM
from mmllm.train.fsdp import NamedUnitsFSDP, recomputed_types, repeated_blocks, shard_units

REPO = Path(__file__).resolve().parents[1]

# Reads one fit per line of a runs file ("name args..."), runs each in this process pair and records per rank the
# loss and whether the batch had images at each step, and on rank 0 the weights before sharding.
DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import lightning as L
    import torch
    from mmllm.train.cli import run

    class Probe(L.Callback):
        def __init__(self, out):
            self.out, self.steps = out, []
        def setup(self, trainer, module, stage):
            if trainer.global_rank == 0:
                torch.save({k: v.clone() for k, v in module.state_dict().items()}, self.out / "init.pt")
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps.append([trainer.global_step, outputs["loss"].item(), len(batch.inputs.pixel_values) > 0])
        def on_train_end(self, trainer, module):
            (self.out / f"steps-rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))

    root, runs, base = Path(sys.argv[1]), Path(sys.argv[2]).read_text().splitlines(), sys.argv[3:]
    for line in runs:
        name, *args = line.split()
        (root / name).mkdir(parents=True, exist_ok=True)
        run(["fit", *base, "--trainer.default_root_dir", str(root / name), *args], extra_callbacks=[Probe(root / name)])
""")

STRATEGIES = {
    "ddp": ["--trainer.strategy", "ddp"],
    "fsdp1": ["--trainer.strategy", "mmllm.train.fsdp.NamedUnitsFSDP"],
    "fsdp2": ["--trainer.strategy", "mmllm.train.fsdp.NamedUnitsFSDP2"],
}
REGIMES = {  # stage 1 (connector only, parts frozen, units recomputed), stage 2 in fp32 and in bf16-mixed
    "pretrain": ["--model.stage", "pretrain", "--model.train_encoder", "false"],
    "sft": ["--model.stage", "sft"],
    "sft-bf16": ["--model.stage", "sft", "--trainer.precision", "bf16-mixed"],
}
ARCHS = ("nvlm_d", "nvlm_x", "nvlm_h")
STEPS = 3


def strategy_args(strategy: str, regime: str, **init_args) -> list[str]:
    if strategy == "ddp":
        return STRATEGIES[strategy]
    init_args.setdefault("checkpoint_units", regime == "pretrain")
    spec = {"class_path": STRATEGIES[strategy][1], "init_args": init_args}
    return ["--trainer.strategy", json.dumps(spec, separators=(",", ":"))]


def runs() -> list[str]:
    lines = [" ".join([f"{s}-{a}-{r}", "--model.arch", a, *REGIMES[r], *strategy_args(s, r)])
             for a in ARCHS for r in REGIMES for s in STRATEGIES]
    # Sharded checkpoints: written, then resumed by a second fit with `--ckpt_path last`.
    for s, sharded in (("fsdp1", {"state_dict_type": "sharded"}), ("fsdp2", {"save_distributed_checkpoint": True})):
        args = ["--model.arch", "nvlm_x", *REGIMES["sft"], *strategy_args(s, "sft", **sharded)]
        lines.append(" ".join([f"{s}-sharded", *args]))
        lines.append(" ".join([f"{s}-sharded-resumed", *args, "--trainer.default_root_dir", f"{{root}}/{s}-sharded",
                               "--ckpt_path", "last", "--trainer.max_steps", str(STEPS + 2)]))
    return lines


@pytest.fixture(scope="module")
def fits(tmp_path_factory) -> Path:
    """Every fit, in one torchrun pair: 6 captioned lines and 12 text-only conversations, 2 per rank a step."""
    from mmllm.train.synth import synthesize

    root = tmp_path_factory.mktemp("fsdp")
    synthesize("ocr", root / "d", 6, seed=0, level="easy")
    lines = (root / "d" / "train.jsonl").read_text().splitlines()
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    text = [json.dumps({"id": f"text-{w}", "conversations": [{"from": "human", "value": f"Say {w}."},
                                                             {"from": "gpt", "value": w}]}) for w in words]
    (root / "d" / "mix.jsonl").write_text("\n".join(lines + text) + "\n")
    (root / "runs.txt").write_text("\n".join(runs()).replace("{root}", str(root / "out")) + "\n")
    base = ["--config", str(REPO / "configs" / "nvlm_d_tiny.yaml"), "--data.train", str(root / "d" / "mix.jsonl"),
            "--data.batch_size", "2", "--trainer.max_steps", str(STEPS), "--trainer.devices", "2",
            "--trainer.val_check_interval", "null", "--trainer.enable_progress_bar", "false",
            "--checkpoint.every_n_train_steps", str(STEPS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MMLLM_DEBUG", None)
    (root / "driver.py").write_text(DRIVER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "driver.py", "out", "runs.txt", *base], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    (root / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise AssertionError(f"torchrun exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return root


def record(root: Path, name: str) -> SimpleNamespace:
    out = root / "out" / name
    ckpt = next(out.rglob("last.ckpt"))
    return SimpleNamespace(
        steps=[json.loads((out / f"steps-rank{r}.json").read_text()) for r in (0, 1)],
        init=torch.load(out / "init.pt", weights_only=True), ckpt=ckpt,
        final=None if ckpt.is_dir() else torch.load(ckpt, weights_only=True)["state_dict"],
    )


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", ["fsdp1", "fsdp2"])
def test_sharded_training_gives_ddps_losses_and_weights_and_trains_every_trainable_part(fits, strategy, arch, regime):
    ddp, sharded = record(fits, f"ddp-{arch}-{regime}"), record(fits, f"{strategy}-{arch}-{regime}")
    tol = dict(rtol=2e-2, atol=2e-2) if "bf16" in regime else dict(rtol=1e-4, atol=1e-5)
    for rank in (0, 1):
        assert [s[0] for s in sharded.steps[rank]] == list(range(1, STEPS + 1))
        torch.testing.assert_close([s[1] for s in sharded.steps[rank]], [s[1] for s in ddp.steps[rank]], **tol)
    # On some step one rank's batch held images and the other's only text: the ranks still ran the same units.
    assert any(a[2] != b[2] for a, b in zip(*sharded.steps))
    assert sharded.final.keys() == ddp.final.keys() == sharded.init.keys()
    moved = {k for k, v in sharded.final.items() if not torch.equal(v, sharded.init[k])}
    assert moved == {k for k, v in ddp.final.items() if not torch.equal(v, ddp.init[k])}
    for key in sharded.final:
        torch.testing.assert_close(sharded.final[key], ddp.final[key], **tol, msg=key)
    connector = {k for k in sharded.final if k.startswith("model.projector.") or ".cross." in k}
    assert connector <= moved  # gates, cross-attention and projector all learned
    if arch != "nvlm_d":
        assert any("attn_gate" in k for k in connector)
    llm = {k for k in sharded.final if k.startswith("model.llm.") and ".cross." not in k}
    assert (llm <= moved) if regime.startswith("sft") else not (llm & moved)  # frozen in stage 1, bit for bit


def test_the_parameter_table_counts_whole_parameters_under_sharding(fits):
    """Printed before the model is sharded: the same table as DDP's, not rank 0's shard."""
    totals = [line for line in (fits / "log.txt").read_text().splitlines() if line.startswith("all ")]
    per_run = dict(zip([line.split()[0] for line in runs()], totals))
    for arch in ARCHS:
        for regime in REGIMES:
            tables = {per_run[f"{strategy}-{arch}-{regime}"] for strategy in STRATEGIES}
            assert len(tables) == 1, tables


@pytest.mark.parametrize("strategy", ["fsdp1", "fsdp2"])
def test_a_sharded_checkpoint_resumes_exports_and_starts_the_next_stage(fits, strategy, tmp_path):
    from mmllm.cli import export
    from mmllm.train.checkpoint import is_sharded, read_checkpoint
    from mmllm.train.module import MMLLMModule, ModuleConfig

    first = record(fits, f"{strategy}-sharded")
    assert is_sharded(first.ckpt)
    resumed = json.loads((fits / "out" / f"{strategy}-sharded-resumed" / "steps-rank0.json").read_text())
    assert [s[0] for s in resumed] == [STEPS + 1, STEPS + 2]  # continued from the checkpoint, not from scratch
    state = read_checkpoint(first.ckpt)
    assert state["global_step"] == STEPS and state["state_dict"].keys() == first.init.keys()
    projector = state["state_dict"]["model.projector.0.weight"]
    assert not torch.equal(projector, first.init["model.projector.0.weight"])
    assert export(first.ckpt, tmp_path / "model")
    assert torch.equal(MMLLM.from_pretrained(tmp_path / "model").projector[0].weight, projector)
    module = MMLLMModule(ModuleConfig.from_dict({**state["hyper_parameters"], "init_from": str(first.ckpt)}))
    assert torch.equal(module.model.projector[0].weight, projector)


def unit_trace(module, batch) -> list[tuple[str, bool]]:
    """Which units a training forward runs, in order, and whether the backward pass runs through each."""
    names = {id(m): n for n, m in module.model.named_modules()}
    trace, hooks = [], []
    for unit in shard_units(module.model):
        def seen(m, args, out):
            out = out[0] if isinstance(out, tuple) else out
            trace.append((names[id(m)], bool(out.requires_grad)))

        hooks.append(unit.register_forward_hook(seen))
    module.model(batch).loss.backward()
    for hook in hooks:
        hook.remove()
    return trace


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
@pytest.mark.parametrize("arch", ARCHS)
def test_a_text_only_batch_runs_the_same_units_forward_and_backward_as_one_with_images(
        arch, stage, tiny_config, text_image):
    """What keeps ranks in step under FSDP: a rank whose batch holds no image must gather (forward) and
    reduce (backward) exactly the units the others do, or the job hangs."""
    from mmllm.train.module import MMLLMModule, ModuleConfig

    cfg = tiny_config()
    torch.manual_seed(0)
    module = MMLLMModule(ModuleConfig(arch=arch, encoder=cfg.encoder, llm=cfg.llm, stage=stage)).train()
    proc = module.processor
    image = [{"from": "human", "value": "<image>\nWhat is written?"}, {"from": "gpt", "value": "hello"}]
    text = [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "hello"}]
    with_images = proc.collate([proc.encode(image, [text_image("hello", (64, 32))]) for _ in range(2)])
    text_only = proc.collate([proc.encode(text, []) for _ in range(2)])
    assert unit_trace(module, text_only) == unit_trace(module, with_images)


@pytest.mark.parametrize("arch,units", [
    ("nvlm_d", {LlamaDecoderLayer, Block}),
    ("nvlm_x", {LlamaDecoderLayer, GatedCrossAttention, Block}),
    ("nvlm_h", {LlamaDecoderLayer, GatedCrossAttention, Block}),
])
def test_units_are_the_layers_the_blocks_and_each_part_apart_and_recompute_the_blocks(arch, units, tiny_config):
    torch.manual_seed(0)
    model = MMLLM(tiny_config(arch=arch))
    found = shard_units(model)
    assert recomputed_types(model) == units
    # Frozen vocabulary matrices and the tower's stem are units of their own, never the trainable connector's.
    llm = model.llm
    for part in (model.encoder, model.projector, llm.get_input_embeddings(), llm.get_output_embeddings()):
        assert any(part is unit for unit in found)
    layers = list(llm.model.layers)
    crosses = [m for m in found if isinstance(m, CrossAttentionDecoderLayer)]
    assert len(crosses) == (0 if arch == "nvlm_d" else 1)
    for cross in crosses:  # the inner decoder layer is sharded before the cross-attention layer around it
        assert found.index(cross.layer) < found.index(cross) and cross in layers


def test_a_tied_output_head_stays_with_its_embeddings(tiny_config):
    cfg = tiny_config()
    cfg.llm.options["tie_word_embeddings"] = True
    torch.manual_seed(0)
    model = MMLLM(cfg)
    assert model.llm.get_output_embeddings().weight is model.llm.get_input_embeddings().weight
    assert not any(unit is model.llm.get_output_embeddings() for unit in shard_units(model))


def test_a_resnet_tower_wraps_its_bottlenecks_and_nothing_smaller():
    from timm import create_model
    from timm.models.resnet import Bottleneck

    assert repeated_blocks(create_model("resnet50", pretrained=False)) == {Bottleneck}


def test_a_config_names_the_strategy_by_class_path(tmp_path, monkeypatch):
    from mmllm.train.cli import MMLLMCLI
    from mmllm.train.data import MMDataModule
    from mmllm.train.module import MMLLMModule, ModuleConfig

    config = tmp_path / "fsdp.yaml"
    config.write_text("trainer:\n  strategy:\n    class_path: mmllm.train.fsdp.NamedUnitsFSDP\n"
                      "    init_args: {checkpoint_units: true, sharding_strategy: SHARD_GRAD_OP}\n")
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # pytest's own arguments are not ours
    cli = MMLLMCLI(MMLLMModule, MMDataModule, run=False,
                   args=["--config", str(REPO / "configs" / "nvlm_d_tiny.yaml"), "--config", str(config)])
    strategy = cli.trainer.strategy
    assert isinstance(strategy, NamedUnitsFSDP) and strategy.checkpoint_units
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"


@pytest.mark.parametrize("arch", ARCHS)
def test_a_training_forward_reads_nothing_back_from_the_device_in_our_code(
        arch, monkeypatch, tiny_config, text_image):
    """Every such read waits for the device (a GPU stalls on each): the collator lays out what the model
    would otherwise read per step (placeholder counts, slots, cross-attention keys)."""
    from mmllm.train.module import MMLLMModule, ModuleConfig

    ours = tuple(str(REPO / folder) for folder in ("mmllm", "connectors", "encoders"))
    reads = []
    for name in ("item", "tolist", "__int__", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, original=original, name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(ours):
                reads.append(f"{name} in {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    cfg = tiny_config()
    torch.manual_seed(0)
    module = MMLLMModule(ModuleConfig(arch=arch, encoder=cfg.encoder, llm=cfg.llm, stage="sft")).train()
    proc = module.processor
    conv = [{"from": "human", "value": "<image>\nWhat is written?"}, {"from": "gpt", "value": "hello"}]
    batch = proc.collate([proc.encode(conv, [text_image("hello", (64, 32))]) for _ in range(2)])
    reads.clear()  # building the model and the batch may read; the step must not
    module.model(batch).loss.backward()
    assert reads == []
