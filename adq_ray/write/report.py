"""A self-contained HTML report of one run: a summary card, classes, bins and their scores, quotas,
samples, kept patches.

`report.html` references its PNG files relatively, next to it, and carries its own CSS and a few lines of
inline script (the class search): it opens offline, from a local folder or a downloaded S3 prefix, and
reads without the script too. The image helpers (`overlay`, `tile`) are pure numpy; the charts use
matplotlib's object API (no pyplot state, no display backend).
"""

from __future__ import annotations

import html
import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from adq_ray import storage

REPORT = "report.html"
SAMPLE_CELL = 64
LABEL_BAND = 13  # px under each sample for its class name
OVERLAY_CELL = 160
OVERLAY_PAIRS_PER_ROW = 4
STAGE_ORDER = ("list", "embed", "bins", "select", "patches", "write")  # summary.json sorts its keys
TOP_CLASSES = 10  # classes listed in each of the card's "fewest kept" / "most kept" lists

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv table.kv { margin: 0; } img { max-width: 100%; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
.card { border: 1px solid #bbb; border-radius: 6px; padding: .4em 1.2em 1em; background: #fafafa; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: .3em 1.2em; margin: .6em 0; }
.card dt { font-weight: 600; } .card dd { margin: 0; } .why { color: #555; }
.big { font-size: 1.15em; font-weight: 600; font-variant-numeric: tabular-nums; }
.scroll { max-height: 28em; overflow: auto; border: 1px solid #ddd; }
input[type=search] { font: inherit; padding: .2em .4em; width: 20em; }
"""

# The class search: filters the rows of the class table; `#class=NAME` in the address pre-fills it.
_SCRIPT = """
(function () {
  var box = document.getElementById("class-search"), rows = document.querySelectorAll("#class-table tbody tr");
  var count = document.getElementById("class-count");
  function filter() {
    var q = box.value.trim().toLowerCase(), shown = 0;
    rows.forEach(function (r) { var on = !q || r.dataset.name.indexOf(q) >= 0; r.hidden = !on; shown += on; });
    count.textContent = shown + " of " + rows.length + " classes";
  }
  var m = location.hash.match(/^#class=(.*)$/);
  if (m) box.value = decodeURIComponent(m[1]);
  box.addEventListener("input", filter);
  filter();
})();
"""


def write_report(
    uri: str,
    *,
    summary: dict[str, Any],
    bin_table: list[dict[str, Any]],
    samples_per_bin: dict[int, list[np.ndarray]],
    overlays: list[tuple[np.ndarray, np.ndarray]],
    eval_rows: list[dict[str, Any]] | None = None,
    classes: list[dict[str, Any]] | None = None,
    sample_classes: dict[int, list[str]] | None = None,
) -> str:
    """Write `report.html` and its PNGs under `uri` (local or s3://); returns the report's URI.

    summary: `write.summary.summary`'s dict. bin_table rows: bin, size, rep, div, importance, share, quota,
    selected. samples_per_bin: uint8 HxWx3 images per bin; sample_classes: their class names, drawn under
    them. overlays: (uint8 HxWx3 image, (grid, grid) bool keep mask) pairs. classes: one row per class
    (class, inputs, kept, rejected). The PNGs are written first and the HTML last, so a report that exists
    is complete.
    """
    sample_classes = sample_classes or {}
    files = {
        "bin_sizes.png": bin_sizes_png(bin_table),
        "bin_scores.png": bin_scores_png(bin_table),
        "quotas.png": quotas_png(bin_table),
    }
    for b, images in sorted(samples_per_bin.items()):
        if images:
            labels = sample_classes.get(b)
            files[f"samples_bin{b}.png"] = _encode(tile(images, SAMPLE_CELL, columns=10, labels=labels))
    if overlays:
        files["overlays.png"] = _encode(overlays_grid(overlays))
    if eval_rows:
        from adq_ray.evaluate.compare import accuracy_png  # Ray Train's module: only when there is an evaluation

        files["accuracy.png"] = accuracy_png(eval_rows)
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)
    page = render_html(summary, bin_table, samples_per_bin, overlays, eval_rows, classes, sample_classes)
    report = storage.join(uri, REPORT)
    storage.write_bytes(report, page.encode())
    return report


def render_html(
    summary: dict[str, Any],
    bin_table: list[dict[str, Any]],
    samples_per_bin: dict[int, list[np.ndarray]],
    overlays: list[tuple[np.ndarray, np.ndarray]],
    eval_rows: list[dict[str, Any]] | None,
    classes: list[dict[str, Any]] | None = None,
    sample_classes: dict[int, list[str]] | None = None,
) -> str:
    """The report page, referencing the PNGs that `write_report` names."""
    samples = "".join(
        f"<h3>Bin {b}</h3>"
        + (
            _figure(f"samples_bin{b}.png", _samples_caption(b, found, (sample_classes or {}).get(b)))
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
    evaluation = _evaluation(eval_rows) if eval_rows else "<p>No evaluation was run.</p>"
    sections = [
        ("summary", "Summary", summary_card(summary, classes)),
        ("classes", "Classes", class_table(classes)),
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
    sections.append(("details", "All summary values", _key_values(readable(summary))))
    body = "".join(f'<section id="{key}"><h2>{title}</h2>{content}</section>' for key, title, content in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ADQ report</title>'
        f"<style>{_CSS}</style></head><body><h1>Dataset quantization report</h1>{body}"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def _evaluation(eval_rows: list[dict[str, Any]]) -> str:
    """`adq evaluate`'s table (mean +- std over seeds per arm) and plot, with how to read them."""
    from adq_ray.evaluate.compare import evaluation_table

    note = (
        "<p>random, dq (DQ's bins, proportional quotas, alpha 0) and adq train on the same number of images; "
        "dq-cell is DQ's literal per-(bin, class) rounding, with the count it achieved. Final = last epoch; "
        "best = best epoch (what DQ reports). With one test set of n images, one accuracy has a standard error "
        "of about sqrt(p (1 - p) / n).</p>"
    )
    caption = "Test accuracy per arm, mean and std over seeds (final epoch; best epoch marked)."
    return note + _table(evaluation_table(eval_rows)) + _figure("accuracy.png", caption)


def summary_card(summary: dict[str, Any], classes: list[dict[str, Any]] | None = None) -> str:
    """The headline: what came in, what was kept or rejected and why, each ratio with its bytes, time per stage."""
    c = summary.get("counts", {})
    valid = c.get("kept", 0) + c.get("not_selected", 0)
    reasons = ", ".join(f"{html.escape(str(r))} {n:,}" for r, n in c.get("rejected_by_reason", {}).items())
    src, stored = summary.get("source_bytes", 0), summary.get("stored_bytes", 0)
    kept_px, per_image = summary.get("kept_patches"), summary.get("patches_per_image")
    patches = f"{kept_px} of {per_image} patches per image" if kept_px and per_image else "patches kept per image"
    items = [
        ("Inputs", f"<span class=big>{c.get('inputs', 0):,}</span> files, {_bytes(src)}", ""),
        ("Kept", f"<span class=big>{c.get('kept', 0):,}</span>", f"selected and stored ({_bytes(stored)})"),
        ("Not selected", f"{c.get('not_selected', 0):,}", "readable, left out by the sampler"),
        ("Rejected", f"{c.get('rejected', 0):,}", f"by reason: {reasons}" if reasons else "none"),
        _ratio(summary, "sample_ratio", f"kept / readable inputs = {c.get('kept', 0):,} / {valid:,}"
               + (f" (target rho {summary['target_rho']:g})" if "target_rho" in summary else "")),
        _ratio(summary, "patch_keep_ratio", f"{patches}, the rest dropped by GradCAM++"),
        _ratio(summary, "data_keep_ratio", "sample ratio x patch keep ratio: the share of the readable input DQ counts as kept"),
        _ratio(summary, "storage_ratio", f"stored bytes / source bytes = {_bytes(stored)} / {_bytes(src)} (codec and patch size included)"),
    ]  # fmt: skip
    rows = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{value}" + (f' <span class="why">{why}</span>' if why else "") + "</dd>"
        for name, value, why in items
    )
    return f'<div class="card"><dl>{rows}</dl>{_stage_times(summary.get("stages", {}))}{_class_extremes(classes)}</div>'


def _ratio(summary: dict[str, Any], key: str, why: str) -> tuple[str, str, str]:
    """(name, value as a percentage, explanation) for the card."""
    value = summary.get(key)
    shown = f"<span class=big>{100 * value:.2f}%</span>" if isinstance(value, (int, float)) else "&ndash;"
    return key.replace("_", " ").capitalize(), shown, html.escape(why)


def _stage_times(stages: dict[str, dict[str, Any]]) -> str:
    """One line: seconds per stage (re-used stages say so) and the total."""
    if not stages:
        return ""
    order = sorted(
        stages, key=lambda name: (STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER), name)
    )
    parts = [
        f"{html.escape(name)} {'re-used' if stages[name].get('reused') else _seconds(stages[name].get('seconds', 0.0))}"
        for name in order
    ]
    total = sum(float(s.get("seconds", 0.0)) for s in stages.values())
    return f"<p><b>Time per stage</b>: {' &middot; '.join(parts)} &middot; total {_seconds(total)}</p>"


def _class_extremes(classes: list[dict[str, Any]] | None) -> str:
    """The classes with the fewest and the most kept images (the search below lists all)."""
    if not classes:
        return ""
    order = sorted(classes, key=lambda r: (r["kept"], str(r["class"])))
    line = lambda rows: ", ".join(f"{html.escape(str(r['class']))} {r['kept']:,}" for r in rows)  # noqa: E731
    fewest, most = order[:TOP_CLASSES], order[::-1][:TOP_CLASSES]
    return (
        f"<p><b>{len(classes):,} classes</b>. Fewest kept: {line(fewest)}."
        + (f" Most kept: {line(most)}." if len(classes) > TOP_CLASSES else "")
        + ' See <a href="#classes">Classes</a>.</p>'
    )


def class_table(classes: list[dict[str, Any]] | None) -> str:
    """Every class (inputs, kept, rejected), searchable by name, in a scrolling box that holds 1,000 rows."""
    if not classes:
        return "<p>No per-class counts.</p>"
    body = "".join(
        f'<tr data-name="{html.escape(str(r["class"]).lower())}"><td>{html.escape(str(r["class"]))}</td>'
        f'<td class="num">{r["inputs"]:,}</td><td class="num">{r["kept"]:,}</td>'
        f'<td class="num">{r.get("rejected", 0):,}</td></tr>'
        for r in sorted(classes, key=lambda r: str(r["class"]))
    )
    return (
        '<p><label>Search classes <input type="search" id="class-search" placeholder="class name"></label> '
        f'<span id="class-count">{len(classes):,} classes</span></p>'
        '<div class="scroll"><table id="class-table"><thead><tr><th>class</th><th>readable inputs</th>'
        f"<th>kept</th><th>rejected</th></tr></thead><tbody>{body}</tbody></table></div>"
    )


def readable(values: Any, output: str | None = None) -> Any:
    """summary.json for people: paths under the output relative to it, booleans as yes/no."""
    output = output if output is not None else str(values.get("output", "")) if isinstance(values, dict) else ""
    if isinstance(values, dict):
        return {k: _short_output(v) if k == "output" else readable(v, output) for k, v in values.items()}
    if isinstance(values, bool):
        return "yes" if values else "no"
    if isinstance(values, str) and output and values.startswith(output.rstrip("/") + "/"):
        return values[len(output.rstrip("/")) + 1 :]
    return values


def _short_output(path: Any) -> str:
    """The output's own name (the report sits inside it)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _samples_caption(b: int, images: list[np.ndarray], names: list[str] | None) -> str:
    """'10 selected images of bin 3 (classes: cat 4, dog 6).'"""
    if not names:
        return f"{len(images)} selected images of bin {b}."
    counted = ", ".join(f"{n} {k}" for n, k in sorted(_count(names).items()))
    return f"{len(images)} selected images of bin {b}, class name under each (classes: {counted})."


def _count(names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in names:
        out[name] = out.get(name, 0) + 1
    return out


def _bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units), shown next to every ratio that counts bytes."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


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


def tile(
    images: list[np.ndarray], cell: int, columns: int, gap: int = 2, labels: list[str] | None = None
) -> np.ndarray:
    """uint8 HxWx3 images resized to cell x cell, laid out row by row on a white sheet; with `labels`, each
    cell is followed by a LABEL_BAND px band holding its label."""
    band = LABEL_BAND if labels else 0
    rows = -(-len(images) // columns)
    cols = min(columns, len(images))
    sheet = np.full((rows * (cell + band + gap) - gap, cols * (cell + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = r * (cell + band + gap), c * (cell + gap)
        sheet[top : top + cell, left : left + cell] = _resize(image, cell)
    return _draw_labels(sheet, labels, cell, columns, gap) if labels else sheet


def _draw_labels(sheet: np.ndarray, labels: list[str], cell: int, columns: int, gap: int) -> np.ndarray:
    """Each label centred in the band under its cell, cut to the cell's width."""
    picture = Image.fromarray(sheet)
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=LABEL_BAND - 3)
    for i, label in enumerate(labels):
        r, c = divmod(i, columns)
        text = str(label)
        while len(text) > 1 and draw.textlength(text, font=font) > cell:
            text = text[:-1]
        left = c * (cell + gap) + (cell - draw.textlength(text, font=font)) / 2
        draw.text((left, r * (cell + LABEL_BAND + gap) + cell), text, fill=(40, 40, 40), font=font)
    return np.asarray(picture)


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
