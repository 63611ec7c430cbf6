"""How much task vectors overlap and pull against each other, pair by pair.

For every pair (a, b) of task vectors, over all their tensors:

* **cosine** cos(τ_a, τ_b) of the whole (untrimmed) vectors;
* **overlap** |K_a ∩ K_b| / |K_a ∪ K_b|, where K_i is the set of entries
  TIES's trim keeps (the top ``density`` of each tensor by magnitude, per
  tensor, exactly as the linker trims);
* **sign conflict** the fraction of the entries in K_a ∩ K_b where τ_a and
  τ_b have opposite signs: the entries where TIES's sign election must drop
  one of the two.

For two independent random vectors the cosine is ≈ 0, the overlap ≈ d/(2−d)
(0.11 at d = 0.2) and the sign conflict ≈ 50%; behaviours that share
parameters show a larger overlap, and ones that pull against each other a
conflict above 50% and a negative cosine. With ``weights`` the signs are
those of w_i τ_i, so a negatively weighted node counts as the direction it is
linked in (the complementary-learning-systems view: interference falls when
memories occupy separate parameters; this measures how separate they are).

Reading streams tensor by tensor and chunk by chunk, as the linker does.
Fitting each vector's trim (a k-th largest magnitude per tensor) is half the
work; it depends on the vector and the density only, so a caller may pass the
fits it remembers in ``trims`` and keep the ones added (after a one-node edit
only that node's vector is fitted again).

>>> result = interference({"a": Path("a.safetensors"), "b": Path("b.safetensors")}, density=0.2)   # doctest: +SKIP
>>> print(result.table()); plot_interference(result, "interference.png")                          # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from traitgraph.compiler.task_vector import read_task_vector_meta
from traitgraph.errors import BuildError, UserError
from traitgraph.linker.link import HandlePool, TensorFiles, TensorInfo, read_headers, row_chunks
from traitgraph.linker.merging import MagnitudeTrim


@dataclass(frozen=True)
class InterferenceResult:
    """Pairwise measures, as n × n matrices in the order of ``names`` (symmetric)."""

    names: list[str]
    density: float
    cosine: list[list[float]]
    overlap: list[list[float]]
    conflict: list[list[float]]  # NaN where two vectors keep no entry in common
    entries: int  # entries per vector (the union of their tensors)

    def pairs(self) -> list[tuple[str, str, float, float, float]]:
        """(a, b, cosine, overlap, sign conflict) for every pair, in input order."""
        n = len(self.names)
        return [
            (self.names[i], self.names[j], self.cosine[i][j], self.overlap[i][j], self.conflict[i][j])
            for i, j in itertools.combinations(range(n), 2)
        ]

    def table(self) -> str:
        """A plain-text table, one row per pair."""
        width = max([len(f"{a} × {b}") for a, b, *_ in self.pairs()] + [4])
        lines = [
            f"{len(self.names)} task vectors, {self.entries:,} entries each; trim density {self.density:g} (per tensor)",
            f"{'pair':<{width}}  {'cosine':>7}  {'overlap':>7}  {'sign conflict':>13}",
        ]
        for a, b, cos, ov, conf in self.pairs():
            conf_text = "—" if math.isnan(conf) else f"{conf:.1%}"
            lines.append(f"{f'{a} × {b}':<{width}}  {cos:>7.3f}  {ov:>7.1%}  {conf_text:>13}")
        expected = self.density / (2 - self.density)
        lines.append(f"(independent vectors: cosine ≈ 0, overlap ≈ {expected:.1%}, sign conflict ≈ 50%)")
        return "\n".join(lines)


#: Each vector's fitted trims: node name -> tensor name -> its trim before any chunk is applied.
Trims = dict[str, dict[str, MagnitudeTrim]]


def interference(
    paths: dict[str, Path],
    density: float = 0.2,
    weights: dict[str, float] | None = None,
    trims: Trims | None = None,
) -> InterferenceResult:
    """Cosine, trim overlap and sign conflict of every pair of task-vector files (see module doc).

    ``trims``: fits of earlier calls at this ``density`` for the same vectors, used
    instead of fitting again; the fits made here are added to it."""
    if len(paths) < 2:
        raise UserError("interference needs at least two task vectors")
    if not 0.0 < density <= 1.0:
        raise UserError(f"density must be in (0, 1], got {density}")
    names = list(paths)
    signs = [1.0 if weights is None or weights.get(n, 1.0) >= 0 else -1.0 for n in names]
    pool = HandlePool()
    try:
        files, infos = _open_vectors(paths, pool)
        totals = _PairTotals(len(names))
        fitted = trims if trims is not None else {}
        known = [fitted.setdefault(n, {}) for n in names]
        for tensor in sorted(infos):
            totals.add_tensor(tensor, infos[tensor], files, signs, density, known)
    finally:
        pool.close()
    cosine, overlap, conflict = totals.matrices()
    entries = sum(info.numel for info in infos.values())
    return InterferenceResult(names, density, cosine, overlap, conflict, entries)


def _open_vectors(paths: dict[str, Path], pool: HandlePool) -> tuple[list[TensorFiles], dict[str, TensorInfo]]:
    """Each vector's tensor files, and every tensor name -> its shape (the same in every vector)."""
    files: list[TensorFiles] = []
    for name, path in paths.items():
        path = Path(path)
        if not path.is_file():
            raise BuildError(f"node '{name}': task vector not found: {path}")
        read_task_vector_meta(path)
        files.append(TensorFiles(read_headers([path], True, f"node '{name}'"), pool, task_vector=True))
    infos: dict[str, TensorInfo] = {}
    for name, f in zip(paths, files):
        for tensor, info in f.infos.items():
            if tensor in infos and infos[tensor].shape != info.shape:
                raise BuildError(
                    f"node '{name}': tensor '{tensor}' has shape {list(info.shape)}, "
                    f"another vector has {list(infos[tensor].shape)}"
                )
            infos.setdefault(tensor, info)
    return files, infos


