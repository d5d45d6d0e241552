"""``fastdllm-warmstart bench``: cold Fast-dLLM vs warm starts on the same problems, one run.

1. Load the problems (the shipped tinygsm test split unless ``--data``) and the models.
2. Draft every proposal once with the aux model (timed), and score the aux model alone.
3. Decode every problem in every mode of the preset (baseline, token, token+remask, embed,
   embed+remask by default) for every seed, saving each batch's rows to a JSONL file as it goes;
   ``--resume`` continues an interrupted run from that file.
4. Aggregate accuracy (strict-match and flexible-extract, 95% Wilson interval), mean NFE and its
   reduction vs the baseline, dLLM/aux/wall time and tokens/s; print a table, write JSON (with
   the resolved config, seeds and versions) and optionally a plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import platform
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .config import configs_from_flat
from .engine.cache import make_cache_strategy

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = PRESET_DIR / "bench_default.json"


def read_preset_json(path: Path) -> Any:
    """A preset file's JSON, or a ValueError naming the fix."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"Preset file {path} not found; give an existing --preset JSON file.") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"Preset {path} is not valid JSON: {exc}.") from None


def load_preset(path: Path) -> List[Dict[str, Any]]:
    """A preset is a JSON list of ``{"mode": name, "settings": {flat config keys}}``."""
    modes = read_preset_json(path)
    if not isinstance(modes, list) or not all(isinstance(m, dict) and "mode" in m for m in modes):
        raise ValueError(f"Preset {path} must be a JSON list of {{\"mode\": ..., \"settings\": {{...}}}}.")
    return modes


