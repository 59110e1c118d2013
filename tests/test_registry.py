"""Tests of the method registry (``slimvlm.methods.registry``): ``available``, ``get``, ``reduce`` and
``make_config`` for the baseline methods (identity, ToMe, AIM merge, VisionZip, random, sequential, spatial,
pool)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from slimvlm.methods import (
    SIGNALS,
    Reduction,
    aim_merge,
    available,
    get,
    identity,
    make_config,
    pool,
    random_sample,
    reduce,
    sequential,
    spatial,
    tome,
    visionzip,
)

BASELINES = {
    "none": identity,
    "tome": tome,
    "aim-merge": aim_merge,
    "visionzip": visionzip,
    "random": random_sample,
    "sequential": sequential,
    "spatial": spatial,
    "pool": pool,
}
BUDGETED = [name for name in BASELINES if name != "none"]


def randn(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def signals(b: int = 2, n: int = 36, c: int = 5) -> dict:
    return {
        "cls_attn": torch.rand(b, n, generator=torch.Generator().manual_seed(1)),
        "keys": randn(2, b, n, 4),
        "metric": randn(3, b, n, 6),
        "cls_feature": randn(4, b, c),
        "grid": (6, 6),
        "q": randn(5, b, n + 1, 8),
        "k": randn(6, b, n + 1, 8),
    }


def same(r1: Reduction, r2: Reduction) -> None:
    for f in ("features", "anchors", "lengths", "assignment"):
        assert torch.equal(getattr(r1, f), getattr(r2, f)), f
    assert r1.method == r2.method


def test_available_lists_the_baselines():
    names = available()
    assert isinstance(names, list)
    assert all(isinstance(n, str) for n in names)
    assert len(names) == len(set(names))
    for name in BASELINES:
        assert name in names


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_get_returns_the_function_and_config(name):
    info = get(name)
    assert info.name == name
    assert info.function is BASELINES[name]
    assert dataclasses.is_dataclass(info.config)
    assert set(info.needs) <= set(info.accepts) <= set(SIGNALS)
    assert info.defaults() == {f.name: f.default for f in dataclasses.fields(info.config)}


def test_signals_needed_by_visionzip():
    assert set(get("visionzip").needs) == {"cls_attn", "keys"}
    assert "cls_feature" in get("visionzip").accepts
    assert "metric" in get("tome").accepts and "metric" in get("aim-merge").accepts
    for name in ("none", "random", "sequential", "spatial", "pool", "tome", "aim-merge"):
        assert get(name).needs == ()


@pytest.mark.parametrize("bad", ["nope", "ToMe", "", "visionzip "])
def test_unknown_method_lists_the_names(bad):
    for call in (lambda: get(bad), lambda: reduce(bad, randn(0, 1, 4, 2)), lambda: make_config(bad)):
        with pytest.raises(ValueError) as exc:
            call()
        msg = str(exc.value)
        for name in available():
            assert name in msg


@pytest.mark.parametrize("name", BUDGETED)
@pytest.mark.parametrize("opts", [{}, {"keep": 9}, {"ratio": 0.5}])
def test_reduce_equals_direct_call(name, opts):
    x = randn(0, 2, 36, 5)
    sig = signals()
    direct_kwargs = {k: v for k, v in sig.items() if k in get(name).accepts}
    same(reduce(name, x, sig, **opts), BASELINES[name](x, **direct_kwargs, **opts))


def test_reduce_identity():
    x = randn(0, 3, 10, 4)
    red = reduce("none", x)
    assert torch.equal(red.features, x)
    assert red.method == "none"
    same(red, identity(x))


@pytest.mark.parametrize(
    "name,opts",
    [
        ("tome", {"keep": 9, "mode": "faithful"}),
        ("aim-merge", {"schedule": (18, 5)}),
        ("visionzip", {"dominant": 7, "contextual": 3, "mode": "faithful"}),
        ("random", {"keep": 5, "seed": 11}),
        ("spatial", {"sample_grid": (2, 3)}),
        ("pool", {"sample_grid": (3, 2)}),
    ],
)
def test_reduce_passes_method_specific_options(name, opts):
    x = randn(0, 2, 36, 5)
    sig = signals()
    direct_kwargs = {k: v for k, v in sig.items() if k in get(name).accepts}
    same(reduce(name, x, sig, **opts), BASELINES[name](x, **direct_kwargs, **opts))


def test_reduce_ignores_signals_the_method_does_not_take():
    x = randn(0, 2, 36, 5)
    sig = signals()
    same(reduce("tome", x, sig, keep=9), tome(x, metric=sig["metric"], keep=9))
    same(reduce("sequential", x, sig, keep=9), sequential(x, keep=9))
    same(reduce("visionzip", x, sig, keep=9),
         visionzip(x, cls_attn=sig["cls_attn"], keys=sig["keys"], cls_feature=sig["cls_feature"], keep=9))


def test_reduce_drops_none_signals():
    x = randn(0, 2, 36, 5)
    same(reduce("tome", x, {"metric": None}, keep=9), tome(x, keep=9))
    same(reduce("visionzip", x, {**signals(), "cls_feature": None}, keep=9),
         visionzip(x, cls_attn=signals()["cls_attn"], keys=signals()["keys"], keep=9))


def test_reduce_visionzip_without_signals_raises():
    with pytest.raises(ValueError):
        reduce("visionzip", randn(0, 1, 36, 5), keep=9)


@pytest.mark.parametrize("name", BUDGETED)
@pytest.mark.parametrize(
    "opts,word",
    [({"keep": 0}, "keep"), ({"ratio": 1.5}, "ratio"), ({"ratio": 0}, "ratio"), ({"bogus_option": 1}, "bogus_option")],
)
def test_reduce_bad_options_name_the_option(name, opts, word):
    with pytest.raises(ValueError, match=word):
        reduce(name, randn(0, 1, 36, 5), signals(b=1), **opts)


def test_reduce_unknown_option_on_identity():
    with pytest.raises(ValueError, match="keep"):
        reduce("none", randn(0, 1, 36, 5), keep=3)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_make_config_unknown_option_lists_options(name):
    with pytest.raises(ValueError) as exc:
        make_config(name, definitely_not_an_option=3)
    msg = str(exc.value)
    assert "definitely_not_an_option" in msg
    for f in dataclasses.fields(get(name).config):
        assert f.name in msg


@pytest.mark.parametrize("name", BUDGETED)
def test_make_config_builds_the_typed_config(name):
    cfg = make_config(name, keep=12)
    assert isinstance(cfg, get(name).config)
    assert cfg.keep == 12
    # the config object is accepted directly and equals the keyword form
    x = randn(0, 2, 36, 5)
    sig = signals()
    direct_kwargs = {k: v for k, v in sig.items() if k in get(name).accepts}
    same(BASELINES[name](x, config=cfg, **direct_kwargs), BASELINES[name](x, keep=12, **direct_kwargs))


@pytest.mark.parametrize("name", BUDGETED)
def test_make_config_validates(name):
    with pytest.raises(ValueError, match="keep"):
        make_config(name, keep=0)
    with pytest.raises(ValueError, match="ratio"):
        make_config(name, ratio=1.5)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_reduce_empty_batch(name):
    x = torch.zeros(0, 36, 5)
    sig = {"cls_attn": torch.zeros(0, 36), "keys": torch.zeros(0, 36, 4), "metric": torch.zeros(0, 36, 6)}
    red = reduce(name, x, sig)
    assert len(red) == 0
    assert red.features.shape[0] == 0 and red.features.shape[-1] == 5
    assert red.assignment.shape == (0, 36)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_reduce_rejects_non_finite(name):
    x = randn(0, 2, 36, 5)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        reduce(name, x, signals())


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_result_method_field_is_the_registry_name(name):
    red = reduce(name, randn(0, 2, 36, 5), signals())
    assert red.method == name
