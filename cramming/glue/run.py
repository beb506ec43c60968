"""GLUE fine-tuning and dev scores for an exported model.

    python -m cramming.glue model=outputs/RUN/model glue_dir=PATH tasks=[sst2,cola] seeds=3

For every task whose files are present: fine-tune a classifier whose encoder is loaded
strictly from the export, ``seeds`` times; score the dev set(s) after the last epoch; keep
every seed's scores and report their median; predict the test set(s) with the median seed's
model. Writes ``OUT/results.json``, ``OUT/confusion/TASK.png``, ``OUT/submission/*.tsv``,
``OUT/submission.zip`` and ``OUT/log.txt`` (OUT defaults to ``<model>/../glue``).
Scores are percentages. Settings are in conf/glue.yaml; ``run_glue`` is the Python entry.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from cramming.commands import cli_errors, fail
from cramming.conf import read_yaml
from cramming.config import CONF_PATH
from cramming.config.finetune import FinetuneSettings, resolve_lr
from cramming.files import atomic_write
from cramming.finetune.encode import encode_examples
from cramming.finetune.external import is_external, load_external, slug
from cramming.finetune.job import run_job, score_logits
from cramming.finetune.metrics import f1_binary, plot_confusion
from cramming.finetune.pretrained import Pretrained, load_pretrained, resolve_head
from cramming.glue import tasks as glue_data
from cramming.glue.submission import write_submission, zip_submission
from cramming.glue.tasks import AX, TASKS, Split, TaskData, TaskSpec, glue_average
from cramming.report import report_at_end
from cramming.runtime import Runtime, impl_defaults, make_runtime, resolve_impl
from cramming.tracking import log_to_file, setup_logging

log = logging.getLogger(__name__)

OPTIONAL_INT = ("max_train_examples", "max_eval_examples", "max_test_examples")
# Keys GLUE took before it took the impl group like finetune and predict: a clear error names the new key.
FLAT_KEYS = {"device": "impl.device", "precision": "impl.precision", "kernels": "impl.kernels",
             "num_threads": "impl.threads", "threads": "impl.threads"}  # fmt: skip


def default_settings() -> dict:
    """The defaults of conf/glue.yaml (without Hydra's own keys)."""
    cfg = read_yaml("glue.yaml")
    return {**{k: v for k, v in cfg.items() if k not in ("defaults", "hydra")}, "impl": impl_defaults()}


def check_flat_keys(keys) -> None:
    """A ValueError naming the impl key for each old flat key (``device=cpu`` is now ``impl.device=cpu``)."""
    old = [k.lstrip("+") for k in keys if k.lstrip("+") in FLAT_KEYS]
    if old:
        shown = ", ".join(f"{k}= is now {FLAT_KEYS[k]}=" for k in old)
        raise ValueError(
            f"{shown} (GLUE takes the impl group like finetune and predict; see conf/impl/default.yaml)"
        )


def resolve_settings(settings: Mapping | None) -> dict:
    """Defaults overlaid with ``settings`` (a DictConfig or dict; unknown keys such as ``name`` are
    ignored), validated: every bad value is a ValueError naming it and what is accepted (the
    fine-tuning keys by ``FinetuneSettings``, the GLUE ones here)."""
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    settings = dict(settings or {})
    check_flat_keys(settings)
    merged = default_settings()
    merged.update({k: v for k, v in settings.items() if k in merged})
    merged["impl"] = resolve_impl(settings.get("impl"))
    merged["tasks"] = glue_data.check_task_names(merged["tasks"])
    if isinstance(merged["seeds"], bool) or not isinstance(merged["seeds"], int) or merged["seeds"] < 1:
        raise ValueError(f"seeds={merged['seeds']!r} must be an integer >= 1 (fine-tuning runs per task)")
    for key in OPTIONAL_INT:
        if merged[key] is not None and (not isinstance(merged[key], int) or merged[key] < 1):
            raise ValueError(f"{key}={merged[key]!r} must be a positive integer or null (no limit)")
    merged["betas"] = list(FinetuneSettings.from_mapping(merged).betas)  # every fine-tuning key checked
    return merged


def check_model_dir(model_dir) -> Pretrained:
    """The export, read once; a ValueError (before any long work) when ``model_dir`` is not an export."""
    if model_dir in (None, "", "???"):
        raise ValueError("model is required: model=outputs/RUN/model (an exported model folder)")
    if is_external(model_dir):  # a transformers folder or hub id: AutoModel + its own tokenizer
        return load_external(model_dir)
    path = Path(str(model_dir))
    if not path.is_dir():
        raise ValueError(
            f"model={model_dir} is not a folder; give an exported model folder such as outputs/RUN/model "
            "(holding model.safetensors, config.json and tokenizer.json)"
        )
    return load_pretrained(path)


def plan_tasks(settings: Mapping) -> tuple[list[str], dict[str, str]]:
    """Which requested tasks can run, and why the others cannot (local files only; hub tasks are
    tried when loaded). A glue_dir holding none of the requested tasks is a ValueError."""
    names = settings["tasks"]
    if settings["glue_dir"] is None:
        return list(names), {}
    glue_dir = Path(settings["glue_dir"])
    if not glue_dir.is_dir():
        raise ValueError(
            f"glue_dir={glue_dir} is not a folder; give a glue_data folder (CoLA/train.tsv, SST-2/dev.tsv, ...) "
            "or leave glue_dir unset to use the hub dataset nyu-mll/glue"
        )
    run, skipped = [], {}
    for name in names:
        missing = glue_data.missing_files(glue_dir, TASKS[name])
        if missing:
            skipped[name] = "missing " + ", ".join(str(p.relative_to(glue_dir)) for p in missing)
        else:
            run.append(name)
    if not run:
        wanted = "; ".join(
            f"{TASKS[n].title}: " + ", ".join(str(p.relative_to(glue_dir)) for p in glue_data.required_files(glue_dir, TASKS[n]))
            for n in names
        )  # fmt: skip
        raise ValueError(
            f"glue_dir={glue_dir} holds none of the requested tasks {names}; expected the glue_data layout ({wanted})"
        )
    return run, skipped


def load_task(name: str, settings: Mapping) -> TaskData:
    spec = TASKS[name]
    if settings["glue_dir"] is not None:
        data = glue_data.load_local(Path(settings["glue_dir"]), spec)
        if name == "mnli" and glue_data.split_path(Path(settings["glue_dir"]), AX, "diagnostic").is_file():
            data.test.update(glue_data.load_local(Path(settings["glue_dir"]), AX).test)
    else:
        data = glue_data.load_hub(spec, settings["hub_cache_dir"])
        if name == "mnli":
            try:
                data.test.update(glue_data.load_hub(AX, settings["hub_cache_dir"]).test)
            except Exception as err:  # the diagnostic set is optional
                log.warning("AX skipped: the hub diagnostic set could not be loaded (%s)", err)
    if data.train is None or not data.dev:
        raise ValueError(f"{spec.title}: no train or dev split")
    return data


def subsample(split: Split, limit: int | None, seed: int = 0) -> Split:
    """A random subset of ``limit`` rows in file order (files are often sorted by source or genre)."""
    if limit is None or len(split) <= limit:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return split.select(keep.tolist())


def score_split(
    spec: TaskSpec, labels: list, logits: np.ndarray, suffix: str = ""
) -> tuple[dict, dict | None]:
    """Metric values in percent, and (classification) the per-class report and confusion matrix."""
    key = lambda m: f"{m}_{suffix}" if suffix else m  # noqa: E731
    values = score_logits(labels, logits, None if spec.regression else spec.labels)
    if "f1" in spec.metrics:  # binary F1 of the positive class (MRPC, QQP)
        values["f1"] = f1_binary(labels, logits.argmax(axis=-1))
    return {key(m): 100.0 * values[m] for m in spec.metrics}, None if spec.regression else values


def majority_rate(spec: TaskSpec, labels: list) -> float | None:
    if spec.regression or not labels:
        return None
    return 100.0 * np.bincount(labels, minlength=spec.num_labels).max() / len(labels)


def run_seed(
    spec: TaskSpec,
    encoded: dict,
    pretrained: Pretrained,
    settings: FinetuneSettings,
    seed: int,
    runtime: Runtime,
) -> dict:
    """Fine-tune once (the shared job); dev scores, dev reports and test logits of this seed."""
    splits = {("dev", name): dev for name, dev in encoded["dev"].items()}
    splits.update({("test", name): test for name, test in encoded["test"].items()})

    def score(key: tuple, data, logits: np.ndarray):  # test sets have no labels: predicted only
        kind, name = key
        return score_split(spec, data.labels.tolist(), logits, name) if kind == "dev" else None

    job = run_job(pretrained, spec.num_labels, encoded["train"], splits, settings, runtime, seed, score)
    scores, reports = {}, {}
    for (kind, name), result in job.scores.items():
        if kind == "dev":
            scores.update(result[0])
            reports[name] = result[1]
    test_logits = {name: logits for (kind, name), logits in job.logits.items() if kind == "test"}
    return {"seed": seed, "scores": scores, "reports": reports, "test": test_logits, "seconds": job.seconds}


def encode_task(spec: TaskSpec, data: TaskData, tokenizer, settings: Mapping) -> dict:
    max_len = int(settings["max_length"])

    def encode(split: Split, labelled: bool = True):
        labels = split.label_ids(spec) if labelled else None
        return encode_examples(tokenizer, split.texts_a, split.texts_b, labels, max_len, spec.regression)

    train = subsample(data.train, settings["max_train_examples"])
    dev = {name: subsample(split, settings["max_eval_examples"]) for name, split in data.dev.items()}
    test = {}
    if settings["submission"]:
        limit = settings["max_test_examples"]
        test = {
            name: split.select(range(min(len(split), limit or len(split))))
            for name, split in data.test.items()
        }
    return {
        "train": encode(train),
        "dev": {name: encode(split) for name, split in dev.items()},
        "test": {name: encode(split, labelled=False) for name, split in test.items()},
        "test_index": {name: split.index for name, split in test.items()},
    }


def run_task(name: str, pretrained: Pretrained, settings: Mapping, out_dir: Path, runtime: Runtime) -> dict:
    """Fine-tune and score one task over every seed; write its confusion PNGs and submission TSVs."""
    spec, started = TASKS[name], time.perf_counter()
    data = load_task(name, settings)
    encoded = encode_task(spec, data, pretrained.tokenizer, settings)
    examples = {
        "train": len(encoded["train"]), "train_available": len(data.train),
        "dev": {k or "dev": len(v) for k, v in encoded["dev"].items()},
        "dev_available": {k or "dev": len(v) for k, v in data.dev.items()},
        "test": {k: len(v) for k, v in encoded["test"].items()},
    }  # fmt: skip
    log.info("%s: train %d/%d, dev %s, test %s", spec.title, examples["train"], examples["train_available"],
             examples["dev"], examples["test"])  # fmt: skip
    runs, protocol = [], FinetuneSettings.from_mapping(settings)
    for i in range(int(settings["seeds"])):
        runs.append(run_seed(spec, encoded, pretrained, protocol, settings["seed"] + i, runtime))
        shown = ", ".join(f"{k} {v:.2f}" for k, v in runs[-1]["scores"].items())
        log.info("%s seed %d: %s (%.1fs)", spec.title, runs[-1]["seed"], shown, runs[-1]["seconds"])
    keys = list(runs[0]["scores"])
    median = {k: statistics.median(r["scores"][k] for r in runs) for k in keys}
    headline_key = next(iter(spec.headline.values()))
    chosen = min(runs, key=lambda r: abs(r["scores"][headline_key] - median[headline_key]))
    result = {
        "title": spec.title, "metrics": keys, "headline": {c: median[k] for c, k in spec.headline.items()},
        "median": median, "seeds": [{"seed": r["seed"], "scores": r["scores"], "seconds": r["seconds"]} for r in runs],
        "median_seed": chosen["seed"], "examples": examples,
        "majority_baseline": {k or "dev": majority_rate(spec, v.labels.tolist()) for k, v in encoded["dev"].items()},
    }  # fmt: skip
    if not spec.regression:
        result["classes"] = write_confusion(spec, chosen["reports"], out_dir)
    if encoded["test"]:
        result["submission"] = {
            sub: write_submission(out_dir / "submission", sub, spec, encoded["test_index"][sub], logits).name
            for sub, logits in chosen["test"].items()
        }
    result["seconds"] = time.perf_counter() - started
    return result


def write_confusion(spec: TaskSpec, reports: dict, out_dir: Path) -> dict:
    """confusion/TASK.png (MNLI: mnli-m.png, mnli-mm.png) and the per-class report for the JSON."""
    classes = {}
    for split, report in reports.items():
        suffix = {"matched": "-m", "mismatched": "-mm"}.get(split, f"-{split}" if split else "")
        png = plot_confusion(
            report["confusion_matrix"], report["labels"], out_dir / "confusion" / f"{spec.name}{suffix}.png",
            f"{spec.title}{suffix} dev (rows true, columns predicted)",
        )  # fmt: skip
        classes[split or "dev"] = {
            "labels": report["labels"],
            "per_class": report["per_class"],
            "confusion_matrix": report["confusion_matrix"],
            "png": str(png.relative_to(out_dir)),
        }
    return classes


def write_results(out_dir: Path, results: dict) -> None:
    text = json.dumps(results, indent=2, default=float) + "\n"
    atomic_write(out_dir / "results.json", lambda tmp: Path(tmp).write_text(text))


def run_glue(model_dir, settings: Mapping | None = None, out_dir: str | Path | None = None) -> dict:
    """Fine-tune and score ``model_dir`` on the GLUE tasks in ``settings``; returns results.json's content."""
    settings = resolve_settings(settings)
    pretrained = check_model_dir(model_dir)
    positions = pretrained.arch.get("max_position_embeddings")
    if positions and settings["max_length"] > positions:
        raise ValueError(f"max_length={settings['max_length']} exceeds the model's {positions} positions")
    external = getattr(pretrained, "external", False)
    model_dir = Path(str(model_dir)) if external else Path(str(model_dir)).resolve()
    names, skipped = plan_tasks(settings)
    external_out = Path("outputs") / f"external-{slug(model_dir)}" / "glue"  # a run folder of its own
    default_out = external_out if external else model_dir.parent / "glue"
    out_dir = Path(out_dir or settings["out_dir"] or default_out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir / "log.txt"):
        return _run(model_dir, pretrained, settings, names, skipped, out_dir)


def _run(
    model_dir: Path, pretrained: Pretrained, settings: dict, names: list, skipped: dict, out_dir: Path
) -> dict:
    runtime = make_runtime(settings["impl"])
    device, threads = runtime.device, runtime.threads
    for name, reason in skipped.items():
        log.warning("%s skipped: %s", TASKS[name].title, reason)
    results = {
        "model": str(model_dir), "run": out_dir.parent.name, "scale": "percent",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {**settings, "model": str(model_dir)}, "device": str(device), "threads": threads,
        "lr": resolve_lr(settings["lr"], pretrained.arch["hidden_size"]),
        "head": resolve_head(settings["head"], pretrained),
        "arch": pretrained.arch.get("name"), "tasks": {}, "skipped": skipped,
    }  # fmt: skip
    if getattr(pretrained, "external", False):  # ranked in the leaderboard beside the runs, marked external
        results["external"] = {"model": str(model_dir), "family": pretrained.arch["name"],
                               "parameters": pretrained.parameters(), "loader": "transformers AutoModel"}  # fmt: skip
    results["tasks"] = earlier_tasks(out_dir, results["settings"], names)
    results["merged"] = sorted(set(results["tasks"]) - set(names))
    log.info("GLUE on %s (%s, %d threads, lr %.3g, head %s) -> %s; tasks %s", model_dir, device, threads,
             results["lr"], results["head"], out_dir, names)  # fmt: skip
    ran = run_tasks(names, pretrained, settings, out_dir, runtime, results)
    if not ran:
        source = "the hub dataset nyu-mll/glue (needs network access or its HF cache; for local files give glue_dir=PATH)"
        if settings["glue_dir"] is not None:
            source = f"glue_dir={settings['glue_dir']}"
        reasons = sorted(set(skipped.values()))
        why = (
            reasons[0]
            if len(reasons) == 1
            else "; ".join(f"{TASKS[n].title}: {r}" for n, r in skipped.items())
        )
        raise ValueError(f"no GLUE task could be run from {source}: {why}")
    for name in results["tasks"]:
        skipped.pop(name, None)  # skipped now, but an earlier result is kept
    results["submission"] = finish_submission(results, out_dir)
    write_results(out_dir, results)
    log_summary(results, out_dir)
    report_at_end(out_dir)  # the run folder's report.html, now with this GLUE table
    return results


# Settings that change speed or logging but not the scores: results differing only here are merged.
# Of the impl group only the precision counts (device, threads, kernels change speed, never results).
RUNTIME_SETTINGS = ("tasks", "out_dir", "log_every", "hub_cache_dir")


def _scored_settings(settings: Mapping) -> dict:
    scored = {k: v for k, v in settings.items() if k not in RUNTIME_SETTINGS}
    scored["impl"] = {"precision": (settings.get("impl") or {}).get("precision")}
    return scored


def earlier_tasks(out_dir: Path, settings: Mapping, names: list) -> dict:
    """The task entries of an earlier results.json in ``out_dir`` made with the same model and scored
    settings, to merge with this run's tasks; {} (and a log line saying why) when there is none to keep."""
    path = out_dir / "results.json"
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
        old_settings, tasks = earlier["settings"], earlier["tasks"]
        if not isinstance(old_settings, dict) or not isinstance(tasks, dict):
            raise TypeError("settings and tasks must be JSON objects")
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("starting a fresh %s: the earlier one is unreadable (%s)", path, err)
        return {}
    new, old = _scored_settings(settings), _scored_settings(old_settings)
    differ = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
    if differ:
        shown = ", ".join(f"{k}={old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        log.warning("starting a fresh %s: the earlier results (tasks %s) used other settings: %s",
                    path, sorted(tasks), shown)  # fmt: skip
        return {}
    kept = {name: result for name, result in tasks.items() if name in TASKS}
    log.info("merging into %s: keeping the earlier results of %s; rerunning %s",
             path, sorted(set(kept) - set(names)) or "none", names)  # fmt: skip
    return kept


def run_tasks(
    names: list, pretrained: Pretrained, settings: Mapping, out_dir: Path, runtime: Runtime, results: dict
) -> list:
    """Run ``names`` in turn into ``results["tasks"]``; results.json is rewritten after each task that
    produced scores (never before, so a failing run leaves an earlier results.json as it was)."""
    ran, skipped = [], results["skipped"]
    for i, name in enumerate(names):
        try:
            results["tasks"][name] = run_task(name, pretrained, settings, out_dir, runtime)
        except OSError as err:  # hub unreachable or a file vanished: skip, keep going
            # an unreachable hub fails every task alike (after retries): skip the rest at once
            hub_down = settings["glue_dir"] is None and isinstance(err, ConnectionError)
            for rest in names[i:] if hub_down else [name]:
                skipped[rest] = f"could not be loaded: {err}"
                log.warning("%s skipped: %s", TASKS[rest].title, skipped[rest])
            if hub_down:
                break
            continue
        ran.append(name)
        results["headline"] = {c: v for r in results["tasks"].values() for c, v in r["headline"].items()}
        results["average"] = glue_average(results["headline"])
        write_results(out_dir, results)
    return ran


def finish_submission(results: dict, out_dir: Path) -> dict:
    files = sorted(f for r in results["tasks"].values() for f in r.get("submission", {}).values())
    # TSVs no result refers to: an earlier prediction of a task rerun now (e.g. with submission=false)
    # or of a run with other settings. Removed only now, after this run has produced its results.
    for stale in sorted((out_dir / "submission").glob("*.tsv")):
        if stale.name not in files:
            log.info("removing the stale %s (not from these results)", stale)
            stale.unlink()
    info = {"files": files, "zip": None, "skipped": {}}
    if "AX.tsv" not in files:
        info["skipped"]["AX"] = "AX is predicted with the MNLI model; MNLI was not run (or AX is absent)"
        if results["settings"]["submission"]:
            log.info("AX.tsv skipped: %s", info["skipped"]["AX"])
    zipped = zip_submission(out_dir / "submission", out_dir / "submission.zip")
    info["zip"] = zipped.name if zipped else None
    return info


def log_summary(results: dict, out_dir: Path) -> None:
    lines = ["GLUE dev scores (percent, median over seeds):"]
    for r in results["tasks"].values():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in r["median"].items())
        base = [f"{v:.1f}" for v in r["majority_baseline"].values() if v is not None]
        extra = f" | majority class {'/'.join(base)}" if base else ""
        lines.append(f"  {r['title']:<6} {shown}{extra} ({r['seconds']:.0f}s)")
    for name, reason in results["skipped"].items():
        lines.append(f"  {TASKS[name].title:<6} skipped: {reason}")
    lines.append(results["average"]["label"])
    lines.append(f"results: {out_dir / 'results.json'}")
    if results["submission"]["zip"]:
        lines.append(
            f"submission: {out_dir / results['submission']['zip']} ({', '.join(results['submission']['files'])})"
        )
    log.info("\n".join(lines))


def run_glue_from_pretraining(model_dir, eval_cfg: Mapping, impl: Mapping | None = None) -> dict | None:
    """The pretraining run's eval step (keys of conf/eval/glue.yaml); results go to <run>/glue.

    A failure here does not undo the finished pretraining: it is logged with the command
    that retries it, and None is returned.
    """
    settings = {k: v for k, v in dict(eval_cfg).items() if k != "name"}
    settings["impl"] = dict(impl or {})  # the pretraining run's device, precision, threads and kernels
    try:
        return run_glue(model_dir, settings)
    except ValueError as err:
        log.error("GLUE evaluation failed: %s\nretry with: python -m cramming.glue model=%s", err, model_dir)
        return None


@hydra.main(config_path=CONF_PATH, config_name="glue", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    setup_logging(None)
    cli_errors(lambda settings: run_glue(settings.pop("model"), settings), "cramming.glue")(cfg)


def main() -> None:
    """``python -m cramming.glue``: an old flat key (``device=cpu``) fails here with the new name,
    before Hydra would reject it as an unknown key."""
    try:
        check_flat_keys(arg.split("=", 1)[0] for arg in sys.argv[1:] if "=" in arg)
    except ValueError as err:
        fail(err, "cramming.glue")
    hydra_main()
