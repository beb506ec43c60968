"""Recipes side by side at equal budget, scored on one held-out text: a fair quality instrument.

    python benchmarks/bench_quality.py --name mask budget=2e6tokens arch=small data=local \\
        data.files='[corpus/wikipedia_en/*.txt.gz]' data.validation_files='[corpus/wikipedia_en/valid.txt.gz]' \\
        variants.base='' variants.m40='data.mlm_probability=0.4' --seeds 3 --eval-every-tokens 250000 --no-glue
    python benchmarks/bench_quality.py --name lr ... variants.lr05='train.lr=5e-4' variants.lr2='train.lr=2e-3'
    python benchmarks/bench_quality.py --variants my_variants.yaml --glue-dir glue_data ...
    python benchmarks/bench_quality.py --smoke --glue-dir glue_data data.files='[tiny/train.txt]' ...

Every argument ``KEY=VALUE`` that does not start with ``variants.`` is a Hydra override of
``python -m cramming`` shared by all variants (budget, arch, data, threads...). ``variants.NAME='...'``
names one variant by its extra overrides (space-separated, shell-quoted; ``''`` = the shared settings
alone). A variant's overrides that start with ``glue.`` go to the GLUE fine-tuning instead (e.g.
``variants.wd='glue.weight_decay=0.01'``); variants with the same pretraining overrides share their
pretrained runs. A YAML file given with ``--variants`` holds ``{NAME: [override, ...]}`` (or ``NAME: "a=1 b=2"``).

Budgets: ``budget=2e6tokens`` (equal tokens: sample efficiency, immune to machine load), ``budget=10m``
(equal wall clock) or ``budget=500steps``. Each variant is trained with the product's own code paths
(``python -m cramming``, then ``python -m cramming.glue``) in a subprocess, once per pretraining seed
(``--seeds``), variants alternating within each seed, and scored by

- the held-out text (``cramming/heldout.py``): the raw validation documents (``--heldout-chars`` of them,
  0 = all), tokenized by each run's exported tokenizer, framed as its recipe frames input, masked at
  ``--eval-mask-rate`` for every variant (``--eval-mask-style``, fixed seed), scored on the final
  exported model in fp32: nats per masked token (comparable only within one tokenizer and masking;
  the report says per pair) and bits per character (comparable across tokenizers);
- time to target: with ``--eval-every-tokens N`` the training loop scores the same text every N tokens
  (its time is not charged to the budget); the first training wall clock at which a run reaches the
  target (``--target``, default the ``--baseline`` variant's mean final value of ``--target-metric``);
- tokens seen and tokens/s; GLUE-lite (SST-2, CoLA, STS-B, MRPC, RTE from local TSVs) unless ``--no-glue``.

Every figure is reported as the mean over pretraining seeds with its spread (min..max). Every variant's
overrides are composed and validated before any training starts; a variant that fails later is
reported as failed and the others still run.

``--reuse`` keeps a finished run whose resolved config (the composed Hydra config, run name and folder
aside) and code version (content hash of cramming/, kernels/, conf/ when the run started) match
(``--reuse-across-code``: the config alone; each run's code version stays in the results); GLUE-lite
results whose recorded settings match; and final held-out scores of the same model and text.
Anything else is redone.

Writes ``<out>/quality_<name>.json``, ``.md`` and ``.png`` (held-out bits per character against wall
clock and against tokens; GLUE-lite bars when there are any) with no machine paths in them, and prints
a compact table. ``--smoke`` is a seconds-long profile for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_report as rep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
GLUE_LITE = ("sst2", "cola", "stsb", "mrpc", "rte")
SMOKE_SHARED = [
    "arch=tiny",
    "budget=3steps",
    "data=local",
    "data.vocab_size=1024",
    "train.microbatch_size=4",
    "train.batch_size_start=4",
    "train.batch_size=4",
    "train.validation_batches=2",
    "impl.threads=1",
]
SMOKE_GLUE = {"examples": 24, "eval_examples": 48, "seeds": 1, "epochs": 1, "tasks": ("sst2", "rte")}
RUN_KEYS_IGNORED = ("name", "base_dir")  # where a run lives does not change what it computes


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str], dict[str, list[str]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="quality", help="result files are quality_<name>.{json,md,png}")
    p.add_argument("--variants", type=Path, help="YAML file of {name: [override, ...]}")
    p.add_argument("--seeds", type=int, default=1, help="pretraining seeds per variant (seed=0, 1, ...)")
    p.add_argument("--baseline", help="the variant whose final held-out value is the target (default: first)")
    p.add_argument("--target", type=float, help="held-out value to reach (default: the baseline's final)")
    p.add_argument("--target-metric", choices=sorted(rep.METRICS), default="bpc", help="bpc or nats")
    p.add_argument("--heldout-chars", type=int, default=200_000, help="held-out characters (0 = all)")
    p.add_argument("--eval-mask-rate", type=float, default=0.15, help="one masking rate for all variants")
    p.add_argument("--eval-mask-style", choices=("mask", "bert"), default="mask", help="[MASK] or 80/10/10")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the held-out masking")
    p.add_argument("--eval-every-tokens", type=int, default=0, help="held-out curve every N tokens (0 = off)")
    p.add_argument("--eval-batch-size", type=int, default=32, help="held-out sequences per forward pass")
    p.add_argument("--glue-dir", type=Path, help="local glue_data folder (CoLA/train.tsv, ...)")
    p.add_argument("--no-glue", action="store_true", help="held-out scores only")
    p.add_argument("--glue-examples", type=int, default=2000, help="max training examples per task")
    p.add_argument("--glue-seeds", type=int, default=3, help="fine-tuning seeds per task (median)")
    p.add_argument("--glue-eval-examples", type=int, default=None, help="max dev examples per task")
    p.add_argument("--glue-epochs", type=int, default=None, help="fine-tuning epochs (default: GLUE's own)")
    p.add_argument("--glue-tasks", default=",".join(GLUE_LITE), help="comma-separated GLUE task names")
    p.add_argument("--runs-dir", type=Path, default=Path("outputs/quality"), help="where the runs go")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON/MD/PNG results")
    p.add_argument("--smoke", action="store_true", help="tiny model, 3 steps, 2 small GLUE tasks")
    p.add_argument("--reuse", action="store_true", help="keep runs of the same resolved config and code")
    p.add_argument("--reuse-across-code", action="store_true", help="with --reuse: ignore code changes")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a run counts as failed")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE shared overrides and variants.NAME='...'")
    args = p.parse_intermixed_args(argv)  # options may come between the overrides
    shared, variants = split_overrides(args.overrides)
    if args.variants:
        variants.update(read_variant_file(args.variants))
    if not variants:
        p.error("no variants: pass variants.NAME='overrides' or --variants FILE.yaml")
    if args.seeds < 1 or args.glue_seeds < 1:
        p.error(f"--seeds and --glue-seeds must be at least 1 (got {args.seeds}, {args.glue_seeds})")
    if not args.no_glue and args.glue_dir is None:
        p.error("--glue-dir is required for GLUE-lite (or pass --no-glue)")
    args.baseline = args.baseline or next(iter(variants))
    if args.baseline not in variants:
        p.error(f"--baseline {args.baseline!r} is not a variant; variants: {list(variants)}")
    if not 0.0 < args.eval_mask_rate < 1.0 or args.heldout_chars < 0 or args.eval_every_tokens < 0:
        p.error("--eval-mask-rate must lie in (0, 1); --heldout-chars and --eval-every-tokens must be >= 0")
    if args.smoke:
        shared = SMOKE_SHARED + shared
    return args, shared, variants


def split_overrides(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Shared overrides and {variant: overrides} from the command line."""
    shared, variants = [], {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bench_quality: error: {item!r} is not KEY=VALUE")
        if key.startswith("variants."):
            name = key.removeprefix("variants.")
            check_variant_name(name)
            variants[name] = shlex.split(value)
        else:
            shared.append(item)
    return shared, variants


def check_variant_name(name: str) -> None:
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"bench_quality: error: variant name {name!r} must be letters, digits, - or _")


