"""slimvlm._compat: the key/value cache under its transformers >= 5.24 name (``cache``) or the older one."""

import transformers

from slimvlm._compat import cache_from_kwargs, cache_from_output, cache_kwarg


def test_cache_is_found_under_either_name():
    marker = object()
    for key in ("cache", "past_key_values"):
        assert cache_from_kwargs({key: marker, "hidden_states": 1}) is marker
        assert cache_from_output({"logits": 0, key: marker}) is marker
    assert cache_from_kwargs({"cache": None, "past_key_values": marker}) is marker
    assert cache_from_kwargs({}) is None and cache_from_output({"logits": 0}) is None


def test_cache_kwarg_follows_the_installed_transformers():
    class New:
        def forward(self, input_ids=None, cache=None): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None): ...

    assert cache_kwarg(New()) == "cache" and cache_kwarg(Old()) == "past_key_values"
    from slimvlm.testing import tiny_model

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    want = "cache" if (major, minor) >= (5, 24) else "past_key_values"
    assert cache_kwarg(tiny_model("llava")) == want
