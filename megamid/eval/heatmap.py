"""Heatmap PNGs of accuracy over (depth x length) and line plots of perplexity by position.

With matplotlib (the dev extras) the figures have axes, labels and per-cell values. Without it a
heatmap is still written by a small PNG encoder (numpy + zlib): colored cells, no text, so a CI
machine or a training job without matplotlib still leaves a picture next to the JSON. matplotlib
is imported only inside these functions, never at import time.
"""

import struct
import zlib
from typing import Optional, Sequence

import numpy as np

# red (0) -> yellow (0.5) -> green (1), the needle-in-a-haystack convention
_STOPS = np.array([[0.85, 0.19, 0.15], [0.99, 0.85, 0.35], [0.10, 0.60, 0.31]])


def accuracy_colors(values: np.ndarray) -> np.ndarray:
    """[...] accuracies in [0, 1] (NaN: missing, grey) -> [..., 3] uint8 RGB."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0), 0.0, 1.0) * (len(_STOPS) - 1)
    lo = np.minimum(v.astype(int), len(_STOPS) - 2)
    frac = (v - lo)[..., None]
    rgb = _STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac
    rgb[np.isnan(np.asarray(values, dtype=float))] = 0.75
    return (rgb * 255).round().astype(np.uint8)


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an [h, w, 3] uint8 image as an 8-bit RGB PNG (filter 0 on every row)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def read_png(path: str) -> np.ndarray:
    """Read back a PNG written by write_png (8-bit RGB, filter 0 only): for tests and checks."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, (w, h) = 8, b"", (0, 0)
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    return rows[:, 1:].reshape(h, w, 3)


def plain_heatmap(path: str, grid: np.ndarray, cell_px: int = 32) -> None:
    """[rows, cols] accuracies as cells of cell_px with 1-pixel white gaps; no text."""
    rows, cols = grid.shape
    img = np.full((rows * cell_px + 1, cols * cell_px + 1, 3), 255, dtype=np.uint8)
    colors = accuracy_colors(grid)
    for r in range(rows):
        for c in range(cols):
            img[r * cell_px + 1 : (r + 1) * cell_px, c * cell_px + 1 : (c + 1) * cell_px] = colors[r, c]
    write_png(path, img)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def heatmap(path: str, grid: Sequence[Sequence[float]], lengths: Sequence[int], depths: Sequence[float], title: str,
            use_matplotlib: Optional[bool] = None) -> str:
    """Accuracy heatmap: rows are depths (0 = start of context), columns are lengths. Returns the backend."""
    grid = np.asarray(grid, dtype=float)
    plt = _pyplot() if use_matplotlib in (None, True) else None
    if plt is None:
        if use_matplotlib:
            raise ImportError("matplotlib is not installed (pip install matplotlib, or use_matplotlib=None)")
        plain_heatmap(path, grid)
        return "png"
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    ax.imshow(accuracy_colors(grid), aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth")
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            ax.text(c, r, "-" if np.isnan(grid[r, c]) else f"{grid[r, c]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return "matplotlib"


def ppl_plot(path: str, by_length: dict, title: str) -> bool:
    """Loss by position bucket, one line per length; needs matplotlib (returns False without it)."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for length, res in by_length.items():
        edges, nll = res["bucket_edges"], res["nll"]
        mids = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        ax.plot([m for m, v in zip(mids, nll) if v is not None], [v for v in nll if v is not None], marker="o", label=str(length))
    ax.set_xlabel("position (tokens)")
    ax.set_ylabel("mean loss (nats)")
    ax.legend(title="length")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
