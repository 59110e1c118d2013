"""Per-layer schedules of how many visual tokens the language model keeps.

A :class:`Schedule` holds, for every decoder layer ``l`` (0-based), ``keep[l]``: the fraction of the ORIGINAL
visual tokens of a sample that layer ``l`` processes (optionally capped at ``limit[l]`` tokens). ``keep[0]`` is 1.
Where ``keep`` drops (a "cut" at layer ``l``), the tokens are chosen before layer ``l`` runs, by the attention of
layer ``l - 1`` for most rules (AIM: "the decision made from layer i's attention is applied from layer i+1"; FastV:
"at layer K rank by the attention of layer K-1"). A sample with ``n`` visual tokens keeps ``int(n * keep[l])`` of
them at layer ``l`` (the official ``int(...)``, floor).

With ``recycle`` (SparseVLM's token recycling) a cut ranks ``selected`` tokens, at most all but one of the visual
tokens present (the official ``min(count, v - 1)``), and turns part of the pruned ones into new merged tokens that
stay: layer ``l`` then processes ``selected + merged`` visual tokens (:meth:`Schedule.counts` follows them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "Schedule",
    "Recycle",
    "aim_retain_rates",
    "aim_schedule",
    "fastv_schedule",
    "pyramiddrop_schedule",
    "sparsevlm_schedule",
    "sparsevlm_stage_counts",
    "SPARSEVLM_STAGE_COUNTS",
    "per_layer_schedule",
    "make_schedule",
    "AIM_DEFAULTS",
]

#: AIM (l1, l2) per LLM depth, 1-based layer numbers of the paper's piecewise-linear form (see aim_retain_rates).
AIM_DEFAULTS: dict[int, tuple[int, int]] = {28: (14, 22), 32: (13, 21)}


@dataclass(frozen=True)
class Recycle:
    """Token recycling at a cut (SparseVLM, ``score.py`` / ``modelling_sparse_llama.py``): of the ``p`` visual
    tokens a cut prunes, the ``int(p * share) + 1`` best ranked are clustered into ``int(m / per_token) + 1``
    merged tokens (``m`` the recycled count) that stay in the sequence (official: 30 %, one per 10)."""

    share: float = 0.3
    per_token: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.share) <= 1.0 or isinstance(self.per_token, bool) or int(self.per_token) < 1:
            raise ValueError(f"recycle needs share in [0, 1] and per_token >= 1, got {self.share}, {self.per_token}")

    def recycled(self, pruned: int) -> int:
        """How many of ``pruned`` tokens are clustered (0 when nothing is pruned)."""
        return int(pruned * self.share) + 1 if pruned > 0 else 0

    def merged(self, pruned: int) -> int:
        """How many merged tokens come out of ``pruned`` pruned tokens."""
        m = self.recycled(pruned)
        return int(m / self.per_token) + 1 if m > 0 else 0


@dataclass(frozen=True)
class Schedule:
    """Per decoder layer ``l``: ``keep[l]``, the fraction of the original visual tokens it processes, and
    optionally ``limit[l]``, an absolute cap on their number (None: no cap); ``recycle``: whether cuts turn part of
    the pruned tokens into merged tokens (see :class:`Recycle`); ``cuts``: the cut layers when they are more than
    the layers where ``keep`` or ``limit`` drop (a recycling stage may keep the same count and still cut)."""

    keep: tuple[float, ...]
    name: str = "custom"
    limit: tuple[int | None, ...] | None = None
    recycle: Recycle | None = None
    cuts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        keep = tuple(float(f) for f in self.keep)
        object.__setattr__(self, "keep", keep)
        if not keep:
            raise ValueError("a schedule needs at least one layer")
        for i, f in enumerate(keep):
            if not (0.0 <= f <= 1.0) or math.isnan(f):
                raise ValueError(f"keep[{i}] = {f} is not a fraction in [0, 1]")
        if keep[0] != 1.0:
            raise ValueError(
                f"keep[0] must be 1 (layer 0 sees every token; a cut needs the attention of the layer before), got {keep[0]}"
            )
        for i in range(1, len(keep)):
            if keep[i] > keep[i - 1]:
                raise ValueError(f"keep must not increase: keep[{i}] = {keep[i]} > keep[{i - 1}] = {keep[i - 1]}")
        if self.limit is not None:
            limit = tuple(None if v is None else int(v) for v in self.limit)
            object.__setattr__(self, "limit", limit)
            if len(limit) != len(keep):
                raise ValueError(f"limit has {len(limit)} layers, keep has {len(keep)}")
            if limit[0] is not None:
                raise ValueError("limit[0] must be None (layer 0 sees every token)")
            for i in range(1, len(limit)):
                if limit[i] is None:
                    if limit[i - 1] is not None:
                        raise ValueError(f"limit must not increase: limit[{i}] is None after {limit[i - 1]}")
                elif limit[i] < 0 or (limit[i - 1] is not None and limit[i] > limit[i - 1]):
                    raise ValueError(f"limit[{i}] = {limit[i]} must be >= 0 and not above limit[{i - 1}]")
        if self.cuts is not None:
            cuts = tuple(sorted(set(int(c) for c in self.cuts)))
            object.__setattr__(self, "cuts", cuts)
            if any(not 1 <= c < len(keep) for c in cuts):
                raise ValueError(f"cuts {cuts} must lie in [1, {len(keep) - 1}]")
            missing = set(self._drops()) - set(cuts)
            if missing:
                raise ValueError(f"cuts {cuts} miss the layers {sorted(missing)} where keep or limit drop")

    @property
    def num_layers(self) -> int:
        return len(self.keep)

    def _cap(self, layer: int) -> int | None:
        return None if self.limit is None else self.limit[layer]

    def _drops(self) -> tuple[int, ...]:
        return tuple(
            i
            for i in range(1, len(self.keep))
            if self.keep[i] < self.keep[i - 1] or (self._cap(i) is not None and self._cap(i) != self._cap(i - 1))
        )

    @property
    def cut_layers(self) -> tuple[int, ...]:
        """Layers where tokens are removed before the layer runs: where the kept share or cap drops (or ``cuts``)."""
        return self.cuts if self.cuts is not None else self._drops()

    @property
    def score_layers(self) -> tuple[int, ...]:
        """Layers whose attention decides a cut (``cut - 1``)."""
        return tuple(i - 1 for i in self.cut_layers)

    def base(self, n_visual: int, layer: int) -> int:
        """``floor(n_visual * keep[layer])`` (the official ``int(...)``; a 1e-9 guard keeps exact products such as
        7 · (1 - 3/7) from rounding down), at most ``limit[layer]``."""
        count = int(n_visual * self.keep[layer] + 1e-9)
        cap = self._cap(layer)
        return count if cap is None else min(count, cap)

    def selected(self, n_visual: int, present: int, layer: int) -> int:
        """Visual tokens a cut at ``layer`` keeps by ranking, for a sample with ``n_visual`` visual tokens of which
        ``present`` are still there: :meth:`base`, at most ``present`` (``present - 1`` with recycling)."""
        most = max(present - 1, 0) if self.recycle is not None else present
        return min(self.base(n_visual, layer), most)

    def count(self, n_visual: int, layer: int) -> int:
        """Visual tokens a sample with ``n_visual`` of them has at ``layer``: :meth:`base` without recycling; with
        recycling, the tokens each cut selects plus the merged tokens it adds."""
        if self.recycle is None:
            return self.base(n_visual, layer)
        return self.counts(n_visual)[layer]

    def counts(self, n_visual: int) -> list[int]:
        """:meth:`count` for every layer."""
        if self.recycle is None:
            return [self.base(n_visual, layer) for layer in range(self.num_layers)]
        cuts, present, out = set(self.cut_layers), n_visual, []
        for layer in range(self.num_layers):
            if layer in cuts:
                chosen = self.selected(n_visual, present, layer)
                present = chosen + self.recycle.merged(present - chosen)
            out.append(present)
        return out


def _check_layers(num_layers: int) -> int:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    return num_layers


def aim_retain_rates(num_layers: int = 28, l1: int | None = None, l2: int | None = None) -> list[float]:
    """AIM's retain rate decided at each 0-based layer ``i`` (applied from layer ``i + 1``).

    Paper form on 1-based layer numbers ``l = i + 1``: ``r = 1`` for ``l < l1``, ``1 - (l - l1) / (l2 - l1)`` for
    ``l1 <= l <= l2``, ``0`` for ``l > l2``. Defaults: (14, 22) for 28 layers (Qwen2-7B), which is the released
    code's ``max(0, 1 - (i - 13) * 0.125)`` (layer 14 → 0.875 … 20 → 0.125, 21+ → 0); (13, 21) for 32 layers
    (LLaMA-7B: layer 13 → 0.875 … 19 → 0.125, 20+ → 0); other depths scale the 28-layer defaults
    (``l1 = round(L/2)``, ``l2 = round(22 L / 28)``). Requires ``1 <= l1 < l2 <= num_layers``.
    """
    num_layers = _check_layers(num_layers)
    if l1 is None or l2 is None:
        d1, d2 = AIM_DEFAULTS.get(num_layers, (round(num_layers / 2), round(22 * num_layers / 28)))
        l1 = d1 if l1 is None else l1
        l2 = d2 if l2 is None else l2
    if not (isinstance(l1, int) and isinstance(l2, int)):
        raise ValueError(f"l1 and l2 must be ints, got {l1!r}, {l2!r}")
    if not (1 <= l1 < l2 <= num_layers):
        raise ValueError(f"AIM needs 1 <= l1 < l2 <= num_layers ({num_layers}), got l1={l1}, l2={l2}")
    rates = []
    for i in range(num_layers):
        layer = i + 1
        if layer < l1:
            rates.append(1.0)
        elif layer <= l2:
            rates.append(1.0 - (layer - l1) / (l2 - l1))
        else:
            rates.append(0.0)
    return rates


def aim_schedule(num_layers: int = 28, l1: int | None = None, l2: int | None = None) -> Schedule:
    """AIM's progressive pruning: layer ``l`` processes ``aim_retain_rates(...)[l - 1]`` of the visual tokens."""
    rates = aim_retain_rates(num_layers, l1, l2)
    return Schedule((1.0, *rates[:-1]), name="aim")


