"""The Pareto picture of a comparison: mean KLD against file size, ramp's files as lines (one per method) and
llama.cpp's presets as the dotted line of stars they are measured against: the plot of every `ramp run` job,
the benchmarks' among them."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

Point = tuple[int, float]  # (file bytes, mean KLD)


def plot_pareto(lines: Mapping[str, Sequence[Point]], presets: Sequence[tuple[str, int, float]], presets_label: str,
                path: str | os.PathLike, title: str, source_bytes: int | None = None) -> None:
    """Write the PNG: each of `lines` (label -> points), the `presets` (name, file bytes, mean KLD) annotated
    with their names, and a marker at `source_bytes`, the source checkpoint's size, at and right of which no
    claim is made (a format there can write the source's grid back)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ramp.files import atomic_output

    figure, axes = plt.subplots(figsize=(8, 5.2))
    for label, points in lines.items():
        axes.plot(*zip(*sorted((n_bytes / 2**20, kld) for n_bytes, kld in points)), marker="o", label=label)
    ordered = sorted(presets, key=lambda preset: preset[1])
    axes.plot([n_bytes / 2**20 for _, n_bytes, _ in ordered], [kld for _, _, kld in ordered], color="black",
              linestyle=":", marker="*", markersize=11, label=presets_label)
    labels = [axes.annotate(name, (n_bytes / 2**20, kld), textcoords="offset points", xytext=(5, 4), fontsize=8)
              for name, n_bytes, kld in ordered]
    if source_bytes:
        axes.axvline(source_bytes / 2**20, color="grey", linestyle="--", linewidth=1)
        axes.annotate("source checkpoint size: no claims at or right of it", (source_bytes / 2**20, 0.98),
                      xycoords=("data", "axes fraction"), ha="right", va="top", fontsize=8, color="grey",
                      textcoords="offset points", xytext=(-4, 0))
    axes.set_yscale("log")
    axes.set_xlabel("GGUF file size (MiB)")
    axes.set_ylabel("mean KLD vs F32 reference (nats/token)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    separate_labels(figure, labels)
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


def separate_labels(figure, labels: list) -> None:
    """Move each annotation down, in the order given, until its box overlaps none placed before it (presets
    a few MB apart would otherwise print their names over each other)."""
    renderer = figure.canvas.get_renderer()
    placed = []
    for label in labels:
        for _ in range(12):
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = label.xyann
            label.xyann = (x, y - box.height * 72 / figure.dpi)
        placed.append(label.get_window_extent(renderer))