def versions() -> Dict[str, str]:
    import tokenizers
    import torch
    import transformers

    from . import __version__

    return {"fastdllm_warmstart": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def embedded_file_id(path: Path) -> str:
    """``embedded:NAME@sha256[:16]``: how result files name a data file shipped with the package
    (as models are named ``embedded:tiny-dllm@fingerprint``); user paths are recorded as given."""
    return f"embedded:{path.name}@{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def shuffle_permutation(n: int, seed: int) -> List[int]:
    """A seeded permutation of ``range(n)`` without fixed points (Sattolo's algorithm: one cycle
    through all problems), so with ``--shuffle-proposals`` every problem is warm-started from the
    draft of a *different* problem."""
    if n < 2:
        raise ValueError("--shuffle-proposals needs at least 2 problems; raise --limit.")
    rng = random.Random(seed)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: never leaves an element in place
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def resolved_loop_variants(mode_configs: Dict[str, Any], fast_dllm_path: Optional[str]) -> Dict[str, str]:
    """The upstream loop each mode reproduces (``auto`` resolved against the found checkout)."""
    from .engine import resolve_loop_variant
    from .upstream import find_upstream

    upstream = find_upstream(fast_dllm_path)
    return {mode: resolve_loop_variant(cfg.decode.loop_variant, upstream)
            for mode, cfg in mode_configs.items()}


class StaticProposer:
    """Serves proposals drafted once for the whole run (every mode sees the same ones)."""

    def __init__(self, proposals: Dict[str, Any]):
        self.by_prompt = proposals

    def propose(self, prompts: Sequence[str], gen_length: int):
        return [self.by_prompt[p] for p in prompts]


# -- aggregation ---------------------------------------------------------------------------
def summarize(mode: str, rows: List[Dict[str, Any]], baseline_nfe: Optional[float],
              settings: Dict[str, Any], nfe_floor: Optional[int] = None,
              gen_length: Optional[int] = None) -> Dict[str, Any]:
    """Aggregate one mode's rows. ``nfe_floor``: the fewest forwards an answer can take (one
    per block, or two in the June-2025 cached loops); ``gen_length``: canvas tokens per answer."""
    from .scoring import wilson_interval

    n = len(rows)
    strict = sum(r["strict"] for r in rows)
    flexible = sum(r["flexible"] for r in rows)
    nfe = sum(r["nfe"] for r in rows) / max(n, 1)
    dllm_s = sum(r["dllm_s"] for r in rows)
    warm = settings.get("warm_init", "none") != "none"
    aux_s = sum(r["aux_s"] for r in rows) if warm else 0.0
    tokens = sum(r["gen_tokens"] for r in rows)
    seeds = sorted({r["seed"] for r in rows})
    record = {
        "mode": mode, "settings": settings, "n": n, "seeds": seeds,
        "accuracy": strict / max(n, 1), "accuracy_ci95": wilson_interval(strict, n),
        "accuracy_flexible": flexible / max(n, 1), "accuracy_flexible_ci95": wilson_interval(flexible, n),
        "mean_nfe": nfe,
        # batch forward calls per answer: what the time follows where a call costs about the
        # same whatever its row count (a GPU's small batches)
        "calls_per_answer": (sum(r["model_calls"] for r in rows) / n) if n and all(
            "model_calls" in r for r in rows) else None,
        "nfe_reduction": (None if not baseline_nfe else 1.0 - nfe / baseline_nfe),
        "dllm_s": dllm_s, "aux_s": aux_s, "wall_s": dllm_s + aux_s,
        "tokens_per_s": tokens / max(dllm_s + aux_s, 1e-9),
        "warm_fallbacks": sum(1 for r in rows if r.get("fallback")),
        "injected_mean": sum(r.get("injected", 0) for r in rows) / max(n, 1),
        "revoked_mean": sum(r.get("revoked", 0) for r in rows) / max(n, 1),
        "accepted_mean": sum(r.get("accepted", 0) for r in rows) / max(n, 1),
        "nfe_floor": nfe_floor,
        "nfe_over_floor": (nfe / nfe_floor) if nfe_floor else None,
        # canvas tokens committed per forward (Fast-dLLM's tokens/NFE: gen_length / NFE)
        "tokens_per_forward": (gen_length / nfe) if (gen_length and nfe) else None,
    }
    if len(seeds) > 1:
        record["per_seed"] = {s: summarize(mode, [r for r in rows if r["seed"] == s],
                                           baseline_nfe, settings, nfe_floor, gen_length) for s in seeds}
        for sub in record["per_seed"].values():
            sub.pop("per_seed", None)
    return record


def format_table(records: List[Dict[str, Any]]) -> str:
    header = (f"{'mode':<18} {'n':>5} {'strict acc [95% CI]':>24} {'flex acc':>9} {'mean NFE':>9} "
              f"{'calls':>6} {'floor':>6} {'x floor':>8} {'tok/fwd':>8} {'NFE cut':>8} {'dLLM s':>8} "
              f"{'aux s':>7} {'wall s':>8} {'tok/s':>7} {'speed-up':>8}")
    lines = [header, "-" * len(header)]
    for r in records:
        acc = (f"{r['accuracy']:>7.3f} [{r['accuracy_ci95'][0]:.3f},{r['accuracy_ci95'][1]:.3f}] "
               f"{r['accuracy_flexible']:>9.3f}")
        if r["mode"] == "aux_only":
            lines.append(f"{'aux_only':<18} {r['n']:>5} {acc} {'-':>9} {'-':>6} {'-':>6} {'-':>8} {'-':>8} "
                         f"{'-':>8} {'-':>8} {r['aux_s']:>7.1f} {r['aux_s']:>8.1f} {'-':>7} {'-':>8}")
            continue
        cut = "-" if r["nfe_reduction"] is None else f"{100 * r['nfe_reduction']:.1f}%"
        floor = "-" if r.get("nfe_floor") is None else f"{r['nfe_floor']}"
        over = "-" if r.get("nfe_over_floor") is None else f"{r['nfe_over_floor']:.2f}x"
        tpf = "-" if r.get("tokens_per_forward") is None else f"{r['tokens_per_forward']:.2f}"
        speed = "-" if r.get("wall_speedup") is None else f"{r['wall_speedup']:.2f}x"
        calls = "-" if r.get("calls_per_answer") is None else f"{r['calls_per_answer']:.2f}"
        lines.append(f"{r['mode']:<18} {r['n']:>5} {acc} {r['mean_nfe']:>9.2f} {calls:>6} {floor:>6} {over:>8} "
                     f"{tpf:>8} {cut:>8} {r['dllm_s']:>8.1f} {r['aux_s']:>7.1f} {r['wall_s']:>8.1f} "
                     f"{r['tokens_per_s']:>7.1f} {speed:>8}")
    return "\n".join(lines)


def plot(records: List[Dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'fastdllm-warmstart[plot]'.") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    # Alternate label sides in NFE order so neighbouring points stay readable.
    points = sorted((r for r in records if r["mode"] != "aux_only"), key=lambda r: r["mean_nfe"])
    for i, r in enumerate(points):
        lo, hi = r["accuracy_ci95"]
        ax.errorbar(r["mean_nfe"], r["accuracy"], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]],
                    fmt="o", capsize=3)
        offset = (6, 6) if i % 2 == 0 else (6, -14)
        ax.annotate(r["mode"], (r["mean_nfe"], r["accuracy"]), textcoords="offset points", xytext=offset)
    ax.set_xlabel("mean NFE (forward passes per answer)")
    ax.set_ylabel("accuracy (strict-match)")
    ax.set_title("Accuracy vs NFE per decoding mode")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the run -------------------------------------------------------------------------------
class _Progress:
    """Append-only JSONL of finished rows, keyed by (mode, seed, index), for --resume."""

    def __init__(self, path: Path, fingerprint: str, resume: bool):
        self.path = path
        self.done: Dict[tuple, Dict[str, Any]] = {}
        if path.exists() and resume:
            self._load(fingerprint)
        elif path.exists():
            path.unlink()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")

    def _load(self, fingerprint: str) -> None:
        lines = self.path.read_text().splitlines()
        if not lines or json.loads(lines[0]).get("fingerprint") != fingerprint:
            raise ValueError(f"{self.path} holds partial results of a different configuration "
                             "(problems, model, modes, seeds, --batch-size or --shuffle-proposals); "
                             "resume with the same settings, remove it, or write to another --json path.")
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("Skipping a truncated line in %s (interrupted write).", self.path)
                continue
            self.done[(row["mode"], row["seed"], row["index"])] = row

    def add(self, rows: List[Dict[str, Any]]) -> None:
        with self.path.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
                self.done[(row["mode"], row["seed"], row["index"])] = row
            fh.flush()


def run_bench(args: argparse.Namespace, modes: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Run the bench; ``modes`` (a preset's list) replaces ``--preset`` (the sweep passes its grid)."""
    from tqdm.auto import tqdm

    from .cli import run_config_from_args
    from .runner import WarmStartRunner
    from .scoring import score
    from .tasks.tinygsm import default_split_path, format_prompt, load_jsonl

    # 1. Problems, modes, models.
    data_path = Path(args.data) if args.data else default_split_path("test")
    if not data_path.is_file():
        raise ValueError(f"--data {data_path} does not exist; make one with `fastdllm-warmstart make-data`.")
    problems = load_jsonl(data_path)
    data_id = args.data if args.data else embedded_file_id(data_path)  # no machine layout in results
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError("--limit must be >= 1.")
        problems = problems[:args.limit]
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if modes is None:
        modes = load_preset(Path(args.preset) if args.preset else DEFAULT_PRESET)
    if getattr(args, "modes", None):
        wanted = [m.strip() for m in args.modes.split(",")]
        unknown = sorted(set(wanted) - {m["mode"] for m in modes})
        if unknown:
            raise ValueError(f"--modes {','.join(unknown)} not in the preset; available: "
                             f"{', '.join(m['mode'] for m in modes)}.")
        modes = [m for m in modes if m["mode"] in wanted]
    base_config = run_config_from_args(args)
    flat_base = {k: v for k, v in vars(args).items() if v is not None}
    mode_configs, mode_models = {}, {}
    for m in modes:
        settings = dict(m.get("settings", {}))
        # A mode may decode with another dLLM (e.g. "embedded:tiny-dllm-rcd"); same tokenizer.
        mode_models[m["mode"]] = settings.pop("model", None) or args.model
        merged = {**base_config.to_flat(), **settings}
        mode_configs[m["mode"]] = configs_from_flat(merged)
    prompts = [format_prompt(p["question"]) for p in problems]
    golds = [p["answer"] for p in problems]

    runners: Dict[Any, WarmStartRunner] = {}

    def runner_for(model_path):
        if model_path not in runners:
            runners[model_path] = WarmStartRunner.from_pretrained(
                model_path, base_config, device=args.device, dtype=args.dtype,
                fast_dllm_path=args.fast_dllm_path, threads=args.threads)
        return runners[model_path]

    runner = runner_for(args.model)
    model_ids = {mode: runner_for(path).model_id for mode, path in mode_models.items()}
    shuffle_seed = getattr(args, "shuffle_proposals", None)
    permutation = shuffle_permutation(len(problems), shuffle_seed) if shuffle_seed is not None else None
    loop_variants = resolved_loop_variants(mode_configs, args.fast_dllm_path)
    # Everything that decides an answer: the batch size too, since a model that ignores padding
    # (upstream's LLaDA) decodes a prompt differently next to different neighbours.
    fingerprint = hashlib.sha256(json.dumps({
        "data": data_id, "n": len(problems), "seeds": seeds, "model": runner.model_id, "models": model_ids,
        "batch_size": args.batch_size, "shuffle_proposals": shuffle_seed, "loop_variants": loop_variants,
        "modes": {k: v.to_dict() for k, v in mode_configs.items()}}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    json_path = Path(args.json)
    progress = _Progress(json_path.with_suffix(".partial.jsonl"), fingerprint, args.resume)

    # 2. Proposals once, and the aux model on its own.
    records: List[Dict[str, Any]] = []
    by_prompt: Dict[str, Any] = {}
    static_proposer = None
    aux_total = 0.0
    if any(c.warm.enabled for c in mode_configs.values()):
        warm_cfg = next(c for c in mode_configs.values() if c.warm.enabled)
        aux = runner.proposer_for(warm_cfg.aux)
        if args.quiet and hasattr(aux, "show_progress"):
            aux.show_progress = False
        t0 = time.perf_counter()
        proposals = aux.propose(prompts, warm_cfg.decode.gen_length)
        aux_total = time.perf_counter() - t0
        by_prompt = dict(zip(prompts, proposals))
        aux_rows = [score(p.text or "", g) for p, g in zip(proposals, golds)]
        from .scoring import wilson_interval

        n = len(aux_rows)
        records.append({"mode": "aux_only", "n": n, "model": getattr(aux, "model_id", None),
                        "accuracy": sum(s for s, _ in aux_rows) / n,
                        "accuracy_ci95": wilson_interval(sum(s for s, _ in aux_rows), n),
                        "accuracy_flexible": sum(f for _, f in aux_rows) / n,
                        "aux_s": aux_total, "wall_s": aux_total,
                        "proposal_failures": sum(1 for p in proposals if not p.ok)})
        if permutation is not None:  # each problem gets another problem's draft
            by_prompt = {prompts[i]: proposals[permutation[i]] for i in range(len(prompts))}
        static_proposer = StaticProposer(by_prompt)  # every mode decodes from the same drafts

    # 3. Every mode x seed, saved batch by batch.
    todo = [(m["mode"], s) for m in modes for s in (seeds if mode_configs[m["mode"]].warm.enabled else seeds[:1])]
    total = len(todo) * len(problems)
    bar = tqdm(total=total, desc="bench", unit="answer", disable=args.quiet)
    bar.update(sum(1 for k in progress.done if (k[0], k[1]) in set(todo)))
    for mode, seed in todo:
        cfg = mode_configs[mode]
        cfg = dataclasses.replace(cfg, warm=dataclasses.replace(cfg.warm, seed=seed))
        runner = runner_for(mode_models[mode])
        pending = [i for i in range(len(problems)) if (mode, seed, i) not in progress.done]
        # A continuous batch takes every pending problem in one call (args.batch_size rows at once).
        step = len(pending) if runner.batching(cfg) == "refill" else args.batch_size
        for start in range(0, len(pending), max(step, 1)):
            idx = pending[start:start + step]
            results = runner.generate_batch([prompts[i] for i in idx], cfg, proposer=static_proposer,
                                            batch_size=args.batch_size)
            rows = []
            for i, r in zip(idx, results):
                strict, flexible = score(r.text, golds[i])
                rows.append({"mode": mode, "seed": seed, "index": i, "answer": r.text, "strict": strict,
                             "flexible": flexible, "nfe": r.nfe, "gen_tokens": r.gen_tokens,
                             "dllm_s": r.dllm_seconds, "aux_s": by_prompt[prompts[i]].aux_seconds
                             if prompts[i] in by_prompt else 0.0, "fallback": r.fallback,
                             "injected": r.injected, "revoked": r.revoked, "accepted": r.accepted,
                             "model_calls": r.model_calls})
            progress.add(rows)
            bar.update(len(idx))
    bar.close()

    # 4. Aggregate.
    baseline_nfe = baseline_wall = None
    for m in modes:
        rows = [r for k, r in progress.done.items() if k[0] == m["mode"]]
        cfg = mode_configs[m["mode"]]
        floor = cfg.decode.num_blocks * make_cache_strategy(cfg.decode.cache, loop_variants[m["mode"]]).min_block_steps
        rec = summarize(m["mode"], rows, baseline_nfe, m.get("settings", {}), floor, cfg.decode.gen_length)
        if m["mode"] == modes[0]["mode"] and not mode_configs[m["mode"]].warm.enabled:
            baseline_nfe, baseline_wall = rec["mean_nfe"], rec["wall_s"]
        records.append(rec)
    if baseline_nfe:
        for rec in records:
            if rec["mode"] != "aux_only" and rec.get("mean_nfe") is not None:
                rec["nfe_reduction"] = 1.0 - rec["mean_nfe"] / baseline_nfe
                # end-to-end (dLLM + aux) speed-up over the cold baseline, same problems
                rec["wall_speedup"] = baseline_wall / rec["wall_s"] if rec["wall_s"] > 0 else None
    return {
        # The command as typed (paths as given), from the argv the CLI parsed.
        "command": "fastdllm-warmstart " + " ".join(
            shlex.quote(a) for a in getattr(args, "command_line", sys.argv[1:])),
        "data": data_id, "n_problems": len(problems), "seeds": seeds,
        "model": runners[args.model].model_id, "models": model_ids, "aux_model": records[0].get("model") if records and records[0]["mode"] == "aux_only" else None,
        "batch_size": args.batch_size, "device": str(runners[args.model].device), "threads": _threads(),
        "config": {m["mode"]: mode_configs[m["mode"]].to_dict() for m in modes},
        "loop_variants": {m["mode"]: loop_variants[m["mode"]] for m in modes},
        "shuffle_proposals": (None if permutation is None
                              else {"seed": shuffle_seed, "permutation": permutation}),
        "versions": versions(), "records": records, "fingerprint": fingerprint,
        "flags": {k: v for k, v in flat_base.items() if k not in ("func", "command_line")},
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _cmd_bench(args: argparse.Namespace) -> int:
    result = run_bench(args)
    table = format_table(result["records"])
    print(table)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nResults (with resolved config, seeds, versions): {path}")
    if args.plot:
        plot(result["records"], args.plot)
        print(f"Plot: {args.plot}")
    return 0


def add_data_flags(p, json_default: str = "results/bench.json") -> None:
    """The problem, seed, output and resume flags that ``bench`` and ``sweep`` share."""
    from .cli import add_verbose_flag

    p.add_argument("--data", help="JSONL of {question, answer} (default: shipped tinygsm test split)")
    p.add_argument("--limit", type=int, help="use only the first N problems")
    p.add_argument("--seeds", default="0", help="comma-separated warm-start seeds (default 0)")
    p.add_argument("--json", default=json_default, help=f"output JSON (default {json_default})")
    p.add_argument("--resume", action="store_true", help="continue from the partial results file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shuffle-proposals", type=int, nargs="?", const=0, default=None, metavar="SEED",
                   help="warm-start every problem from the draft of another problem (a seeded "
                        "permutation without fixed points; SEED default 0): bad drafts as input")
    add_verbose_flag(p)


def add_bench_parser(sub) -> None:
    from .cli import add_model_flags, add_run_flags

    p = sub.add_parser("bench", help="baseline vs warm starts on the same problems (the main job)")
    p.add_argument("--preset", help=f"JSON list of modes (default {DEFAULT_PRESET.name})")
    p.add_argument("--modes", help="comma-separated subset of the preset's modes")
    p.add_argument("--plot", help="write an accuracy-vs-NFE PNG here")
    add_data_flags(p)
    add_model_flags(p)
    add_run_flags(p)
    p.set_defaults(func=_cmd_bench)
