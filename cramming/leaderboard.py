"""One table ranking every finished run in ``outputs/``: Markdown, CSV and an HTML page.

    python -m cramming.leaderboard [--outputs outputs] [--out outputs/leaderboard]

A run is a folder with ``model/config.json`` (a pretraining export) and/or
``glue/results.json`` (from ``python -m cramming.glue``). It is ranked when its
``summary.json`` says ``finished: true`` (it adds arch, budget, hardware, tokens seen and
the MLM loss, and the recipe: crammed, bert or roberta), or, marked in the ``note`` column, when it has GLUE results but no
summary.json (GLUE on an imported export). Runs with an unreadable or unfinished summary,
or an export alone, are listed apart under "Not ranked".
Rows are sorted by GLUE average; each average is shown with its coverage (how many of
the nine GLUE numbers it covers), because averages over different task sets do not
compare. Published reference rows are kept in their own section, marked as references.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import logging
import os
import statistics
from pathlib import Path

from cramming.commands import fail
from cramming.glue.tasks import AVERAGE_COLUMNS, TASKS, glue_average

log = logging.getLogger(__name__)

TASK_COLUMNS = (*AVERAGE_COLUMNS, "WNLI")
INFO_COLUMNS = ("run", "arch", "recipe", "budget", "hardware", "tokens_seen", "steps", "final_mlm_loss")

# Published GLUE dev scores (the crammedBERT paper and model card, BERT-base on the same protocol). Not measured here.
# The paper's row is the like-for-like target (its median pretraining run); the model card's 80.7 is the
# best of five pretraining runs with the newer code. ``seeds``: fine-tuning runs per task behind the
# median (None where the source does not say).
SANE = "GLUE-sane: 5 ep, lr 4e-05, head crammed, wd 0, no clip, dropout 0.1/attn 0.1"
REFERENCES = [
    {
        "run": "crammedBERT paper (published)",
        "arch": "crammed-bert",
        "recipe": "crammed",
        "budget": "24h",
        "hardware": "1x A6000",
        "scores": {"MNLI-m": 83.9, "MNLI-mm": 84.1, "QQP": 87.3, "QNLI": 89.5, "SST-2": 92.0,
                   "CoLA": 44.5, "STS-B": 84.6, "MRPC": 87.5, "RTE": 53.8},
        "average": 78.6,
        "coverage": "9/9",
        "seeds": None,
        "protocol": SANE,
        "source": "Geiping & Goldstein 2022 (Cramming), GLUE dev of the median pretraining run, 24 h on one "
                  "A6000: the like-for-like reference",
    },
    {
        "run": "crammedBERT model card, best of 5 (published)",
        "arch": "crammed-bert",
        "recipe": "crammed",
        "budget": "24h",
        "hardware": "1x A6000",
        "scores": {"MNLI-m": 84.1, "MNLI-mm": 84.6, "QQP": 87.5, "QNLI": 90.2, "SST-2": 92.0,
                   "CoLA": 53.3, "STS-B": 87.4, "MRPC": 88.9, "RTE": 58.5},
        "average": 80.7,
        "coverage": "9/9",
        "seeds": 5,
        "protocol": SANE,
        "source": "JonasGeiping/cramming model card: the best of five pretraining runs (newer code), "
                  "GLUE dev, median of 5 fine-tunings, GLUE-sane",
    },
    {
        "run": "BERT-base (published)",
        "arch": "bert-base",
        "recipe": "bert",
        "budget": "",
        "hardware": "",
        "scores": {},
        "average": 80.9,
        "coverage": "9/9",
        "seeds": None,
        "protocol": "GLUE-sane (as above)",
        "source": "Geiping & Goldstein 2022, BERT-base fine-tuned with the same GLUE-sane protocol (average only)",
    },
]  # fmt: skip


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``, or {} (with a warning) when it is absent or unreadable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("ignoring %s: %s", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _text(value) -> str:
    """A summary field as short text (a device description may be a dict with a name)."""
    if isinstance(value, dict):
        return str(value.get("name") or value.get("device") or json.dumps(value, sort_keys=True))
    return "" if value is None else str(value)


def find_runs(outputs: Path) -> list[Path]:
    """Run folders (up to two levels below ``outputs``) holding an export or GLUE results."""
    found = set()
    for pattern in (
        "*/model/config.json",
        "*/glue/results.json",
        "*/*/model/config.json",
        "*/*/glue/results.json",
    ):
        found.update(p.parent.parent for p in outputs.glob(pattern))
    return sorted(found)


def run_status(run_dir: Path) -> tuple[str, str]:
    """``finished`` (summary.json says finished: true), ``external`` (GLUE on a transformers checkpoint),
    ``no-summary`` (GLUE results but no summary.json, e.g. GLUE on an imported export) or ``unfinished``,
    with the reason shown in the tables."""
    path = run_dir / "summary.json"
    external = _read_json(run_dir / "glue" / "results.json").get("external")
    if isinstance(external, dict):
        return (
            "external",
            f"external checkpoint {external.get('model')} (transformers AutoModel, fine-tuned here)",
        )
    if not path.is_file():
        if (run_dir / "glue" / "results.json").is_file():
            return "no-summary", "no summary.json (not pretrained here, e.g. an imported export)"
        return "unfinished", "no summary.json and no GLUE results (pretraining did not finish?)"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return "unfinished", f"summary.json is unreadable ({err})"
    if not isinstance(summary, dict) or summary.get("finished") is not True:
        return "unfinished", "summary.json lacks finished: true (pretraining stopped before the end)"
    return "finished", ""


def run_row(run_dir: Path, outputs: Path) -> dict:
    summary = _read_json(run_dir / "summary.json")
    config = _read_json(run_dir / "model" / "config.json")
    results = _read_json(run_dir / "glue" / "results.json")
    arch = summary.get("arch") or (config.get("arch") or {}).get("name") or results.get("arch")
    scores, seeds = seed_medians(results)
    average = glue_average(scores) if seeds else results.get("average") or {}
    resolved = {key: results[key] for key in ("lr", "head") if key in results}  # what "auto" became
    external = results.get("external") if isinstance(results.get("external"), dict) else None
    report = run_dir / "report.html"
    return {
        "kind": "external" if external else "measured",
        "report": report if report.is_file() else None,  # made relative to the page where it is linked
        "run": str(run_dir.relative_to(outputs)),
        "arch": arch if isinstance(arch, str) else (arch or {}).get("name", ""),
        "recipe": run_recipe(summary, config),
        "budget": _text(summary.get("budget")),
        "hardware": _text(summary.get("hardware") or summary.get("device")),
        "parameters": summary.get("parameters") or (external or {}).get("parameters"),
        "tokens_seen": summary.get("tokens_seen"),
        "steps": summary.get("steps"),
        "final_mlm_loss": summary.get("final_mlm_loss"),
        "scores": {k: v for k, v in scores.items() if k in TASK_COLUMNS},
        "average": average.get("value"),
        "coverage": f"{average['count']}/{average['of']}" if "count" in average else "",
        "seeds": seeds or (results.get("settings") or {}).get("seeds"),
        "protocol": protocol({**(results.get("settings") or {}), **resolved}),
        "source": str((run_dir / "glue" / "results.json").relative_to(outputs)) if results else "",
    }


def seed_medians(results: dict) -> tuple[dict, str]:
    """Each task's headline numbers as the median over its fine-tuning seeds, and how many seeds there
    were ("3", or "1-3" when tasks differ; "" without per-seed scores, where the stored headline is kept)."""
    headline, counts = {}, []
    for name, task in (results.get("tasks") or {}).items():
        runs = task.get("seeds") if isinstance(task, dict) else None
        if name not in TASKS or not runs:
            continue
        counts.append(len(runs))
        for column, key in TASKS[name].headline.items():
            values = [r["scores"][key] for r in runs if key in (r.get("scores") or {})]
            if values:
                headline[column] = statistics.median(values)
    for column, value in (results.get("headline") or {}).items():
        headline.setdefault(column, value)
    seeds = (
        ""
        if not counts
        else str(min(counts))
        if min(counts) == max(counts)
        else f"{min(counts)}-{max(counts)}"
    )
    return headline, seeds


def run_recipe(summary: dict, config: dict) -> str:
    """crammed | bert | roberta; runs from before recipes existed were all crammed."""
    recipe = summary.get("recipe") or (config.get("pretraining") or {}).get("recipe")
    if recipe:
        return str(recipe)
    return "crammed" if summary else ""


def select(rows: list[dict], recipe: str | None = None, group_by_recipe: bool = False) -> list[dict]:
    """Rows of one recipe only (``recipe``), and/or grouped by recipe (each group best first)."""
    if recipe:
        rows = [r for r in rows if r.get("recipe") == recipe]
    if group_by_recipe:
        rows = sorted(rows, key=lambda r: r.get("recipe") or "~")  # stable: the ranking holds inside a group
    return rows


# What fine-tuning used before these settings were keys (results.json files without them).
LEGACY_PROTOCOL = {"head": "gelu", "weight_decay": 0.01, "grad_clip": 1.0, "betas": [0.9, 0.999], "eps": 1e-6,
                   "dropout": 0.1, "attention_dropout": 0.0}  # fmt: skip


def protocol(settings: dict) -> str:
    """The fine-tuning settings that make scores comparable or not, in a few words."""
    if not settings:
        return ""
    s = {**LEGACY_PROTOCOL, **settings}
    lr = s.get("lr")
    clip = s["grad_clip"]
    parts = [
        f"{s.get('epochs')} ep",
        f"lr {lr:.3g}" if isinstance(lr, float) else f"lr {lr}",
        f"head {s['head']}",
        f"wd {s['weight_decay']:g}",
        "no clip" if not clip else f"clip {clip:g}",
        f"betas {s['betas'][0]:g}/{s['betas'][1]:g}",
        f"eps {s['eps']:g}",
        f"dropout {s['dropout']:g}/attn {s['attention_dropout']:g}",
    ]
    if settings.get("max_train_examples"):
        parts.append(f"train<={settings['max_train_examples']}")
    if settings.get("max_eval_examples"):
        parts.append(f"dev<={settings['max_eval_examples']}")
    return ", ".join(parts)


def scan(outputs: Path) -> tuple[list[dict], list[dict]]:
    """Ranked rows (best average first, runs without GLUE scores last) and the runs left unranked
    because they are unfinished or unreadable (``run`` and ``reason``)."""
    rows, unranked = [], []
    for run_dir in find_runs(outputs):
        status, reason = run_status(run_dir)
        name = str(run_dir.relative_to(outputs))
        if status == "unfinished":
            log.info("not ranking %s: %s", name, reason)
            unranked.append({"run": name, "reason": reason})
            continue
        rows.append({**run_row(run_dir, outputs), "note": reason})
    rows.sort(key=lambda r: (r["average"] is None, -(r["average"] or 0.0), r["run"]))
    return rows, unranked


def collect(outputs: Path) -> list[dict]:
    """The ranked rows of ``scan``."""
    return scan(outputs)[0]


def _fmt(value, digits: int = 1) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and value >= 10_000:
        for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if value >= size:
                return f"{value / size:.1f}{unit}"
    return str(value)


def display_name(row: dict) -> str:
    """The run's name, marked ``[external]`` for a transformers checkpoint fine-tuned here."""
    return f"{row['run']} [external]" if row.get("kind") == "external" else row["run"]


