"""One self-contained HTML page per run: ``RUN/report.html``.

    python -m cramming.report outputs/RUN

Written at the end of every pretraining (and distillation) run, GLUE evaluation and own-task
fine-tuning, and on demand with the command above. It reads what the run folder holds
(summary.json, metrics.jsonl, log.txt, config.yaml, checkpoints/*.json, glue/results.json,
finetuned/metrics.json) and draws everything inline: figures are base64 PNGs, the styles are
in the page, nothing is fetched, so the file opens from a file URL or an e-mail attachment.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import platform
import re
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from cramming import report_figures as figures
from cramming.commands import fail
from cramming.tracking import read_metrics

log = logging.getLogger("cramming")

REPORT = "report.html"
# Log lines worth a reader's attention (non-finite steps, fallbacks, OOM, automatic choices).
HIGHLIGHT = re.compile(r"non-finite|reloaded|fall(ing)? ?back|eager|out of memory|OOM|microbatch|error|warning|"
                       r"skipped|overshoot|compile", re.IGNORECASE)  # fmt: skip


def environment() -> dict:
    """Versions and source revision recorded in summary.json, so the report says what produced the run."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    for name in ("triton", "transformers", "tokenizers", "numpy"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # an optional package that is absent or broken: not worth failing a run
            env[name] = None
    env["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    env.update(git_revision())
    return env


def git_revision() -> dict:
    """The commit of the cramming checkout and whether it had uncommitted changes (None outside git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"git_revision": None, "git_dirty": None}
    return {"git_revision": rev, "git_dirty": bool(dirty)}


# -- reading the run folder -------------------------------------------------------------------------


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_folder(path: str | Path) -> Path:
    """The run folder a path belongs to: itself, or its parent when ``path`` is a run's glue/, finetuned/
    or model/ folder (the report describes the whole run)."""
    path = Path(path).resolve()
    markers = ("summary.json", "metrics.jsonl", "config.yaml")
    if any((path / m).is_file() for m in markers):
        return path
    if any((path.parent / m).is_file() for m in markers) or path.name in ("glue", "finetuned", "model"):
        return path.parent
    return path


def read_run(run_dir: Path) -> dict:
    """Everything the page shows, as plain data (the tests read it too)."""
    records = read_metrics(run_dir / "metrics.jsonl")
    log_lines = (
        (run_dir / "log.txt").read_text(errors="replace").splitlines()
        if (run_dir / "log.txt").is_file()
        else []
    )
    checkpoints = [_json(p) for p in sorted((run_dir / "checkpoints").glob("step_*.json"))]
    return {
        "name": run_dir.name,
        "summary": _json(run_dir / "summary.json"),
        "export": _json(run_dir / "model" / "config.json"),
        "config": (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else "",
        "train": [r for r in records if r.get("kind") == "train"],
        "valid": [r for r in records if r.get("kind") == "valid"],
        "log": log_lines,
        "checkpoints": [c for c in checkpoints if c],
        "glue": {_rel(p, run_dir): _json(p) for p in _beside(run_dir, "results.json") if _json(p).get("tasks")},
        "finetuned": {_rel(p, run_dir): _json(p) for p in _beside(run_dir, "metrics.json")},
        "tokenizer_sha256": _tokenizer_hash(run_dir, checkpoints),
    }  # fmt: skip


def _beside(run_dir: Path, name: str) -> list[Path]:
    """``name`` in the run folder itself (a GLUE or fine-tuning out_dir given by hand) or one level below."""
    return [p for p in [run_dir / name, *sorted(run_dir.glob(f"*/{name}"))] if p.is_file()]


def _rel(path: Path, run_dir: Path) -> str:
    return str(path.parent.relative_to(run_dir)) if path.parent != run_dir else "."


def _tokenizer_hash(run_dir: Path, checkpoints: list[dict]) -> str | None:
    from cramming.files import file_sha256

    path = run_dir / "model" / "tokenizer.json"
    if path.is_file():
        return file_sha256(path)
    return next((c.get("tokenizer_sha256") for c in checkpoints if c.get("tokenizer_sha256")), None)


def _config_value(config_text: str, *keys: str):
    """A value of config.yaml (``data``, ``source``) without failing on an unreadable file."""
    try:
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(OmegaConf.create(config_text)) if config_text else {}
    except Exception:  # a hand-edited or truncated config.yaml: show the rest of the report
        return None
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


# -- HTML pieces --------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1320px; padding: 1.5em 2em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 2px solid #3b6fb6; padding-bottom: .2em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { border: 1px solid #ccd; border-radius: 6px; padding: .5em .9em; min-width: 9em; background: #f7f9fc; }
.card b { display: block; font-size: 1.35em; } .card span { color: #555; font-size: .85em; }
.card.bad { background: #fdecec; border-color: #d99; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.kv td { text-align: left; } table.kv td:first-child { font-weight: 600; background: #f5f5f5; }
.box { overflow-x: auto; max-width: 100%; }
figure { margin: .6em 0 1.2em; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: .9em; }
.cm td { width: 4.5em; text-align: center; } .cm th { font-weight: 600; background: #f5f5f5; }
.cms { display: flex; flex-wrap: wrap; gap: 1.5em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 12px; max-height: 32em; }
.muted { color: #777; }
"""


# After loading: count the figures that drew (decoded, with a size on screen) into data-plots /
# data-plots-broken on <body> (and the page's height into data-height, for full-page screenshots), and say so at the top of the page when one did not (a truncated file).
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) {
    var box = i.getBoundingClientRect();
    return !(i.complete && i.naturalWidth > 0 && box.width > 0 && box.height > 0);
  });
  document.body.dataset.plots = String(imgs.length);
  document.body.dataset.plotsBroken = String(broken.length);
  document.body.dataset.height = String(document.documentElement.scrollHeight);
  if (broken.length) {
    var note = document.createElement("p");
    note.className = "card bad";
    note.textContent = broken.length + " of " + imgs.length + " figures could not be drawn (is the file complete?)";
    document.body.insertBefore(note, document.body.firstChild);
  }
});
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def kv_table(pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in pairs if v not in (None, ""))
    return f'<div class="box"><table class="kv">{rows}</table></div>'


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="box"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def card(label: str, value, bad: bool = False) -> str:
    return f'<div class="card{" bad" if bad else ""}"><b>{esc(value)}</b><span>{esc(label)}</span></div>'


