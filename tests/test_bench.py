"""`mmllm bench`: correctness only (peers built at our size and fed our inputs, the report's contents).

No timing is asserted: speed is what the benchmark prints, not what a test can check on a shared machine.
"""
import json
from types import SimpleNamespace

import pytest
import torch

from mmllm.eval.bench import ARCHS, main, n_params, size_config
from mmllm.eval.peers import build_llava, build_mllama, llava_inputs, mllama_inputs
from mmllm.eval.cost import decoder_length, prompt_batch, step_flops, train_batch, train_step
from mmllm.model import MMLLM

MAX_TILES = 2
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Correctness only: one intra-op thread keeps OpenMP's spinning workers from stalling on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny() -> dict[str, MMLLM]:
    torch.manual_seed(0)
    return {arch: MMLLM(size_config("tiny", arch, MAX_TILES)) for arch in ARCHS}


def test_llava_matches_nvlm_d_in_size_and_runs_on_its_batch(tiny):
    ours = tiny["nvlm_d"]
    llava = build_llava(ours, 1)
    # Same Llama; the CLIP tower and projector differ only in shape details (patch embedding, norms, biases).
    assert abs(n_params(llava) / n_params(ours) - 1) < 0.02
    batch = train_batch(ours, 2, batch_size=2)
    out = llava(**llava_inputs(batch, CPU))  # raises unless its image features fill our placeholders exactly
    assert out.logits.shape[:2] == batch.input_ids.shape and torch.isfinite(out.loss)
    prompt = prompt_batch(ours, 2, batch_size=2)
    new = llava.generate(**llava_inputs(prompt, CPU), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                         pad_token_id=0, eos_token_id=2)
    assert new.shape == (2, prompt.input_ids.shape[1] + 3)


def test_mllama_matches_nvlm_x_in_size_and_sees_what_our_tokens_see(tiny):
    ours = tiny["nvlm_x"]
    mllama = build_mllama(ours, n_tiles=3)  # 2 tiles + thumbnail
    # Its cross-attention MLPs are SwiGLU (3 matrices to our 2) and it adds tile embedding tables: within 15 %.
    assert abs(n_params(mllama) / n_params(ours) - 1) < 0.15
    assert mllama.config.text_config.num_hidden_layers == 2 + len(ours.cross_layers())
    batch = train_batch(ours, 2, batch_size=2)
    inputs = mllama_inputs(batch, CPU)
    assert inputs["pixel_values"].shape == (2, 1, 3, 3, 32, 32)
    mask = inputs["cross_attention_mask"][:, :, 0]  # [B, T, tiles]
    layout = batch.layout
    tags = layout.token_tile >= 0
    assert tags.sum() == 2 * 3  # each sample has three tile tags, each seeing its own tile only
    assert (mask[tags].sum(-1) == 1).all()
    assert (mask[(layout.token_media >= 0) & ~tags] == 1).all() and (mask[layout.token_media < 0] == 0).all()
    out = mllama(**inputs)
    assert out.logits.shape[:2] == batch.input_ids.shape and torch.isfinite(out.loss)
    prompt = prompt_batch(ours, 2, batch_size=1)
    new = mllama.generate(**mllama_inputs(prompt, CPU), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                          pad_token_id=0, eos_token_id=2)
    assert new.shape == (1, prompt.input_ids.shape[1] + 3)


def test_bench_writes_every_row_and_ratio_with_the_design_decoder_lengths(tiny, tmp_path):
    main(["--sizes", "tiny", "--max_tiles", str(MAX_TILES), "--tiles", "1,2", "--steps", "1", "--new_tokens", "2",
          "--peak_tflops", "0.5", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    models = [*ARCHS, "llava", "mllama"]
    rows = {(r["model"], r["tiles"]): r for r in result["rows"]}
    assert set(rows) == {(m, k) for m in models for k in (1, 2)}
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_mb"] for r in rows.values())
    for r in rows.values():
        assert r["step_tflop"] > 0 and r["mfu"] == pytest.approx(r["step_tflop"] / r["step_s"] / 0.5)
        assert r["train_tokens_per_s"] == pytest.approx(r["decoder_len"] / r["step_s"])
    pairs = {(r["pair"], r["tiles"]) for r in result["ratios"]}
    expected = ("nvlm_x/nvlm_d", "nvlm_h/nvlm_d", "nvlm_d/llava", "nvlm_x/mllama")
    assert pairs == {(p, k) for p in expected for k in (1, 2)}
    assert all({"step_s", "gen_s", "decoder_len"} <= set(r) for r in result["ratios"])
    assert {m["model"] for m in result["models"]} == set(models)
    length = {(m, k): rows[m, k]["decoder_len"] for m, k in rows}
    per_tile = tiny["nvlm_d"].processor.tokens_per_tile
    for k in (1, 2):
        for arch in ARCHS:
            assert length[arch, k] == decoder_length(tiny[arch], k)
        # docs/paper.md: D carries every tile's tokens (thumbnail included), X only the tags, H the thumbnail.
        assert length["nvlm_d", k] - length["nvlm_x", k] == (k + (k > 1)) * per_tile
        assert length["nvlm_h", k] == length["nvlm_d", 1]
        assert (length["llava", k], length["mllama", k]) == (length["nvlm_d", k], length["nvlm_x", k])
    packing = {(r["model"], r["batching"]): r for r in result["packing"]}
    for arch in ARCHS:  # the same samples: the real tokens are the same, packing only drops padding
        padded, *packed = [r for (m, _), r in packing.items() if m == arch]
        assert padded["batching"] == "padded" and len(packed) == 2
        real = round(padded["rows"] * padded["row_tokens"] * (1 - padded["padding_fraction"]))
        for r in packed:
            assert r["rows"] < padded["rows"] and r["padding_fraction"] < padded["padding_fraction"]
            assert round(r["rows"] * r["row_tokens"] * (1 - r["padding_fraction"])) == real
    report = (tmp_path / "bench.md").read_text()
    assert "| tiny | 2 | nvlm_x/mllama |" in report and "## Notes" in report and "## Packing" in report
    for name in ("step_s_vs_tiles-tiny.png", "tokens_per_s_vs_tiles-tiny.png"):
        assert (tmp_path / name).is_file()


def test_step_flops_counts_forward_and_backward_matrix_products_exactly():
    class TwoLayers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(4, 2, bias=False)

        def forward(self, x):
            return SimpleNamespace(loss=self.second(self.first(x)).sum())

    b = 3
    forward = 2 * b * 8 * 4 + 2 * b * 4 * 2
    # backward: both weight gradients, and the input gradient of the second layer only (x needs none)
    backward = 2 * b * 8 * 4 + 2 * (2 * b * 4 * 2)
    assert step_flops(TwoLayers(), {"x": torch.ones(b, 8)}) == forward + backward


def test_mmllm_dispatches_bench_and_it_has_help(capsys):
    from mmllm.cli import main as cli

    with pytest.raises(SystemExit) as done:
        cli(["bench", "--help"])
    assert done.value.code == 0 and "usage: mmllm bench" in capsys.readouterr().out