def table_cells(row: dict) -> list[str]:
    cells = [
        display_name(row), row["arch"] or "", row.get("recipe") or "", str(row["budget"] or ""), str(row["hardware"] or ""),
        _fmt(row.get("tokens_seen")), _fmt(row.get("steps")), _fmt(row.get("final_mlm_loss"), 3),
    ]  # fmt: skip
    cells += [_fmt(row["scores"].get(c)) for c in TASK_COLUMNS]
    seeds = _fmt(row.get("seeds"))
    return cells + [
        _fmt(row["average"]),
        row["coverage"],
        seeds,
        row.get("protocol", ""),
        row.get("note", ""),
    ]


HEADER = [*INFO_COLUMNS, *TASK_COLUMNS, "average", "coverage", "seeds", "protocol", "note"]


def to_markdown(rows: list[dict], references: list[dict], unranked: list[dict] = ()) -> str:
    def table(items):
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in table_cells(r)) + " |" for r in items]
        return lines

    out = ["# cramming leaderboard", "", "GLUE dev scores in percent, each the median over the run's "
           "fine-tuning seeds (`seeds` says how many). `coverage` says how many of the nine GLUE numbers "
           "(MNLI-m/-mm, QQP, QNLI, SST-2, CoLA, STS-B, MRPC, RTE) the average covers; WNLI is never averaged. "
           "The like-for-like reference is the crammedBERT paper's 78.6 (its median pretraining run); the "
           "model card's 80.7 is the best of five pretraining runs.", "", "## Measured runs", ""]  # fmt: skip
    out += table(rows) if rows else ["(no finished runs found)"]
    if unranked:
        out += ["", "## Not ranked (unfinished or unreadable)", ""]
        out += [f"- {r['run']}: {r['reason']}" for r in unranked]
    out += ["", "## Published references (not measured here)", ""] + table(references)
    out += [""] + [f"- {r['run']}: {r['source']}" for r in references]
    return "\n".join(out) + "\n"