def figure(uri: str | None, caption: str) -> str:
    if uri is None:
        return f'<p class="muted">{esc(caption)}: nothing logged.</p>'
    return f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def _num(value, fmt: str = "{:,.0f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 60 else f"{seconds:.1f} s"


# -- sections -------------------------------------------------------------------------------------------


def identity_section(run: dict) -> str:
    s, export = run["summary"], run["export"]
    glue = next(iter(run["glue"].values()), {})
    arch = s.get("arch") or (export.get("arch") or {}).get("name") or glue.get("arch")
    data = _config_value(run["config"], "data") or {}
    source = data.get("source")
    where = data.get("files") if source == "local" else (data.get("hub") or {}).get("path")
    tokenizer = data.get("tokenizer") or {}
    env = s.get("environment") or {}
    rev = env.get("git_revision")
    pairs = [
        ("recipe", s.get("recipe") or (export.get("pretraining") or {}).get("recipe")),
        ("architecture", arch),
        ("parameters", _num(s.get("parameters"))),
        ("external model", glue.get("external") and glue.get("model")),
        ("data", f"{source}: {where}" if source else None),
        ("tokenizer", f"{tokenizer.get('kind', '')} {data.get('vocab_size', '')}".strip() or None),
        ("tokenizer sha256", run["tokenizer_sha256"]),
        ("budget", s.get("budget")),
        ("hardware", s.get("hardware")),
        ("precision", s.get("precision")),
        ("microbatch", _microbatch(s)),
        ("git revision", rev and (rev + (" (uncommitted changes)" if env.get("git_dirty") else ""))),
        (
            "versions",
            ", ".join(
                f"{k} {env[k]}" for k in ("python", "torch", "triton", "transformers", "cuda") if env.get(k)
            ),
        ),  # fmt: skip
        ("platform", env.get("platform")),
    ]
    return "<h2>Identity</h2>" + kv_table(pairs)


def _microbatch(summary: dict) -> str | None:
    mb = summary.get("microbatch")
    if not isinstance(mb, dict):
        return None
    return f"{mb.get('size')} ({mb.get('reason', '')})"


def budget_section(run: dict) -> str:
    s, train = run["summary"], run["train"]
    if not s and not train:
        return ""
    last = train[-1] if train else {}
    overshoot = s.get("overshoot_s")
    skipped = s.get("skipped_steps", last.get("skipped_steps"))
    cards = [
        card("budget", s.get("budget", "?")),
        card("elapsed (wall clock)", duration(s.get("elapsed_s", last.get("elapsed_s")))),
        card(
            "overshoot past the budget",
            duration(overshoot) if overshoot is not None else "n/a",
            bad=isinstance(overshoot, (int, float)) and overshoot > 60,
        ),  # fmt: skip
        card("optimizer steps", _num(s.get("steps", last.get("step")))),
        card("tokens seen", figures._si(s.get("tokens_seen", last.get("tokens", 0)))),
        card("mean tokens/s", figures._si(round(s["tokens_per_s"])) if "tokens_per_s" in s else "?"),
        card("data wait", _num(100 * s["data_wait"], "{:.1f}%") if "data_wait" in s else "?"),
        card("non-finite steps skipped", skipped if skipped is not None else "?", bad=bool(skipped)),
        card(
            "reloads after non-finite", s.get("nonfinite_restores", 0), bad=bool(s.get("nonfinite_restores"))
        ),
        card("final MLM loss", _num(s.get("final_mlm_loss"), "{:.3f}")),
        card("validation MLM loss", _num(s.get("valid_mlm_loss"), "{:.3f}")),
    ]
    status = "finished" if s.get("finished") else "not finished (no summary.json with finished: true)"
    return f'<h2>Budget</h2><p>Status: <b>{esc(status)}</b></p><div class="cards">{"".join(cards)}</div>'


def figures_section(run: dict) -> str:
    train, valid = run["train"], run["valid"]
    if not train:
        return ""
    return "<h2>Training curves</h2>" + "".join(
        [
            figure(figures.loss_figure(train, valid), "MLM loss against wall clock and tokens seen"),
            figure(figures.schedule_figure(train), "learning rate and batch size against budget used"),
            figure(figures.throughput_figure(train), "tokens/s and MFU against wall clock"),
            figure(figures.wait_figure(train), "share of time waiting for data, and peak memory"),
        ]
    )


def steps_section(run: dict) -> str:
    """Validation, checkpoints, non-finite steps and other lines of the log worth reading."""
    parts = ["<h2>Validation and checkpoints</h2>"]
    if run["valid"]:
        rows = [
            [r["step"], _num(r.get("elapsed_s"), "{:.1f}"), _num(r["loss"], "{:.4f}")] for r in run["valid"]
        ]
        parts.append(table(["step", "wall clock (s)", "held-out MLM loss"], rows))
    else:
        parts.append('<p class="muted">No validation logged.</p>')
    if run["checkpoints"]:
        rows = [
            [c.get("file"), c.get("step"), _num((c.get("bytes") or 0) / 2**20, "{:.1f}")]
            for c in run["checkpoints"]
        ]
        parts.append(table(["checkpoint kept", "step", "size (MiB)"], rows))
    saved = sum("checkpoint saved" in line for line in run["log"])
    parts.append(f"<p>{saved} checkpoint(s) saved during the run (older ones are pruned).</p>")
    highlights = [line for line in run["log"] if HIGHLIGHT.search(line)]
    if highlights:
        shown = "\n".join(highlights[:200])
        parts.append(f"<h3>Log lines worth reading</h3><pre>{esc(shown)}</pre>")
    return "".join(parts)


def kernels_section(run: dict) -> str:
    s = run["summary"]
    kernels = s.get("kernels")
    if kernels is None:  # older runs: the start-up log line `kernels {...}`
        found = next(
            (m.group(1) for line in run["log"] for m in [re.search(r"kernels (\{[^}]*\})", line)] if m), None
        )
        kernels = found
    if isinstance(kernels, dict):
        kernels = ", ".join(f"{op}: {impl}" for op, impl in kernels.items())
    impl = _config_value(run["config"], "impl") or {}
    pairs = [
        ("kernels used", kernels),
        ("torch.compile", {True: "compiled", False: "eager"}.get(s.get("compiled"))),
        ("compile time (first step)", duration(s.get("compile_s")) if s.get("compile_s") else None),
        ("impl settings", ", ".join(f"{k}={v}" for k, v in impl.items() if not isinstance(v, dict))),
    ]
    if not any(v for _, v in pairs):
        return ""
    return "<h2>Kernels and compile</h2>" + kv_table(pairs)


def confusion_table(title: str, labels: list, matrix: list[list]) -> str:
    """Rows true, columns predicted; each cell shaded by its share of the row (recall at a glance)."""
    head = "".join(f"<th>{esc(label)}</th>" for label in labels)
    body = []
    for label, row in zip(labels, matrix):
        total = max(1, sum(row))
        cells = "".join(
            f'<td style="background: rgba(59,111,182,{0.85 * v / total:.2f}); color: {"#fff" if v / total > 0.55 else "#222"}">'
            f"{v}</td>"
            for v in row
        )
        body.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    return (
        f'<div><b>{esc(title)}</b><table class="cm"><thead><tr><th>true \\ predicted</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def glue_rows(results: dict) -> list[list]:
    rows = []
    for result in results.get("tasks", {}).values():
        for metric in result.get("metrics", []):
            values = [s["scores"][metric] for s in result.get("seeds", []) if metric in s.get("scores", {})]
            spread = f"{min(values):.1f} .. {max(values):.1f}" if len(values) > 1 else ""
            base = [v for v in (result.get("majority_baseline") or {}).values() if v is not None]
            rows.append([
                result.get("title"), metric, _num(result["median"].get(metric), "{:.2f}"), spread, len(values),
                _num(statistics.pstdev(values), "{:.2f}") if len(values) > 1 else "",
                "/".join(f"{b:.1f}" for b in base), _num(result.get("seconds"), "{:.0f}"),
            ])  # fmt: skip
    return rows


def glue_section(run: dict) -> str:
    parts = []
    for folder, results in run["glue"].items():
        average = results.get("average") or {}
        where = f"{folder}/results.json" if folder != "." else "results.json"
        parts.append(f"<h2>GLUE ({esc(where)})</h2>")
        parts.append(
            f"<p>Model {esc(results.get('model'))}; lr {esc(_num(results.get('lr'), '{:.3g}'))}, "
            f"head {esc(results.get('head'))}, "
            f"{esc((results.get('settings') or {}).get('epochs'))} epochs. <b>{esc(average.get('label', ''))}</b></p>"
        )
        header = [
            "task",
            "metric",
            "median (%)",
            "seed range",
            "seeds",
            "seed std",
            "majority class (%)",
            "time (s)",
        ]
        parts.append(table(header, glue_rows(results)))
        parts.append(
            figure(figures.seed_spread_figure(results["tasks"]), "each fine-tuning seed's dev score")
        )
        matrices = [
            confusion_table(f"{r.get('title')} {split} (median seed)", c["labels"], c["confusion_matrix"])
            for r in results["tasks"].values()
            for split, c in (r.get("classes") or {}).items()
        ]
        if matrices:
            parts.append(f'<h3>Confusion matrices</h3><div class="cms">{"".join(matrices)}</div>')
        if results.get("skipped"):
            parts.append(table(["skipped task", "why"], [[k, v] for k, v in results["skipped"].items()]))
    return "".join(parts)


def finetune_section(run_dir: Path, run: dict) -> str:
    parts = []
    for folder, summary in run["finetuned"].items():
        validation = summary.get("validation") or {}
        if not summary.get("task_type"):
            continue
        parts.append(f"<h2>Own-task fine-tuning ({esc(folder)})</h2>")
        shown = {
            k: v for k, v in validation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        parts.append(kv_table([("task", summary.get("task_type")), ("labels", summary.get("labels")),
                               ("train rows", summary.get("train_rows")), ("train time (s)", summary.get("train_seconds"))]
                              + [(f"validation {k}", _num(v, "{:.4f}")) for k, v in shown.items()]))  # fmt: skip
        cm = _json(run_dir / folder / "validation_confusion.json")
        if cm.get("matrix"):
            parts.append(confusion_table("validation", cm["labels"], cm["matrix"]))
    return "".join(parts)


def config_section(run: dict) -> str:
    env = run["summary"].get("environment") or {}
    parts = []
    if run["config"]:
        parts.append(
            f"<h2>Config</h2><details open><summary>config.yaml</summary><pre>{esc(run['config'])}</pre></details>"
        )
    if env:
        parts.append("<h2>Environment</h2>" + kv_table(sorted(env.items())))
    return "".join(parts)


def render(run_dir: Path) -> str:
    """The whole page for ``run_dir``."""
    run = read_run(run_dir)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = "".join(
        [
            identity_section(run),
            budget_section(run),
            figures_section(run),
            steps_section(run) if run["train"] or run["log"] else "",
            kernels_section(run),
            glue_section(run),
            finetune_section(run_dir, run),
            config_section(run),
        ]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cramming run {esc(run["name"])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>
<h1>Run {esc(run["name"])}</h1>
<p class="sub">cramming run report, written {esc(created)} from {esc(run_dir)}</p>
{body}
<script>{CHECK_SCRIPT}</script>
</body></html>
"""


def write_report(path: str | Path) -> Path:
    """Write ``report.html`` into the run folder ``path`` belongs to; returns its path."""
    from cramming.files import atomic_write

    run_dir = run_folder(path)
    if not run_dir.is_dir():
        raise ValueError(
            f"{path} is not a run folder (expected outputs/RUN with summary.json or metrics.jsonl)"
        )
    page = render(run_dir)
    out = run_dir / REPORT
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out


def report_at_end(path: str | Path) -> Path | None:
    """``write_report`` for the end of a run: a failure is one warning, never a failed run."""
    try:
        out = write_report(path)
    except Exception as err:  # the run's results are already on disk; the page is a convenience
        log.warning(
            "run report not written for %s: %s (retry: python -m cramming.report %s)", path, err, path
        )
        return None
    log.info("run report: %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cramming.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (outputs/RUN), or its glue/ or finetuned/ folder")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.run)
    except ValueError as err:
        fail(err, "cramming.report")
    print(out)


if __name__ == "__main__":
    main()