def read_variant_file(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise SystemExit(f"bench_quality: error: variants file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise SystemExit(f"bench_quality: error: {path} must map variant names to override lists")
    variants = {}
    for name, value in data.items():
        check_variant_name(str(name))
        if value is None:
            value = []
        elif isinstance(value, str):
            value = shlex.split(value)
        elif not isinstance(value, list):
            raise SystemExit(f"bench_quality: error: variant {name!r} in {path}: expected a list or a string")
        variants[str(name)] = [str(v) for v in value]
    return variants


def split_variant(extra: list[str]) -> tuple[list[str], list[str]]:
    """(pretraining overrides, GLUE overrides without their ``glue.`` prefix)."""
    glue = [o.removeprefix("glue.") for o in extra if o.startswith("glue.")]
    return [o for o in extra if not o.startswith("glue.")], glue


def heldout_overrides(args) -> list[str]:
    """The loop's periodic held-out scorer set like the bench's final one (same text and masking)."""
    return [f"train.heldout.every_tokens={args.eval_every_tokens}", f"train.heldout.chars={args.heldout_chars}",
            f"train.heldout.mask_rate={args.eval_mask_rate}", f"train.heldout.mask_style={args.eval_mask_style}",
            f"train.heldout.seed={args.eval_seed}", f"train.heldout.batch_size={args.eval_batch_size}"]  # fmt: skip


def plan_runs(args, shared: list[str], variants: dict[str, list[str]]) -> dict[tuple, dict]:
    """Compose and validate every run's config before anything trains (a typo fails in seconds).

    Returns {(pretraining overrides, seed): {"cmd", "name", "config"}}; ``config`` is the resolved
    config the run will see, which keys ``--reuse``.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cramming.config import CONF_DIR, validate_run

    plans, problems = {}, []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, extra in variants.items():
            pretrain, glue = split_variant(extra)
            try:
                compose("glue", overrides=[*glue, "model=check"])
                for seed in range(args.seeds):
                    if (tuple(pretrain), seed) in plans:  # differs from an earlier variant in glue.* only
                        continue
                    run = f"{args.name}_{name}_s{seed}"
                    overrides = [*shared, *heldout_overrides(args), *pretrain, f"seed={seed}", f"name={run}",
                                 f"base_dir={args.runs_dir}"]  # fmt: skip
                    cfg = OmegaConf.to_container(compose("pretrain", overrides=overrides), resolve=True)
                    validate_run(cfg)
                    cmd = [sys.executable, "-m", "cramming", *overrides]
                    plans[(tuple(pretrain), seed)] = {"cmd": cmd, "name": run, "config": cfg}
            except Exception as err:  # Hydra's and ours: each names the bad key or value
                problems.append(f"variant {name!r} ({' '.join(extra) or 'shared settings'}): {err}")
    if problems:
        raise SystemExit(
            "bench_quality: error: bad variants, nothing was trained:\n  " + "\n  ".join(problems)
        )
    return plans


def code_version() -> dict:
    """Git revision (for the record) and a content hash of cramming/, kernels/ and conf/ (the key)."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True).stdout.strip()

    files = git("ls-files", "-co", "--exclude-standard", "--", "cramming", "kernels", "conf").splitlines()
    if not files:  # not a git checkout: every source file
        files = sorted(str(p.relative_to(REPO)) for d in ("cramming", "kernels", "conf")
                       for p in (REPO / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts)  # fmt: skip
    digest = hashlib.sha256()
    for name in sorted(files):
        path = REPO / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"revision": git("rev-parse", "--short", "HEAD") or None, "sources": digest.hexdigest()[:16]}


def config_key(config: dict) -> str:
    """What --reuse compares first: the resolved config, minus the run's name and folder."""
    kept = {k: v for k, v in config.items() if k not in RUN_KEYS_IGNORED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_logged(cmd: list[str], log_path: Path, timeout: float | None, label: str) -> tuple[bool, str]:
    """Run a child command, echoing its progress lines with a label; (ok, last error line)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    last = ""
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        started = time.monotonic()
        for line in proc.stdout:
            log_file.write(line)
            line = line.rstrip()
            if line and not line.startswith("Set the environment variable HYDRA_FULL_ERROR"):
                last = line
            if any(w in line for w in (" step ", "held-out", "budget spent")) or "error" in line.lower():
                print(f"  [{label}] {line}", flush=True)
            if timeout and time.monotonic() - started > timeout:
                proc.kill()
                return False, f"timed out after {timeout:.0f} s"
        code = proc.wait()
    return code == 0, "" if code == 0 else last


def reusable(run_dir: Path, key: str, code: dict | None) -> dict | None:
    """The stamp of a finished earlier run made from the same resolved config and (unless ``code`` is
    None: --reuse-across-code) the same code; None when there is no such run."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        stamp = json.loads((run_dir / "bench_quality.json").read_text())
        same_code = code is None or stamp["code"]["sources"] == code["sources"]
        return stamp if summary.get("finished") and stamp["config_key"] == key and same_code else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def pretrain_run(args, plan: dict, name: str, extra: list[str], seed: int) -> dict:
    """Train (or reuse) one run; the record of what it did, without its final held-out score yet."""
    run_dir, key, code = args.runs_dir / plan["name"], config_key(plan["config"]), code_version()
    record = {"variant": name, "seed": seed, "run": plan["name"], "overrides": extra, "config_key": key,
              "ok": True, "_dir": run_dir, "_data": plan["config"]["data"], "_impl": plan["config"]["impl"]}  # fmt: skip
    stamp = reusable(run_dir, key, None if args.reuse_across_code else code) if args.reuse else None
    if stamp:
        print(f"== {name} seed {seed}: reusing the finished run {plan['name']} (same config)", flush=True)
        record["code"] = stamp["code"]  # the code that made it
    else:
        print(f"== {name} seed {seed}: pretraining ({' '.join(extra) or 'shared settings'})", flush=True)
        if run_dir.exists():  # an unfinished or different earlier run: start afresh
            shutil.rmtree(run_dir)
        log_path = run_dir.parent / f"{plan['name']}.pretrain.log"
        ok, error = run_logged(plan["cmd"], log_path, args.timeout, f"{name}/{seed}")
        if not ok:
            return {**record, "ok": False, "error": error or "pretraining failed (see its log)"}
        record["code"] = code
        if run_dir.is_dir():
            stamp = {"config_key": key, "code": code}
            (run_dir / "bench_quality.json").write_text(json.dumps(stamp) + "\n")
    if not (run_dir / "summary.json").is_file():  # e.g. stopped early on purpose: no finished model
        return {**record, "ok": False, "error": "the run ended without summary.json (not finished)"}
    summary = json.loads((run_dir / "summary.json").read_text())
    for k in ("valid_mlm_loss", "final_mlm_loss", "steps", "tokens_seen", "tokens_per_s", "elapsed_s"):
        record[k] = summary.get(k)
    record["curve"] = read_curves(run_dir / "metrics.jsonl")
    return record


def read_curves(path: Path) -> dict[str, list]:
    """Held-out [elapsed_s, tokens, nats, bpc] and training [elapsed_s, tokens, loss] rows of a run."""
    curve = {"heldout": [], "train": []}
    if not path.is_file():
        return curve
    for line in path.read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if r.get("kind") == "heldout":
            curve["heldout"].append([r["elapsed_s"], r["tokens"], r["loss"], r["bits_per_char"]])
        elif r.get("kind") == "train" and r.get("loss") is not None:
            curve["train"].append([r.get("elapsed_s"), r.get("tokens"), r["loss"]])
    return curve


def heldout_settings(args) -> dict:
    return {"mask_rate": args.eval_mask_rate, "mask_style": args.eval_mask_style, "seed": args.eval_seed}


def score_final(args, record: dict, documents: list[str]) -> None:
    """The final exported model on the held-out text (fp32, eval mode); cached beside the run."""
    from cramming.export.folder import load_model, read_tokenizer
    from cramming.files import file_sha256
    from cramming.heldout import build_heldout, score

    model_dir = record["_dir"] / "model"
    tokenizer = read_tokenizer(model_dir)
    heldout = build_heldout(documents, tokenizer, record["_data"], heldout_settings(args))
    key = {"model": file_sha256(model_dir / "model.safetensors"), **heldout.info}
    cache = record["_dir"] / "bench_quality_heldout.json"
    try:
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            record["heldout"] = cached["result"]
    except (OSError, ValueError, KeyError):
        pass
    if "heldout" not in record:
        device = scoring_device(record["_impl"])
        result = score(load_model(model_dir, device), heldout, args.eval_batch_size, device)
        cache.write_text(json.dumps({"key": key, "result": result}) + "\n")
        record["heldout"] = result
    h = record["heldout"]
    print(f"== {record['variant']} seed {record['seed']}: held-out {h['nats_per_masked_token']:.4f} nats/masked "
          f"token, {h['bits_per_char']:.4f} bits/char", flush=True)  # fmt: skip
    final = [record["elapsed_s"], record["tokens_seen"], h["nats_per_masked_token"], h["bits_per_char"]]
    curve = record["curve"]["heldout"]
    if curve and curve[-1][1] == final[1]:  # the loop scored the last step too: keep the export's figure
        curve[-1] = final
    else:
        curve.append(final)


def glue_lite(args, record: dict, glue: dict, overrides: list[str]) -> None:
    """Fine-tune the run's export on the GLUE-lite tasks; adds per-task headline numbers and their mean."""
    run_dir = record["_dir"]
    out_dir = run_dir / f"glue_lite_{record['variant']}"
    tasks = "[" + ",".join(glue["tasks"]) + "]"
    cmd = [sys.executable, "-m", "cramming.glue", f"model={run_dir / 'model'}", f"glue_dir={args.glue_dir}",
           f"tasks={tasks}", f"max_train_examples={glue['examples']}", f"seeds={glue['seeds']}",
           "submission=false", f"out_dir={out_dir}"]  # fmt: skip
    if glue["epochs"]:
        cmd.append(f"epochs={glue['epochs']}")
    if glue["eval_examples"]:
        cmd.append(f"max_eval_examples={glue['eval_examples']}")
    cmd += [o for o in args.shared if o.startswith("impl.")]  # the same device, threads and kernels
    cmd += overrides
    label = f"{record['variant']}/{record['seed']} glue"
    if args.reuse and glue_done_with(out_dir / "results.json", cmd[3:]):
        print(f"== {label}: reusing its results.json", flush=True)
        ok, error = True, ""
    else:
        ok, error = run_logged(cmd, out_dir.with_suffix(".log"), args.timeout, label)
    if not ok:
        record["ok"], record["error"] = False, f"GLUE-lite failed: {error}"
        return
    results = json.loads((out_dir / "results.json").read_text())
    record["glue"] = {col: v for t in results["tasks"].values() for col, v in t["headline"].items()}
    record["glue_average"] = results["average"]["value"]


def glue_done_with(path: Path, overrides: list[str]) -> bool:
    """An earlier GLUE-lite results.json whose recorded settings match every ``key=value`` we would pass."""
    try:
        settings = json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError):
        return False
    for item in overrides:
        key, _, value = item.partition("=")
        node = settings
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        wanted = yaml.safe_load(value)
        if key in ("model", "glue_dir", "out_dir"):
            node, wanted = str(Path(str(node)).resolve()), str(Path(value).resolve())
        if node != wanted and str(node) != str(wanted):
            return False
    return True


def read_heldout_text(args, plans: dict, variants: dict[str, list[str]]) -> list[str]:
    """The one held-out text: the validation documents of the baseline's data config."""
    from cramming.heldout import heldout_documents

    baseline = plans[(tuple(split_variant(variants[args.baseline])[0]), 0)]
    docs = heldout_documents(baseline["config"]["data"], args.heldout_chars)
    if not docs:
        raise SystemExit(
            "bench_quality: error: no held-out text: give data.validation_files=[...] (or a hub source with "
            "data.validation_split_documents > 0); a pre-tokenized corpus has no raw text to score"
        )
    return docs


def scoring_device(impl: dict) -> str:
    """The run's runtime (its device, a GPU when it trained on one; its threads and kernels) for scoring
    its export in this process; scoring runs eager, so the kernel choice is the uncompiled one."""
    from cramming.runtime import make_runtime

    return str(make_runtime({**impl, "compile": False}).device)


def public(record: dict) -> dict:
    """A record for the result files: no private fields, no machine paths."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    if "error" in out:
        out["error"] = rep.clean(out["error"])
    out["overrides"] = [rep.clean(o) for o in out["overrides"]]
    return out


def run_all(args, variants: dict[str, list[str]], plans: dict, glue: dict) -> list[dict]:
    """Seed-major (variants alternate, so an early stop still leaves every variant measured)."""
    documents = read_heldout_text(args, plans, variants)
    records, pretrained = [], {}
    for seed in range(args.seeds):
        for name, extra in variants.items():
            pretrain, glue_overrides = split_variant(extra)
            key = (tuple(pretrain), seed)
            if key not in pretrained:
                pretrained[key] = pretrain_run(args, plans[key], name, pretrain, seed)
                if pretrained[key]["ok"]:
                    try:
                        score_final(args, pretrained[key], documents)
                    except Exception as err:  # a broken export fails this run, not the benchmark
                        pretrained[key].update(ok=False, error=f"held-out scoring failed: {err}")
            record = {**pretrained[key], "variant": name, "overrides": extra}
            record["curve"] = pretrained[key].get("curve")
            if record["ok"] and not args.no_glue:
                glue_lite(args, record, glue, glue_overrides)
            records.append(record)
    return records


def main(argv: list[str] | None = None) -> dict:
    args, shared, variants = parse_args(argv)
    args.shared = shared
    plans = plan_runs(args, shared, variants)
    glue = {"examples": args.glue_examples, "eval_examples": args.glue_eval_examples,
            "seeds": args.glue_seeds, "epochs": args.glue_epochs,
            "tasks": tuple(t.strip() for t in args.glue_tasks.split(",") if t.strip())}  # fmt: skip
    if args.smoke:
        glue = dict(SMOKE_GLUE)
    records = run_all(args, variants, plans, glue)
    target = rep.add_time_to_target(records, args.baseline, args.target_metric, args.target)
    target["source"] = "given" if args.target is not None else f"the mean final value of {args.baseline}"
    table = rep.summarize(records, variants)
    heldout = {"chars": args.heldout_chars, "every_tokens": args.eval_every_tokens, **heldout_settings(args)}
    report = {"name": args.name, "shared": [rep.clean(o) for o in shared], "seeds": args.seeds,
              "glue": None if args.no_glue else glue, "heldout": heldout, "target": target,
              "code": code_version(), "variants": table,
              "glue_columns": sorted({c for row in table.values() for c in row["glue"]}),
              "comparability": rep.comparability(records), "runs": [public(r) for r in records]}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"quality_{args.name}"
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2, default=list) + "\n")
    Path(f"{stem}.md").write_text(rep.to_markdown(report))
    rep.plot(report, records, Path(f"{stem}.png"))
    print(rep.to_markdown(report))
    print(rep.compact_table(report))
    print(f"wrote quality_{args.name}.json, .md and .png in {args.out}")
    return report


if __name__ == "__main__":
    main()