def write_csv(path: Path, rows: list[dict], references: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", *HEADER, "source"])
        for kind, items in (("measured", rows), ("reference", references)):
            for row in items:
                writer.writerow(
                    [row.get("kind", kind) if kind == "measured" else kind, *csv_cells(row), row["source"]]
                )


def csv_cells(row: dict) -> list:
    """Raw values (full precision, unabbreviated counts) for machine reading."""
    raw = lambda v: "" if v is None else (round(v, 4) if isinstance(v, float) else v)  # noqa: E731
    cells = [
        row["run"],
        row["arch"] or "",
        row.get("recipe") or "",
        row["budget"] or "",
        row["hardware"] or "",
    ]
    cells += [raw(row.get(k)) for k in ("tokens_seen", "steps", "final_mlm_loss")]
    cells += [raw(row["scores"].get(c)) for c in TASK_COLUMNS]
    seeds = row.get("seeds")
    return cells + [raw(row["average"]), row["coverage"], "" if seeds is None else seeds, row.get("protocol", ""),
                    row.get("note", "")]  # fmt: skip


BAR_COLOURS = {"measured": "#3b6fb6", "external": "#d9822b"}


def _label_width(labels: list[str], font_px: int = 13) -> int:
    """Room for the longest label (about 0.6 em per character in a sans-serif font), so none is cut."""
    return int(max((len(t) for t in labels), default=10) * font_px * 0.6) + 16


def bar_chart_svg(rows: list[dict], references: list[dict]) -> str:
    """Horizontal bars of the GLUE average in two groups: averages over all nine GLUE numbers, then
    partial averages (fewer tasks: they do not compare) drawn pale and hatched under their own heading.
    References are grey and hatched; external checkpoints orange."""
    items = [(r, r.get("kind", "measured")) for r in rows if r["average"] is not None]
    items += [(r, "reference") for r in references]
    full = [(r, k) for r, k in items if r["coverage"] == f"{len(AVERAGE_COLUMNS)}/{len(AVERAGE_COLUMNS)}"]
    partial = [(r, k) for r, k in items if (r, k) not in full]
    label = lambda r, k: r["run"] + {"reference": " [reference]", "external": " [external]"}.get(k, "")  # noqa: E731
    bar_h, gap, width = 20, 6, 420
    left = _label_width([label(r, k) for r, k in items])
    parts, y = [], 4
    for title, group, pale in (("all 9 GLUE numbers", full, False),
                               ("partial averages: fewer tasks, not comparable with the above", partial, True)):  # fmt: skip
        if not group:
            continue
        parts.append(
            f'<text x="0" y="{y + 14}" font-size="13" font-weight="bold">{html.escape(title)}</text>'
        )
        y += 22
        for row, kind in group:
            parts += _bar(row, kind, label(row, kind), left, y, width, bar_h, pale)
            y += bar_h + gap
        y += 8
    axis = [f'<line x1="{left}" y1="{y}" x2="{left + width}" y2="{y}" stroke="#444"/>']
    for tick in range(0, 101, 20):
        x = left + tick / 100 * width
        axis.append(f'<text x="{x}" y="{y + 14}" font-size="10" text-anchor="middle">{tick}</text>')
    axis.append(f'<text x="{left + width / 2}" y="{y + 28}" font-size="11" text-anchor="middle">'
                "GLUE average (%, median over fine-tuning seeds)</text>")  # fmt: skip
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 130}" height="{y + 36}" role="img">'
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="6" height="6" fill="#ddd"/><line x1="0" y1="0" x2="0" y2="6" stroke="#999" stroke-width="3"/>'
        '</pattern><pattern id="partial" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#e8eef8"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#9db3d9" stroke-width="2"/></pattern></defs>'
    )
    return "\n".join([head, *parts, *axis, "</svg>"])


