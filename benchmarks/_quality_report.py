"""bench_quality's figures: per-variant spread, time to target, comparability, Markdown, the plot.

Pure functions of the run records ``bench_quality.py`` collects (no training, no files read), so
they are easy to test. No machine path reaches a result file: ``clean`` turns absolute paths into
their base names.
"""

from __future__ import annotations

import re
import statistics
import textwrap
from pathlib import Path

METRICS = {"bpc": "bits_per_char", "nats": "nats_per_masked_token"}
_ABSOLUTE = re.compile(r"(?<![\w.])(?:~|[A-Za-z]:)?/(?:[^\s/\[\],'\"=:]+/)*([^\s/\[\],'\"=:]+)/?")


def clean(text: str) -> str:
    """``text`` with every absolute path replaced by its base name (result files name no machine)."""
    return _ABSOLUTE.sub(lambda m: m.group(1), str(text))


def spread(values: list) -> dict | None:
    """Mean with min..max (and the sample std when there are two or more values)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    out = {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}
    out["std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def crossing(points: list[list[float]], target: float, column: int) -> dict | None:
    """First (seconds, tokens) at which ``points[i][column]`` reaches ``target`` (≤), linearly
    interpolated between the evaluation before and the one at or below it; None if never reached.

    ``points``: [elapsed_s, tokens, nats, bpc] rows in training order.
    """
    previous = None
    for row in points:
        if row[column] <= target:
            if previous is None or previous[column] == row[column]:
                return {"seconds": row[0], "tokens": row[1]}
            w = (previous[column] - target) / (previous[column] - row[column])
            return {
                "seconds": previous[0] + w * (row[0] - previous[0]),
                "tokens": previous[1] + w * (row[1] - previous[1]),
            }
        previous = row
    return None


def add_time_to_target(records: list[dict], baseline: str, metric: str, target: float | None) -> dict:
    """Set each ok run's ``time_to_target``; the target defaults to the baseline's mean final value."""
    column = 3 if metric == "bpc" else 2
    if target is None:
        finals = [r["heldout"][METRICS[metric]] for r in records if r["ok"] and r["variant"] == baseline]
        target = statistics.fmean(finals) if finals else None
    for r in records:
        if r["ok"]:
            r["time_to_target"] = None if target is None else crossing(r["curve"]["heldout"], target, column)
    return {"metric": metric, "value": target, "baseline": baseline}


def summarize(records: list[dict], variants: dict[str, list[str]]) -> dict[str, dict]:
    """Per variant: every figure as the spread over its pretraining seeds."""
    table = {}
    for name, extra in variants.items():
        runs = [r for r in records if r["variant"] == name]
        good = [r for r in runs if r["ok"]]
        row = {"overrides": extra, "runs": len(runs), "ok": len(good)}
        row["failed"] = [f"seed {r['seed']}: {r['error']}" for r in runs if not r["ok"]]
        for key in ("tokens_seen", "tokens_per_s", "elapsed_s", "steps", "glue_average", "final_mlm_loss"):
            row[key] = spread([r.get(key) for r in good])
        for key in METRICS.values():
            row[key] = spread([r["heldout"][key] for r in good])
        reached = [r["time_to_target"] for r in good if r.get("time_to_target")]
        row["time_to_target_s"] = spread([t["seconds"] for t in reached])
        row["tokens_to_target"] = spread([t["tokens"] for t in reached])
        row["reached_target"] = len(reached)
        columns = sorted({c for r in good for c in r.get("glue", {})})
        row["glue"] = {c: spread([r["glue"].get(c) for r in good if "glue" in r]) for c in columns}
        table[name] = row
    return table


def comparability(records: list[dict]) -> dict:
    """Groups of variants scored with the same tokenizer and the same masked spans (nats comparable
    within a group; bits per character across all), and the verdict for every pair."""
    keys: dict[str, set] = {}
    for r in records:
        if r["ok"]:
            h = r["heldout"]
            keys.setdefault(r["variant"], set()).add(
                (h["tokenizer_sha"], h["masked_spans_sha"], h["text_sha"])
            )
    groups: dict[tuple, list[str]] = {}
    for name, found in keys.items():
        groups.setdefault(tuple(sorted(found)), []).append(name)
    texts = {k[2] for found in keys.values() for k in found}
    names = list(keys)
    pairs = {
        f"{a} vs {b}": "nats and bpc" if keys[a] == keys[b] and len(keys[a]) == 1 else "bpc only"
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    return {"groups": list(groups.values()), "same_text": len(texts) <= 1, "pairs": pairs}


def fmt(s: dict | None, digits: int = 3) -> str:
    if s is None:
        return "n/a"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ({s['min']:.{digits}f}..{s['max']:.{digits}f})"


def fmt_target(row: dict) -> str:
    if not row["reached_target"]:
        return f"not reached (0/{row['ok']})"
    text = fmt(row["time_to_target_s"], 1) + " s"
    return text if row["reached_target"] == row["ok"] else f"{text} ({row['reached_target']}/{row['ok']})"


def comparability_text(comp: dict) -> str:
    if not comp["same_text"]:
        return "WARNING: the runs were scored on different held-out texts: no figure is comparable."
    if len(comp["groups"]) <= 1:
        return "All variants share one tokenizer and one evaluation masking: nats per masked token and bits per character are both comparable."
    groups = "; ".join("{" + ", ".join(g) + "}" for g in comp["groups"])
    return (f"Nats per masked token are comparable only within these groups (same tokenizer and masked "
            f"spans): {groups}. Across groups compare bits per character.")  # fmt: skip


def compact_table(report: dict) -> str:
    """The plain-text table printed at the end (LR sweeps read it at a glance)."""
    head = ["variant", "seeds", "tokens", "nats/masked tok", "bpc", "tok/s", "time to target"]
    rows = [head]
    for name, row in report["variants"].items():
        if not row["ok"]:
            rows.append([name, f"0/{row['runs']}", "FAILED", "", "", "", ""])
            continue
        tokens = f"{row['tokens_seen']['mean']:,.0f}"
        rows.append([name, f"{row['ok']}/{row['runs']}", tokens, fmt(row["nats_per_masked_token"]),
                     fmt(row["bits_per_char"], 4), fmt(row["tokens_per_s"], 0), fmt_target(row)])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def to_markdown(report: dict) -> str:
    table, columns, h = report["variants"], report["glue_columns"], report["heldout"]
    target = report["target"]
    text = "whole file" if not h["chars"] else f"first {h['chars']:,} characters"
    lines = [f"# Quality benchmark `{report['name']}`", "",
             f"Shared overrides: `{' '.join(report['shared']) or '(none)'}`; {report['seeds']} pretraining "
             f"seed(s) per variant; figures are the mean over seeds with (min..max).", "",
             f"Held-out text: the validation documents ({text}), each variant's own tokenizer and framing, "
             f"masked at {h['mask_rate']:.0%} ({h['mask_style']} style, seed {h['seed']}) for every variant; "
             f"final exported model, fp32. Time to target: first training wall clock (evaluation excluded, "
             f"interpolated between evaluations every {h['every_tokens']:,} tokens) at which held-out "
             f"{target['metric']} ≤ {fmt_value(target['value'])} ({target['source']}).", "",
             comparability_text(report["comparability"]), "",
             f"Tokens are the sequence positions trained on (framing tokens included); tok/s = tokens / training "
             f"wall clock (evaluation excluded). Code: revision {report['code']['revision']}, sources "
             f"{report['code']['sources']} (each run's own in the JSON).", ""]  # fmt: skip
    glue = ["GLUE-lite avg", *columns] if report["glue"] else []
    head = ["variant", "overrides", "tokens", "nats/masked tok", "bits/char", "tok/s", "time to target",
            "tokens to target", *glue]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        overrides = f"`{clean(' '.join(row['overrides'])) or '-'}`"
        if not row["ok"]:
            cells = [name, overrides, "FAILED: " + clean("; ".join(row["failed"]))]
            lines.append("| " + " | ".join(cells + [""] * (len(head) - 3)) + " |")
            continue
        cells = [name, overrides, fmt(row["tokens_seen"], 0), fmt(row["nats_per_masked_token"]),
                 fmt(row["bits_per_char"], 4), fmt(row["tokens_per_s"], 0), fmt_target(row),
                 fmt(row["tokens_to_target"], 0)]  # fmt: skip
        if glue:
            cells += [fmt(row["glue_average"], 2), *[fmt(row["glue"].get(c), 1) for c in columns]]
        if row["failed"]:
            cells[1] += " (" + clean("; ".join(row["failed"])) + ")"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fmt_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def plot(report: dict, records: list[dict], path: Path) -> int:
    """Held-out bits per character against wall clock and against tokens; GLUE-lite bars when any.
    Returns the number of panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in records if r["ok"]]
    has_glue = any(row["glue_average"] for row in report["variants"].values())
    panels = 3 if has_glue else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.8))
    colors = {name: f"C{i % 10}" for i, name in enumerate(report["variants"])}
    longest = max((p[0] for r in good for p in r["curve"]["heldout"]), default=0.0)
    minutes = longest >= 120
    clock = f"training wall clock ({'minutes' if minutes else 'seconds'}, evaluation excluded)"
    for ax, column, label in ((axes[0], 0, clock), (axes[1], 1, "tokens seen")):
        scale = 60.0 if column == 0 and minutes else 1.0
        for r in good:
            pts = r["curve"]["heldout"]
            name = (
                r["variant"]
                if r["seed"] == min(x["seed"] for x in good if x["variant"] == r["variant"])
                else None
            )
            ax.plot([p[column] / scale for p in pts], [p[3] for p in pts], "o-", ms=3, alpha=0.8,
                    color=colors[r["variant"]], label=name)  # fmt: skip
        if report["target"]["value"] is not None and report["target"]["metric"] == "bpc":
            ax.axhline(report["target"]["value"], color="grey", ls="--", lw=0.8, label=None)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out bits per character (one line per seed)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if has_glue:
        glue_bars(axes[2], report, colors)
    title = clean(f"quality benchmark {report['name']}: {' '.join(report['shared'])}")
    fig.suptitle("\n".join(textwrap.wrap(title, 60 * panels)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return panels


def glue_bars(ax, report: dict, colors: dict) -> None:
    names = [n for n, row in report["variants"].items() if row["glue_average"]]
    means = [report["variants"][n]["glue_average"]["mean"] for n in names]
    low = [m - report["variants"][n]["glue_average"]["min"] for n, m in zip(names, means)]
    high = [report["variants"][n]["glue_average"]["max"] - m for n, m in zip(names, means)]
    ax.bar(names, means, yerr=[low, high], capsize=4, color=[colors[n] for n in names])
    ax.set_ylabel("GLUE-lite average (min..max over seeds)")
    ax.grid(alpha=0.3, axis="y")