def fastv_schedule(num_layers: int, k: int = 2, ratio: float = 0.5, *, keep: int | None = None) -> Schedule:
    """FastV ``(K, R)``: layers ``>= K`` keep ``1 - R`` of the visual tokens (or at most ``keep`` of them), ranked by
    the last token's attention in layer ``K - 1`` (paper default K=2, R=50%). Requires ``1 <= K < num_layers``,
    ``0 <= R <= 1``, ``keep >= 0``."""
    num_layers = _check_layers(num_layers)
    if isinstance(k, bool) or not isinstance(k, int) or not (1 <= k < num_layers):
        raise ValueError(f"FastV needs 1 <= K < num_layers ({num_layers}), got K={k!r}")
    if not (0.0 <= ratio <= 1.0):
        raise ValueError(f"FastV ratio R must be in [0, 1], got {ratio}")
    if keep is not None and keep < 0:
        raise ValueError(f"FastV keep must be >= 0, got {keep}")
    fractions = tuple(1.0 if i < k else 1.0 - ratio for i in range(num_layers))
    limit = None if keep is None else tuple(None if i < k else int(keep) for i in range(num_layers))
    return Schedule(fractions, name="fastv", limit=limit)


def _scaled_layers(layers: Sequence[int], num_layers: int, reference_layers: int, lowest: int, highest: int) -> list[int]:
    """``layers`` given for a ``reference_layers``-deep model, scaled to ``num_layers`` and rounded; they must stay
    strictly increasing and within ``[lowest, highest]``."""
    if reference_layers < 1:
        raise ValueError(f"reference_layers must be >= 1, got {reference_layers}")
    scaled = [int(round(l * num_layers / reference_layers)) for l in layers]
    for a, b in zip(scaled, scaled[1:]):
        if b <= a:
            raise ValueError(f"stage layers {list(layers)} scaled to {num_layers} layers give {scaled}: not increasing")
    if scaled[0] < lowest or scaled[-1] > highest:
        raise ValueError(f"stage layers {scaled} must lie in [{lowest}, {highest}]")
    return scaled


