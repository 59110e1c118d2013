"""slimvlm.bench on the tiny offline VLMs: phases, token counts, I/O round-trips, hooks, errors.

Kept fast (< 30 s on a busy 2-core machine): one run, no warm-up, one decode step."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from slimvlm import bench
from slimvlm import testing as T
from slimvlm.bench import BenchRow, MethodSpec
from slimvlm.pipeline import prepare

FAST = dict(runs=1, warmup=0, decode_steps=1)
PHASES = ("encode", "reduce", "prefill", "ttft", "decode")


@pytest.fixture(scope="module")
def llava():
    model = T.tiny_model("llava")
    inputs = T.tiny_inputs(model, "llava", ["Describe the image in detail."])
    return model, inputs


@pytest.fixture(scope="module")
def rows(llava):
    model, inputs = llava
    methods = ["none", ("spatial", {"keep": 16}), ("prumerge", {"keep": 7}), ("tome", {"keep": 8})]
    return bench.benchmark(model, inputs, methods, **FAST)


def test_rows_have_every_phase_and_positive_times(rows):
    assert [r.label for r in rows] == ["none", "spatial(keep=16)", "prumerge(keep=7)", "tome(keep=8)"]
    for r in rows:
        for p in PHASES:
            assert getattr(r, f"{p}_s") > 0, (r.label, p)
            assert 0 < getattr(r, f"{p}_min_s") <= getattr(r, f"{p}_s")
        assert r.ttft_s == pytest.approx(r.encode_s + r.reduce_s + r.prefill_s)  # one run: exactly the sum
        assert r.split == "staged"
        assert r.threads == 1 and r.dtype == "float32" and r.device == "cpu"
        assert r.runs == 1 and r.decode_steps == 1 and not r.in_llm


def test_visual_tokens_match_the_pipeline_stats(llava, rows):
    model, inputs = llava
    n = T.num_visual_tokens(model)
    for r in rows:
        stats = prepare(model, inputs, r.method, **r.options).stats
        assert r.visual_tokens_before == sum(s.tokens_before for s in stats) == n
        assert r.visual_tokens == sum(s.tokens_after for s in stats)
    assert [r.visual_tokens for r in rows] == [n, 16, 7, 8]  # prumerge keep=7: 6 selected + its summary token


def test_prefill_of_a_reduced_method_sees_fewer_tokens(rows):
    base = rows[0]
    text = base.text_tokens
    assert text > 0
    for r in rows:
        assert r.text_tokens == text  # text untouched
        assert r.llm_tokens == text + r.visual_tokens  # the KV cache after prefill holds exactly these
    for r in rows[1:]:
        assert r.llm_tokens < base.llm_tokens
        assert r.analytic_prefill_gflops < base.analytic_prefill_gflops
        assert r.analytic_speedup > 1 and r.prefill_speedup > 0
    assert base.prefill_speedup == 1.0 and base.analytic_speedup == 1.0


def test_staged_split_gives_exactly_what_prepare_gives(llava):
    model, inputs = llava
    st = bench._make_setting(model, MethodSpec("prumerge", {"keep": 7}))
    with torch.no_grad():
        got, enc, red = bench._prepare_timed(st, model, inputs)
    want = prepare(model, inputs, "prumerge", keep=7)
    assert enc > 0 and red > 0
    assert got.stats == want.stats
    for k in ("input_ids", "attention_mask"):
        assert torch.equal(got.kwargs[k], want.kwargs[k])
    a, b = got.kwargs["mm_encoder_outputs"]["image"], want.kwargs["mm_encoder_outputs"]["image"]
    assert all(torch.equal(x, y) for x, y in zip(a.pooler_output, b.pooler_output))


def test_csv_and_json_round_trip(rows, tmp_path):
    assert bench.from_csv(bench.to_csv(rows, tmp_path / "r.csv")) == rows
    assert bench.from_json(bench.to_json(rows, tmp_path / "r.json")) == rows
    assert isinstance(bench.from_csv(tmp_path / "r.csv")[2].options, dict)


def test_plot_writes_a_png(rows, llava, tmp_path):
    pytest.importorskip("matplotlib")
    out = bench.plot(rows, tmp_path / "p.png", config=llava[0].config)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench.plot(rows, tmp_path / "q.png", phase="ttft").stat().st_size > 0


@pytest.mark.parametrize(
    "methods", [["none", "no-such-method"], [("spatial", {"bogus": 1})], [("prumerge", {"keep": 0})]]
)
def test_bad_method_or_option_is_a_value_error(llava, methods):
    model, inputs = llava
    with pytest.raises(ValueError):
        bench.benchmark(model, inputs, methods, **FAST)


def test_threads_are_restored_and_in_llm_hook_wraps_prefill_and_decode(llava):
    model, inputs = llava
    entered = []

    @contextlib.contextmanager
    def hook(m):
        entered.append(torch.get_num_threads())
        yield

    spec = MethodSpec("none", label="fake-in-llm", in_llm=hook, per_layer_visual=lambda n, layers: [n] + [n // 2] * (layers - 1))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (row,) = bench.benchmark(model, inputs, [spec], runs=2, warmup=1, decode_steps=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert entered == [1, 1, 1]  # warm-up + 2 runs, on one thread
    assert row.in_llm and row.label == "fake-in-llm" and row.prefill_speedup is None  # no "none" row
    full, _ = bench.analytic_prefill_flops(model.config, row.text_tokens, row.visual_tokens)
    assert row.analytic_prefill_gflops * 1e9 < full


def test_qwen_mrope_decode_and_batch():
    model = T.tiny_model("qwen2-vl")
    inputs = T.tiny_inputs(model, "qwen2-vl", ["Describe the image in detail.", "What?"])
    rows = bench.benchmark(model, inputs, ["none", ("spatial", {"keep": 4})], **FAST)
    n = T.num_visual_tokens(model)
    assert [r.visual_tokens for r in rows] == [2 * n, 8] and all(r.batch == 2 for r in rows)
    assert all(r.decode_s > 0 for r in rows)
    assert rows[1].llm_tokens < rows[0].llm_tokens
    assert dataclasses.asdict(rows[1])["options"] == {"keep": 4}
    assert isinstance(rows[0], BenchRow)