def _fit_trim(vector: TensorFiles, tensor: str, info: TensorInfo, density: float) -> MagnitudeTrim:
    """The trim of one tensor of one vector, fitted on its whole |τ| (as the linker does)."""
    magnitudes = torch.empty(info.numel, dtype=torch.float32)
    for r0, r1, start in row_chunks(info):
        chunk = vector.read_rows(tensor, r0, r1).to(torch.float32)
        magnitudes[start : start + chunk.numel()] = chunk.abs()
    return MagnitudeTrim.fit(magnitudes, density)


class _PairTotals:
    """Running pairwise sums over every tensor: dot products, and kept entries in both, either, of opposite sign."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.dot = torch.zeros(n, n, dtype=torch.float64)
        self.both = torch.zeros(n, n, dtype=torch.float64)
        self.either = torch.zeros(n, n, dtype=torch.float64)
        self.differ = torch.zeros(n, n, dtype=torch.float64)

    def add_tensor(
        self,
        tensor: str,
        info: TensorInfo,
        files: list[TensorFiles],
        signs: list[float],
        density: float,
        known: list[dict[str, MagnitudeTrim]],
    ) -> None:
        have = [i for i, f in enumerate(files) if tensor in f.infos]
        for i in have:
            if tensor not in known[i]:
                known[i][tensor] = _fit_trim(files[i], tensor, info, density)
        trims = {i: replace(known[i][tensor]) for i in have}  # apply() counts ties down: a fresh copy
        for r0, r1, _ in row_chunks(info):
            taus = {i: files[i].read_rows(tensor, r0, r1).to(torch.float32) * signs[i] for i in have}
            self._add_chunk(have, taus, {i: torch.sign(trims[i].apply(t)).to(torch.int8) for i, t in taus.items()})

    def _add_chunk(self, have: list[int], taus: dict[int, torch.Tensor], sign: dict[int, torch.Tensor]) -> None:
        for a, b in itertools.combinations_with_replacement(have, 2):
            self.dot[a, b] += float(torch.dot(taus[a], taus[b]))
            if a == b:
                continue
            ka, kb = sign[a] != 0, sign[b] != 0
            self.both[a, b] += int((ka & kb).sum())
            self.either[a, b] += int((ka | kb).sum())
            self.differ[a, b] += int((sign[a] * sign[b] < 0).sum())
        for i in have:  # a vector lacking this tensor still has its entries in the union
            for j in set(range(self.n)) - set(have):
                self.either[min(i, j), max(i, j)] += int((sign[i] != 0).sum())

    def matrices(self) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
        """Cosine, overlap and sign conflict, symmetric n × n (conflict NaN where no entry is shared)."""
        n, norms = self.n, self.dot.diagonal().sqrt()
        cosine = [[0.0] * n for _ in range(n)]
        overlap = [[0.0] * n for _ in range(n)]
        conflict = [[0.0] * n for _ in range(n)]
        for a in range(n):
            cosine[a][a], overlap[a][a] = (1.0 if norms[a] > 0 else 0.0), 1.0
            for b in range(a + 1, n):
                denom = float(norms[a] * norms[b])
                both, either = self.both[a, b], self.either[a, b]
                cosine[a][b] = cosine[b][a] = float(self.dot[a, b]) / denom if denom > 0 else 0.0
                overlap[a][b] = overlap[b][a] = float(both / either) if either > 0 else 0.0
                conflict[a][b] = conflict[b][a] = float(self.differ[a, b] / both) if both > 0 else float("nan")
        return cosine, overlap, conflict


def plot_interference(result: InterferenceResult, png_path: str | os.PathLike) -> Path:
    """Save two heatmaps side by side (cosine; sign conflict with overlap) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from traitgraph.atomic import atomic_path

    n = len(result.names)
    size = max(4.0, 0.6 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size), constrained_layout=True)
    panels = [
        ("cosine similarity", np.array(result.cosine), "RdBu_r", -1.0, 1.0, "{:.2f}"),
        (
            f"sign conflict among entries both keep (density {result.density:g})",
            np.array(result.conflict),
            "Reds",
            0.0,
            1.0,
            "{:.0%}",
        ),
    ]
    for ax, (title, values, cmap, vmin, vmax, fmt) in zip(axes, panels):
        shown = np.ma.masked_invalid(values)
        if title.startswith("sign"):
            shown = np.ma.masked_where(np.eye(n, dtype=bool) | np.isnan(values), values)
        image = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(n), result.names, rotation=45, ha="right")
        ax.set_yticks(range(n), result.names)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
        if n <= 12:
            for a in range(n):
                for b in range(n):
                    if shown.mask is not np.ma.nomask and np.ma.getmaskarray(shown)[a, b]:
                        continue
                    text = fmt.format(values[a, b])
                    if title.startswith("sign"):
                        text += f"\n({result.overlap[a][b]:.0%} ov.)"
                    share = (values[a, b] - vmin) / (vmax - vmin)  # dark cells: both ends of RdBu, the top of Reds
                    strong = (share > 0.8 or share < 0.2) if cmap == "RdBu_r" else share > 0.65
                    ax.text(b, a, text, ha="center", va="center", fontsize=7, color="white" if strong else "black")
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return png_path