def pyramiddrop_schedule(
    num_layers: int,
    layers: Sequence[int] = (8, 16, 24),
    ratios: Sequence[float] = (0.5, 0.25, 0.125),
    reference_layers: int = 32,
    *,
    keep: int | None = None,
) -> Schedule:
    """PyramidDrop stages: from ``layers[s]`` on, ``ratios[s]`` of the original visual tokens are kept.

    The official lists are for the 32-layer LLaMA (``--layer_list '[8,16,24]'``, ratios ``[0.5,0.25,0.125]``);
    for another depth the layer indices are scaled by ``num_layers / reference_layers`` and rounded
    (4 layers → [1, 2, 3]). Scaled indices must be distinct and within ``[1, num_layers - 1]``.

    ``keep``: instead of shares of the original count, the first stage keeps ``keep`` tokens and stage ``s`` keeps
    ``floor(keep * ratios[s] / ratios[0])`` (the official proportions between stages), each at most all of them."""
    num_layers = _check_layers(num_layers)
    layers, ratios = list(layers), [float(r) for r in ratios]
    if len(layers) != len(ratios) or not layers:
        raise ValueError(f"layers ({len(layers)}) and ratios ({len(ratios)}) need the same non-zero length")
    scaled = _scaled_layers(layers, num_layers, reference_layers, 1, num_layers - 1)
    for r in ratios:
        if not (0.0 <= r <= 1.0):
            raise ValueError(f"ratios must be fractions in [0, 1], got {ratios}")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"PyramidDrop keep must be a whole number >= 0, got {keep!r}")
        if ratios[0] <= 0:
            raise ValueError("PyramidDrop keep= needs ratios[0] > 0 (the later stages are its proportions)")
    keep_f, limit = [], []
    for i in range(num_layers):
        f, cap = 1.0, None
        for layer, r in zip(scaled, ratios):
            if i >= layer:
                f = r
                cap = None if keep is None else int(keep * r / ratios[0] + 1e-9)
        keep_f.append(1.0 if keep is not None else f)
        limit.append(cap)
    return Schedule(tuple(keep_f), name="pyramiddrop", limit=None if keep is None else tuple(limit))


