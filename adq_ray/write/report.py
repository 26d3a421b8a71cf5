"""A self-contained HTML report of one run: summary, bins and their scores, quotas, samples, kept patches.

`report.html` references its PNG files relatively, next to it, and carries its own CSS: it opens
offline, from a local folder or a downloaded S3 prefix. The image helpers (`overlay`, `tile`) are pure
numpy; the charts use matplotlib's object API (no pyplot state, no display backend).
"""

from __future__ import annotations

import html
import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from adq_ray import storage
from adq_ray.evaluate.compare import accuracy_png

REPORT = "report.html"
SAMPLE_CELL = 64
OVERLAY_CELL = 160
OVERLAY_PAIRS_PER_ROW = 4

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv table.kv { margin: 0; } img { max-width: 100%; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
"""


def write_report(
    uri: str,
    *,
    summary: dict[str, Any],
    bin_table: list[dict[str, Any]],
    samples_per_bin: dict[int, list[np.ndarray]],
    overlays: list[tuple[np.ndarray, np.ndarray]],
    eval_rows: list[dict[str, Any]] | None = None,
) -> str:
    """Write `report.html` and its PNGs under `uri` (local or s3://); returns the report's URI.

    bin_table rows: bin, size, rep, div, importance, share, quota, selected. samples_per_bin: uint8
    HxWx3 images per bin. overlays: (uint8 HxWx3 image, (grid, grid) bool keep mask) pairs.
    The PNGs are written first and the HTML last, so a report that exists is complete.
    """
    files = {
        "bin_sizes.png": bin_sizes_png(bin_table),
        "bin_scores.png": bin_scores_png(bin_table),
        "quotas.png": quotas_png(bin_table),
    }
    for b, images in sorted(samples_per_bin.items()):
        if images:
            files[f"samples_bin{b}.png"] = _encode(tile(images, SAMPLE_CELL, columns=10))
    if overlays:
        files["overlays.png"] = _encode(overlays_grid(overlays))
    if eval_rows:
        files["accuracy.png"] = accuracy_png(eval_rows)
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)
    page = render_html(summary, bin_table, samples_per_bin, overlays, eval_rows)
    report = storage.join(uri, REPORT)
    storage.write_bytes(report, page.encode())
    return report


def render_html(
    summary: dict[str, Any],
    bin_table: list[dict[str, Any]],
    samples_per_bin: dict[int, list[np.ndarray]],
    overlays: list[tuple[np.ndarray, np.ndarray]],
    eval_rows: list[dict[str, Any]] | None,
) -> str:
    """The report page, referencing the PNGs that `write_report` names."""
    samples = "".join(
        f"<h3>Bin {b}</h3>"
        + (
            _figure(f"samples_bin{b}.png", f"{len(found)} selected images of bin {b}.")
            if found
            else "<p>No samples.</p>"
        )
        for b, found in sorted(samples_per_bin.items())
    )
    kept = (
        _figure(
            "overlays.png",
            f"{len(overlays)} stored images, each followed by its patch mask (dropped patches darkened and hatched).",
        )
        if overlays
        else "<p>No stored images to show.</p>"
    )
    evaluation = (
        _table(eval_rows) + _figure("accuracy.png", "Test accuracy against the sample ratio (final and best epoch).")
        if eval_rows
        else "<p>No evaluation was run.</p>"
    )
    sections = [
        ("summary", "Summary", _key_values(summary)),
        (
            "bins",
            "Bins",
            _figure("bin_sizes.png", "Images per bin.")
            + _figure("bin_scores.png", "Scores per bin, each normalised to sum to one over the bins.")
            + _table(bin_table),
        ),
        ("quotas", "Quotas", _figure("quotas.png", "Bin size, quota and images selected per bin.")),
        ("samples", "Samples per bin", samples),
        ("overlays", "Kept patches", kept),
        ("evaluation", "Evaluation", evaluation),
    ]
    body = "".join(f'<section id="{key}"><h2>{title}</h2>{content}</section>' for key, title, content in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ADQ report</title>'
        f"<style>{_CSS}</style></head><body><h1>Dataset quantization report</h1>{body}</body></html>\n"
    )


def bin_sizes_png(bin_table: list[dict[str, Any]]) -> bytes:
    """Bar chart of the images per bin."""
    figure, ax, bins = _axes(bin_table)
    ax.bar(bins, [r["size"] for r in bin_table], color="C0")
    ax.set_ylabel("images")
    return _png(figure)


def bin_scores_png(bin_table: list[dict[str, Any]]) -> bytes:
    """Grouped bars of representativeness, diversity, importance and share, each as a share of its sum."""
    figure, ax, bins = _axes(bin_table)
    keys = ("rep", "div", "importance", "share")
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = np.array([r[key] for r in bin_table], dtype=float)
        total = values.sum()
        offset = (i - (len(keys) - 1) / 2) * width
        ax.bar(bins + offset, values / total if total else values, width, label=key, color=f"C{i}")
    ax.set_ylabel("share over bins")
    _legend(ax)
    return _png(figure)


def quotas_png(bin_table: list[dict[str, Any]]) -> bytes:
    """Bin sizes (outlined) with the quota and the images selected drawn inside them."""
    figure, ax, bins = _axes(bin_table)
    ax.bar(bins, [r["size"] for r in bin_table], 0.8, fill=False, edgecolor="0.5", label="size")
    ax.bar(bins - 0.2, [r["quota"] for r in bin_table], 0.4, color="C1", label="quota")
    ax.bar(bins + 0.2, [r["selected"] for r in bin_table], 0.4, color="C2", label="selected")
    ax.set_ylabel("images")
    _legend(ax)
    return _png(figure)


def overlay(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`image` (uint8 HxWx3) with the patches that `keep` ((grid, grid) bool) drops darkened and hatched."""
    h, w = image.shape[:2]
    grid_h, grid_w = keep.shape
    dropped = ~keep.astype(bool)[np.arange(h)[:, None] * grid_h // h, np.arange(w)[None, :] * grid_w // w]
    y, x = np.mgrid[:h, :w]
    hatch = dropped & ((y + x) % max(3, h // grid_h // 3) == 0)
    out = image.astype(np.float32)
    out[dropped] *= 0.35
    out[hatch] = 210.0
    return out.astype(np.uint8)


def overlays_grid(overlays: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each input next to its overlay, drawn at OVERLAY_CELL px so the hatching reads at any input size."""
    cells = []
    for image, keep in overlays:
        shown = _resize(image, OVERLAY_CELL)
        cells += [shown, overlay(shown, keep)]
    return tile(cells, OVERLAY_CELL, columns=2 * OVERLAY_PAIRS_PER_ROW)


def tile(images: list[np.ndarray], cell: int, columns: int, gap: int = 2) -> np.ndarray:
    """uint8 HxWx3 images resized to cell x cell, laid out row by row on a white sheet."""
    rows = -(-len(images) // columns)
    cols = min(columns, len(images))
    sheet = np.full((rows * (cell + gap) - gap, cols * (cell + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = r * (cell + gap), c * (cell + gap)
        sheet[top : top + cell, left : left + cell] = _resize(image, cell)
    return sheet


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize: nearest when enlarging (pixels stay visible), Lanczos when shrinking."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if picture.size == (size, size):
        return np.asarray(picture)
    enlarging = picture.width < size and picture.height < size
    return np.asarray(picture.resize((size, size), Image.Resampling.NEAREST if enlarging else Image.Resampling.LANCZOS))


def _encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _axes(bin_table: list[dict[str, Any]]) -> tuple[Figure, Any, np.ndarray]:
    """A bar-chart figure with one x tick per bin; returns (figure, axes, bin positions)."""
    bins = np.array([r["bin"] for r in bin_table], dtype=float)
    figure = Figure(figsize=(7.0, 3.2), layout="constrained")
    ax = figure.add_subplot()
    ax.set_xlabel("bin")
    ax.set_xticks(bins, [str(r["bin"]) for r in bin_table])
    ax.grid(True, axis="y", alpha=0.3)
    return figure, ax, bins


def _legend(ax: Any) -> None:
    """One row of legend entries above the plot, clear of the bars."""
    ax.legend(fontsize="small", ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _figure(src: str, caption: str) -> str:
    src, caption = html.escape(src), html.escape(caption)
    return f'<figure><img src="{src}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts as an HTML table, columns in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c), c) for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _key_values(values: dict[str, Any]) -> str:
    """A dict as a two-column table; nested dicts (counts by reason, stage timings) nest."""
    body = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(v, k)}</tr>" for k, v in values.items())
    return f'<table class="kv">{body}</table>'


def _cell(value: Any, key: Any = "") -> str:
    if isinstance(value, dict):
        return f"<td>{_key_values(value) if value else '&ndash;'}</td>"
    number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return f'<td class="num">{_number(value, str(key))}</td>' if number else f"<td>{html.escape(_text(value))}</td>"


def _number(value: float, key: str) -> str:
    """Integers with thousands separators; ratios also as percentages."""
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    text = f"{value:.4g}"
    return f"{text} ({100 * value:.2f}%)" if key.endswith("ratio") else text


def _text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