def _bar(
    row: dict, kind: str, label: str, left: int, y: int, width: int, bar_h: int, pale: bool
) -> list[str]:
    value = max(0.0, min(100.0, float(row["average"])))
    fill = "url(#hatch)" if kind == "reference" else "url(#partial)" if pale else BAR_COLOURS[kind]
    tip = html.escape(f"{label}: {row['average']:.1f} over {row['coverage']} GLUE numbers")
    text = html.escape(f"{row['average']:.1f} ({row['coverage']} tasks)" if pale else f"{row['average']:.1f}")
    return [
        f"<g><title>{tip}</title>",
        f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="13">{html.escape(label)}</text>',
        f'<rect x="{left}" y="{y}" width="{value / 100 * width:.1f}" height="{bar_h}" fill="{fill}"'
        + (' stroke="#9db3d9"' if pale else "")
        + "/>",
        f'<text x="{left + value / 100 * width + 6:.1f}" y="{y + 15}" font-size="12"'
        + (' fill="#777"' if pale else "")
        + f">{text}</text></g>",
    ]


def protocol_codes(rows: list[dict]) -> dict[str, str]:
    """A short code (P1, P2, ...) per distinct fine-tuning protocol, in order of first appearance."""
    codes: dict[str, str] = {}
    for row in rows:
        text = row.get("protocol") or ""
        if text and text not in codes:
            codes[text] = f"P{len(codes) + 1}"
    return codes