#: SparseVLM's per-stage kept counts for its ``RETAIN_TOKN`` budgets on LLaVA-1.5 (576 visual tokens, stages
#: decided by layers 2, 6 and 15 of 32); Gumpest/SparseVLMs ``llava/model/language_model/score.py`` (v1.5 lists).
SPARSEVLM_STAGE_COUNTS: dict[int, tuple[int, int, int]] = {
    64: (66, 30, 17),
    96: (238, 48, 26),
    128: (303, 110, 36),
    192: (300, 200, 110),
}


def sparsevlm_stage_counts(keep: int) -> tuple[int, ...]:
    """SparseVLM's per-stage kept counts for the budget ``keep``: the official list for 64 / 96 / 128 / 192;
    between two official budgets the lists are interpolated linearly; below 64 (above 192) the 64 (192) list is
    scaled by ``keep / 64`` (``keep / 192``). Counts are rounded half up."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"SparseVLM keep must be a whole number >= 1, got {keep!r}")
    table = SPARSEVLM_STAGE_COUNTS
    if keep in table:
        return table[keep]
    budgets = sorted(table)
    if keep < budgets[0] or keep > budgets[-1]:
        ref = budgets[0] if keep < budgets[0] else budgets[-1]
        return tuple(int(c * keep / ref + 0.5) for c in table[ref])
    hi = next(b for b in budgets if b > keep)
    lo = budgets[budgets.index(hi) - 1]
    t = (keep - lo) / (hi - lo)
    return tuple(int(a + t * (b - a) + 0.5) for a, b in zip(table[lo], table[hi]))


def sparsevlm_schedule(
    num_layers: int,
    keep: int = 192,
    layers: Sequence[int] = (2, 6, 15),
    reference_layers: int = 32,
    *,
    stage_counts: Sequence[int] | None = None,
    recycle: Recycle | None = Recycle(),
) -> Schedule:
    """SparseVLM v1.5: the attention of ``layers[s]`` (0-based, official ``pruning_loc = [2, 6, 15]`` of 32 layers,
    scaled to ``num_layers`` and rounded) ranks the visual tokens, and from ``layers[s] + 1`` on ``stage_counts[s]``
    of them stay (default :func:`sparsevlm_stage_counts` of ``keep``), plus the merged tokens that ``recycle``
    adds (None: no recycling)."""
    num_layers = _check_layers(num_layers)
    deciding = _scaled_layers(list(layers), num_layers, reference_layers, 0, num_layers - 2)
    counts = list(sparsevlm_stage_counts(keep) if stage_counts is None else stage_counts)
    if len(counts) != len(deciding):
        raise ValueError(f"{len(counts)} stage counts for {len(deciding)} pruning layers")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
        raise ValueError(f"stage counts must be whole numbers >= 0, got {counts}")
    limit: list[int | None] = []
    for i in range(num_layers):
        cap = None
        for layer, c in zip(deciding, counts):
            if i > layer:
                cap = c
        limit.append(cap)
    return Schedule((1.0,) * num_layers, name="sparsevlm", limit=tuple(limit), recycle=recycle,
                    cuts=tuple(layer + 1 for layer in deciding))


def per_layer_schedule(keep: Sequence[float]) -> Schedule:
    """A user list: ``keep[l]`` = fraction of the original visual tokens processed by layer ``l``."""
    return Schedule(tuple(keep), name="custom")


def make_schedule(spec: Schedule | Sequence[float], num_layers: int) -> Schedule:
    """A :class:`Schedule` for a model with ``num_layers`` decoder layers: ``spec`` itself, or a per-layer list of
    kept fractions."""
    schedule = spec if isinstance(spec, Schedule) else per_layer_schedule(spec)
    if schedule.num_layers != num_layers:
        raise ValueError(f"schedule has {schedule.num_layers} layers, the language model has {num_layers}")
    return schedule
