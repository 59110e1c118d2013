"""The `slimvlm` command line, driven through its installed entry point (subprocess), as a user would."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXE = shutil.which("slimvlm") or str(Path(sys.executable).with_name("slimvlm"))


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent)})


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((60, 80, 3)) * 255).astype("uint8")).save(path)
    return str(path)


def test_entry_point_is_installed():
    assert Path(EXE).exists(), "pip install -e . must install the slimvlm command"
    out = cli("--help")
    assert out.returncode == 0 and "methods" in out.stdout and "viz" in out.stdout and "cost" in out.stdout


def test_methods_lists_every_registered_method():
    from slimvlm.methods import available

    out = cli("methods", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == available()
    assert next(r for r in rows if r["name"] == "prumerge")["options"]["k_neighbors"] == 32


def test_run_reduces_and_reports(image):
    out = cli("run", "--model", "tiny:llava", "--image", image, "--prompt", "What is it?", "--method", "spatial",
              "--keep", "16", "--compare", "none", "--max-new-tokens", "3", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)["results"]
    assert [r["method"] for r in res] == ["none", "spatial"]
    assert res[0]["visual_tokens"] == [[64, 64]] and res[1]["visual_tokens"] == [[64, 16]]


def test_run_with_original_positions(image):
    out = cli("run", "--model", "tiny:llava", "--image", image, "--prompt", "What is it?", "--method", "spatial",
              "--keep", "16", "--positions", "original", "--max-new-tokens", "3", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"][0]["visual_tokens"] == [[64, 16]]


def test_cost_reproduces_aim_numbers():
    # AIM's FLOPs script counts one layer earlier than its model code (docs/methods.md, "AIM"): the paper's
    # (l1, l2) = (14, 22) is slimvlm's (13, 21); at (14, 22) slimvlm runs and costs 15.5 TFLOPs.
    out = cli("cost", "--model", "qwen2-7b", "--visual", "6272", "--text", "100", "--keep", "1568",
              "-m", "aim-merge", "-m", "aim", "-o", "l1=13", "-o", "l2=21", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    tflops = [round(r["lm_prefill_flops"] / 1e12, 1) for r in rep.values()]
    assert tflops == [99.6, 22.9, 14.8]  # AIM paper: 99.63 -> 22.90 -> 14.76 TFLOPs
    out = cli("cost", "--model", "qwen2-7b", "--visual", "6272", "--text", "100", "--keep", "1568",
              "-m", "aim", "-o", "l1=14", "-o", "l2=22", "--json")
    assert [round(r["lm_prefill_flops"] / 1e12, 2) for r in json.loads(out.stdout).values()] == [99.63, 15.53]


def test_bench_writes_rows(tmp_path):
    out_csv = tmp_path / "b.csv"
    out = cli("bench", "--model", "tiny:llava", "--prompt", "hi", "-m", "none", "-m", "spatial", "--keep", "16",
              "--runs", "1", "--warmup", "0", "--decode-steps", "1", "--out", str(out_csv))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["method"], int(r["visual_tokens"])) for r in rows] == [("none", 64), ("spatial", 16)]


def test_viz_draws_with_the_real_tower(image, tmp_path):
    pytest.importorskip("onnx")
    target = tmp_path / "v.png"
    out = cli("viz", "--image", image, "--method", "spatial", "--method", "prumerge", "--keep", "36", "--out", str(target))
    assert out.returncode == 0, out.stderr
    assert Image.open(target).size[0] > 2 * 336 and "spatial (keep=36): 36" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--model", "tiny:llava", "--image", "/no/such/file.png", "--prompt", "x", "--method", "spatial"], "no such file"),
        (["run", "--model", "tiny:llava", "--image", "IMAGE", "--prompt", "x", "--method", "bogus"], "unknown method 'bogus'"),
        (["run", "--model", "tiny:llava", "--image", "IMAGE", "--prompt", "x", "--method", "spatial", "--ratio", "1.5"],
         "ratio must be in \\(0, 1\\]"),
        (["run", "--model", "tiny:llava", "--image", "IMAGE", "--prompt", "x", "--method", "spatial", "--keep", "0"],
         "keep must be a whole number >= 1"),
        (["run", "--model", "tiny:nope", "--image", "IMAGE", "--prompt", "x", "--method", "spatial"], "unknown tiny family"),
        (["run", "--model", "tiny:qwen2-vl", "--image", "IMAGE", "--prompt", "x", "--method", "spatial", "--keep", "4",
          "--positions", "renumber"], "M-RoPE"),
        (["run", "--model", "tiny:llava", "--image", "IMAGE", "--prompt", "x", "--method", "spatial",
          "--positions", "first"], "invalid choice: 'first'"),
        (["viz", "--image", "IMAGE", "--method", "fastv"], "prunes inside the language model"),
        (["cost", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["cost", "--model", "vicuna-7b", "--keep", "9999"], "--keep <= --visual"),
        (["bench", "--model", "tiny:llava", "--prompt", "x", "-m", "bogus"], "unknown method 'bogus'"),
    ],
)
def test_bad_input_gives_a_clear_message_and_nonzero_exit(args, message, image):
    import re

    out = cli(*[image if a == "IMAGE" else a for a in args])
    assert out.returncode != 0
    assert re.search(message, out.stderr), out.stderr
    assert "Traceback" not in out.stderr


def test_viz_unknown_method_is_a_clear_error(image):
    out = cli("viz", "--image", image, "--method", "bogus")
    assert out.returncode != 0 and "unknown method 'bogus'" in out.stderr and "Traceback" not in out.stderr