# The page's column order: what ranks a run first (seen without scrolling at 1400 px), details after.
HTML_ORDER = ["run", "average", "coverage", "seeds", *TASK_COLUMNS, "arch", "recipe", "budget", "hardware",
              "tokens_seen", "steps", "final_mlm_loss", "protocol", "note"]  # fmt: skip


def html_table(items: list[dict], codes: dict[str, str], link_from: Path | None) -> str:
    """One table inside a horizontally scrolling box; the protocol as a code with the full text as a
    tooltip; partial averages greyed; the run's name links to its report.html when there is one."""
    protocol_index = HEADER.index("protocol")
    order = [HEADER.index(h) for h in HTML_ORDER]
    head = "".join(f"<th>{html.escape(HEADER[i])}</th>" for i in order)
    body = []
    for row in items:
        cells = [html.escape(c) for c in table_cells(row)]
        text = row.get("protocol") or ""
        if text:
            cells[protocol_index] = f'<abbr title="{html.escape(text)}">{codes[text]}</abbr>'
        report = row.get("report")
        if report is not None and link_from is not None:
            href = html.escape(Path(os.path.relpath(report, link_from)).as_posix())
            cells[0] = f'<a href="{href}">{cells[0]}</a>'
        partial = (
            row.get("average") is not None
            and row["coverage"] != f"{len(AVERAGE_COLUMNS)}/{len(AVERAGE_COLUMNS)}"
        )
        css = f"{row.get('kind', 'reference')}{' partial' if partial else ''}"
        body.append(f'<tr class="{css}">' + "".join(f"<td>{cells[i]}</td>" for i in order) + "</tr>")
    return (
        f'<div class="box"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 1.5em 2em; max-width: 1340px; }
.box { overflow-x: auto; max-width: 100%; margin-bottom: 1.5em; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
td:first-child, th:first-child { text-align: left; position: sticky; left: 0; background: #fff; }
tr.reference td { background: #f3f3f3; font-style: italic; color: #555; }
tr.external td:first-child { border-left: 4px solid #d9822b; }
tr.partial td { color: #888; }
abbr { text-decoration: underline dotted; cursor: help; }
.chart { overflow-x: auto; }
dl.legend dt { font-weight: bold; float: left; clear: left; width: 3em; } dl.legend dd { margin-left: 3.5em; }
"""

# After loading: labels cut off at the chart's edges and page-wide horizontal overflow, into data-*
# attributes of <body> (the browser test reads them; a person sees the page as it is).
PAGE_CHECK = """
window.addEventListener("load", function () {
  var svg = document.querySelector("svg"), clipped = 0;
  if (svg) {
    var box = svg.getBoundingClientRect();
    svg.querySelectorAll("text").forEach(function (t) {
      var r = t.getBoundingClientRect();
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5) { clipped += 1; }
    });
  }
  var rows = Array.prototype.map.call(document.querySelectorAll("tbody tr"), function (tr) {
    return tr.getBoundingClientRect().height;
  });
  document.body.dataset.clippedLabels = String(clipped);
  document.body.dataset.pageOverflow = String(document.documentElement.scrollWidth > window.innerWidth);
  document.body.dataset.maxRowHeight = String(Math.round(Math.max.apply(null, rows.concat([0]))));
  var averages = Array.prototype.filter.call(document.querySelectorAll("th"), function (th) {
    return th.textContent === "average" && th.getBoundingClientRect().right > window.innerWidth;
  });
  document.body.dataset.averageOffscreen = String(averages.length);
});
"""


def to_html(
    rows: list[dict], references: list[dict], unranked: list[dict] = (), link_from: Path | None = None
) -> str:
    codes = protocol_codes([*rows, *references])
    legend = "".join(f"<dt>{c}</dt><dd>{html.escape(t)}</dd>" for t, c in codes.items())
    sources = "".join(f"<li>{html.escape(r['run'])}: {html.escape(r['source'])}</li>" for r in references)
    measured = html_table(rows, codes, link_from) if rows else "<p>(no finished runs found)</p>"
    if unranked:
        items = "".join(f"<li>{html.escape(r['run'])}: {html.escape(r['reason'])}</li>" for r in unranked)
        measured += f"\n<h3>Not ranked (unfinished or unreadable)</h3>\n<ul>{items}</ul>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cramming leaderboard</title><style>{PAGE_CSS}</style></head><body>
<h1>cramming leaderboard</h1>
<p>GLUE dev scores in percent, each the median over the run's fine-tuning seeds (<em>seeds</em> says how
many). <em>coverage</em> is how many of the nine GLUE numbers the average covers; WNLI is never averaged.
Averages over fewer than nine numbers are drawn apart and greyed: they do not compare with full ones.
Rows marked <em>[external]</em> (orange) are transformers checkpoints fine-tuned here with the same protocol.
The like-for-like reference is the crammedBERT paper's 78.6 (its median pretraining run); the model card's
80.7 is the best of five pretraining runs. A run's name links to its report.</p>
<h2>GLUE average</h2>
<div class="chart">{bar_chart_svg(rows, references)}</div>
<h2>Measured runs</h2>
{measured}
<h2>Published references (not measured here)</h2>
{html_table(references, codes, None)}
<ul>{sources}</ul>
<h2>Fine-tuning protocols</h2>
<dl class="legend">{legend}</dl>
<script>{PAGE_CHECK}</script>
</body></html>
"""


def write_leaderboard(
    outputs: str | Path,
    out: str | Path | None = None,
    recipe: str | None = None,
    group_by_recipe: bool = False,
) -> dict[str, Path]:
    """Collect the runs under ``outputs`` and write leaderboard.{md,csv,html} into ``out``.

    ``recipe`` keeps only that recipe's runs and references; ``group_by_recipe`` orders rows by recipe.
    """
    outputs = Path(outputs)
    if not outputs.is_dir():
        raise ValueError(
            f"--outputs {outputs} is not a folder; give the folder holding the run folders (outputs)"
        )
    out = Path(out) if out else outputs / "leaderboard"
    out.mkdir(parents=True, exist_ok=True)
    rows, unranked = scan(outputs)
    rows = select(rows, recipe, group_by_recipe)
    references = select(REFERENCES, recipe, group_by_recipe)
    paths = {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "html": out / "leaderboard.html"}
    paths["md"].write_text(to_markdown(rows, references, unranked), encoding="utf-8")
    write_csv(paths["csv"], rows, references)
    paths["html"].write_text(to_html(rows, references, unranked, link_from=out), encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cramming.leaderboard", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--outputs", default="outputs", help="folder holding the run folders (default: outputs)"
    )
    parser.add_argument(
        "--out", default=None, help="where to write the tables (default: OUTPUTS/leaderboard)"
    )
    parser.add_argument("--recipe", default=None, help="only runs of this recipe (crammed, bert, roberta)")
    parser.add_argument(
        "--group-by-recipe", action="store_true", help="order the rows by recipe (best first within each)"
    )
    args = parser.parse_args(argv)
    try:
        paths = write_leaderboard(args.outputs, args.out, args.recipe, args.group_by_recipe)
    except ValueError as err:
        fail(err, "cramming.leaderboard")
    print(paths["md"].read_text(), end="")
    print("written: " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
