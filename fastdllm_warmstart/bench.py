"""``fastdllm-warmstart bench``: cold Fast-dLLM vs warm starts on the same problems, one run.

1. Load the problems (the shipped tinygsm test split unless ``data``) and the models; every input
   file is checked first (:mod:`fastdllm_warmstart.input_files`).
2. Draft every proposal once with the aux model (timed), and score the aux model alone.
3. Decode every problem in every mode of the preset (baseline, token, token+remask, embed,
   embed+remask by default) for every seed, saving each answer's row to a JSONL store as soon as
   it is complete (a static batch's at its end, a continuous batch's as each row hands it in);
   ``resume`` continues an interrupted run from that store.
4. With ``repeats`` N > 1, time N more passes of every mode (its first seed), interleaved: pass 1
   of every mode, then pass 2 of every mode, and so on, so that a slow spell of a shared machine
   falls on every mode alike; each pass's answers must match the saved rows (a warning if not).
5. Aggregate accuracy (strict-match and flexible-extract, 95% Wilson interval), mean NFE and its
   reduction vs the baseline, dLLM/aux/wall time and tokens/s, and the timed passes' medians
   with their spread and the paired speed-ups (:mod:`.bench_report`); return them with the
   resolved config, seeds and versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .config import RunConfig, configs_from_flat
from .engine.cache import make_cache_strategy
from .engine.protocol import protocol_for
from .input_files import load_bench_preset
from .tasks.tinygsm_files import load_jsonl as load_problems
from .jsonl_store import JsonlStore

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = PRESET_DIR / "bench_default.json"


@dataclass(frozen=True)
class BenchSettings:
    """What a bench run decodes, with what, and where its rows go (the ``bench`` flags, typed)."""

    run: RunConfig = field(default_factory=RunConfig)  # every mode's settings go over this config
    data: Optional[str] = None           # JSONL of {question, answer}; None: the shipped test split
    limit: Optional[int] = None          # only the first N problems
    seeds: Tuple[int, ...] = (0,)        # warm-start seeds (cold modes run the first only)
    json_path: str = "results/bench.json"  # the result file; rows go to <stem>.partial.jsonl
    resume: bool = False                 # continue from the partial rows
    quiet: bool = False                  # no progress bars
    shuffle_proposals: Optional[int] = None  # seed of a permutation giving each problem another's draft
    preset: Optional[str] = None         # JSON list of modes; None: the shipped default
    modes: Optional[Tuple[str, ...]] = None  # a subset of the preset's modes
    model: Optional[str] = None          # the dLLM; None: the embedded one
    fast_dllm_path: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    threads: Any = "auto"
    # Timed passes per mode after the rows are decoded, interleaved across modes; 1: the rows'
    # own decode is the only timing (one run's ratio is noise on a shared machine: take 5 or more).
    repeats: int = 1
    command_line: Optional[Tuple[str, ...]] = None  # as typed, for the result's "command"
    flags: Mapping[str, Any] = field(default_factory=dict)  # the flags given, recorded as they were

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1.")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size} must be >= 1.")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed, e.g. --seeds 0,1,2.")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"--repeats {self.repeats} must be a whole number >= 1 (timed passes per "
                             "mode; e.g. --repeats 5).")


def load_preset(path: Path) -> List[Dict[str, Any]]:
    """A preset is a JSON list of ``{"mode": name, "settings": {flat config keys}}`` (checked)."""
    return load_bench_preset(path)


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


class _Progress:
    """The finished rows, keyed by (mode, seed, index), in a :class:`JsonlStore` for ``resume``.

    The store's first record is the run's fingerprint; a row cut off by a crash is skipped on
    reading and the next append starts a fresh line, so every row written after it reads back.
    """

    def __init__(self, path: Path, fingerprint: str, resume: bool):
        self.store = JsonlStore(path, label="bench progress")
        self.done: Dict[tuple, Dict[str, Any]] = {}
        records = self.store.read() if resume else []
        if not resume:
            self.store.clear()
        elif records and records[0].get("fingerprint") != fingerprint:
            raise ValueError(f"{path} holds partial results of a different configuration "
                             "(problems, model, modes, seeds, --batch-size or --shuffle-proposals); "
                             "resume with the same settings, remove it, or write to another --json path.")
        if not records:
            self.store.clear()
            self.store.append({"fingerprint": fingerprint})
        for row in records[1:]:
            self.done[(row["mode"], row["seed"], row["index"])] = row

    def add(self, rows: List[Dict[str, Any]]) -> None:
        self.store.extend(rows)
        for row in rows:
            self.done[(row["mode"], row["seed"], row["index"])] = row


def select_modes(settings: BenchSettings, modes: Optional[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """The preset's modes (``modes`` given by the caller, e.g. the sweep's grid, wins), narrowed
    to ``settings.modes``."""
    if modes is None:
        modes = load_preset(Path(settings.preset) if settings.preset else DEFAULT_PRESET)
    if settings.modes:
        wanted = [m.strip() for m in settings.modes]
        unknown = sorted(set(wanted) - {m["mode"] for m in modes})
        if unknown:
            raise ValueError(f"--modes {','.join(unknown)} not in the preset; available: "
                             f"{', '.join(m['mode'] for m in modes)}.")
        modes = [m for m in modes if m["mode"] in wanted]
    return modes


def _problems(settings: BenchSettings) -> Tuple[List[Dict[str, Any]], str]:
    from .tasks.tinygsm import default_split_path

    data_path = Path(settings.data) if settings.data else default_split_path("test")
    if not data_path.is_file():
        raise ValueError(f"--data {data_path} does not exist; make one with `fastdllm-warmstart make-data`.")
    problems = load_problems(data_path)
    data_id = settings.data if settings.data else embedded_file_id(data_path)  # no machine layout in results
    if settings.limit is not None:
        problems = problems[:settings.limit]
    return problems, data_id


def _batches(runner: Any, cfg: RunConfig, indices: Sequence[int], batch_size: int) -> List[List[int]]:
    """The engine calls that decode ``indices``: ``batch_size`` problems a call in a static batch,
    all of them in one call with continuous batching (which keeps ``batch_size`` rows in flight)."""
    indices = list(indices)
    step = max(len(indices), 1) if runner.batching(cfg) == "refill" else batch_size
    return [indices[start:start + step] for start in range(0, len(indices), step)]


def _timed_pass(runner: Any, cfg: RunConfig, prompts: List[str], proposer: Any,
                batch_size: int) -> Tuple[float, float, List[Tuple[List[int], int, str]]]:
    """Decode every prompt once as the rows were decoded: (dLLM seconds, process CPU seconds,
    each answer's (token ids, NFE, text)). CPU time counts every thread of the process, so it
    exceeds the dLLM time when torch computes on several cores."""
    dllm_s = cpu_s = 0.0
    answers: List[Tuple[List[int], int, str]] = []
    for idx in _batches(runner, cfg, range(len(prompts)), batch_size):
        cpu0 = time.process_time()
        results = runner.generate_batch([prompts[i] for i in idx], cfg, proposer=proposer,
                                        batch_size=batch_size)
        cpu_s += time.process_time() - cpu0
        dllm_s += sum(r.dllm_seconds for r in results)
        answers.extend((list(r.token_ids), r.nfe, r.text) for r in results)
    return dllm_s, cpu_s, answers


def _save_rows(progress: "_Progress", mode: str, seed: int, indices: Sequence[int], golds: Sequence[str],
               aux_tokens: Sequence[int], done: List[Tuple[int, Any]]) -> None:
    """Score and save answers as they complete (``done``: (position in ``indices``, result) pairs);
    ``aux_tokens``: the tokens the aux wrote for each problem's draft (AUP with the aux counted)."""
    from .scoring import score

    rows = []
    for j, r in done:
        i = indices[j]
        strict, flexible = score(r.text, golds[i])
        rows.append({"mode": mode, "seed": seed, "index": i, "strict": strict, "flexible": flexible,
                     "aux_tokens": aux_tokens[i], **r.to_row()})
    progress.add(rows)


def _aux_record(proposals: List[Any], golds: List[str], seconds: float, model_id: Optional[str]) -> Dict[str, Any]:
    """The aux model on its own: its drafts scored as answers."""
    from .scoring import score, wilson_interval

    rows = [score(p.text or "", g) for p, g in zip(proposals, golds)]
    n = len(rows)
    return {"mode": "aux_only", "n": n, "model": model_id,
            "accuracy": sum(s for s, _ in rows) / n,
            "accuracy_ci95": wilson_interval(sum(s for s, _ in rows), n),
            "accuracy_flexible": sum(f for _, f in rows) / n,
            "aux_s": seconds, "wall_s": seconds,
            "proposal_failures": sum(1 for p in proposals if not p.ok)}


def run_bench(settings: BenchSettings, modes: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Run the bench; ``modes`` (a preset's list) replaces ``settings.preset`` (the sweep passes its grid)."""
    from tqdm.auto import tqdm

    from .bench_report import summarize, summarize_timing
    from .lineage import drop_stale_modes
    from .runner import WarmStartRunner
    from .tasks.tinygsm import format_prompt

    # 1. Problems, modes, models.
    default_table = modes is None and settings.preset is None and not settings.modes
    problems, data_id = _problems(settings)
    seeds = list(settings.seeds)
    modes = select_modes(settings, modes)
    base_config = settings.run
    mode_configs, mode_models = {}, {}
    for m in modes:
        mode_settings = dict(m.get("settings", {}))
        # A mode may decode with another dLLM (e.g. "embedded:tiny-dllm-rcd"); same tokenizer.
        mode_models[m["mode"]] = mode_settings.pop("model", None) or settings.model
        mode_configs[m["mode"]] = configs_from_flat({**base_config.to_flat(), **mode_settings})
    prompts = [format_prompt(p["question"]) for p in problems]
    golds = [p["answer"] for p in problems]

    runners: Dict[Any, WarmStartRunner] = {}

    def runner_for(model_path):
        if model_path not in runners:
            runners[model_path] = WarmStartRunner.from_pretrained(
                model_path, base_config, device=settings.device, dtype=settings.dtype,
                fast_dllm_path=settings.fast_dllm_path, threads=settings.threads)
        return runners[model_path]

    runner = runner_for(settings.model)
    # A mode whose model was trained from another base than this table's: not under its name.
    modes = drop_stale_modes(modes, mode_models, settings.model, runner.model_id,
                             default_table=default_table)
    # each mode's model-dependent defaults made explicit (the auto remask rule), as it decodes
    mode_configs = {m["mode"]: runner_for(mode_models[m["mode"]]).resolve(mode_configs[m["mode"]]) for m in modes}
    model_ids = {mode: runner_for(mode_models[mode]).model_id for mode in mode_configs}
    shuffle_seed = settings.shuffle_proposals
    permutation = shuffle_permutation(len(problems), shuffle_seed) if shuffle_seed is not None else None
    loop_variants = resolved_loop_variants(mode_configs, settings.fast_dllm_path)
    # Everything that decides an answer: the batch size too, since a model that ignores padding
    # (upstream's LLaDA) decodes a prompt differently next to different neighbours.
    fingerprint = hashlib.sha256(json.dumps({
        "data": data_id, "n": len(problems), "seeds": seeds, "model": runner.model_id, "models": model_ids,
        "batch_size": settings.batch_size, "shuffle_proposals": shuffle_seed, "loop_variants": loop_variants,
        "modes": {k: v.to_dict() for k, v in mode_configs.items()}}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    progress = _Progress(Path(settings.json_path).with_suffix(".partial.jsonl"), fingerprint, settings.resume)

    # 2. Proposals once, and the aux model on its own.
    records: List[Dict[str, Any]] = []
    by_prompt: Dict[str, Any] = {}
    static_proposer = None
    if any(c.warm.enabled for c in mode_configs.values()):
        warm_cfg = next(c for c in mode_configs.values() if c.warm.enabled)
        aux = runner.proposer_for(warm_cfg.aux)
        if settings.quiet and hasattr(aux, "show_progress"):
            aux.show_progress = False
        t0 = time.perf_counter()
        proposals = aux.propose(prompts, warm_cfg.decode.gen_length)
        records.append(_aux_record(proposals, golds, time.perf_counter() - t0, getattr(aux, "model_id", None)))
        by_prompt = dict(zip(prompts, proposals))
        if permutation is not None:  # each problem gets another problem's draft
            by_prompt = {prompts[i]: proposals[permutation[i]] for i in range(len(prompts))}
        static_proposer = StaticProposer(by_prompt)  # every mode decodes from the same drafts
    aux_tokens = [getattr(by_prompt.get(p), "aux_tokens", 0) or 0 for p in prompts]

    # 3. Every mode x seed, saved answer by answer.
    todo = [(m["mode"], s) for m in modes for s in (seeds if mode_configs[m["mode"]].warm.enabled else seeds[:1])]
    bar = tqdm(total=len(todo) * len(problems), desc="bench", unit="answer", disable=settings.quiet)
    bar.update(sum(1 for k in progress.done if (k[0], k[1]) in set(todo)))
    for mode, seed in todo:
        cfg = mode_configs[mode]
        cfg = dataclasses.replace(cfg, warm=dataclasses.replace(cfg.warm, seed=seed))
        runner = runner_for(mode_models[mode])
        pending = [i for i in range(len(problems)) if (mode, seed, i) not in progress.done]
        for idx in _batches(runner, cfg, pending, settings.batch_size):
            # Rows are saved as answers complete: with continuous batching while the call runs.
            runner.generate_batch([prompts[i] for i in idx], cfg, proposer=static_proposer,
                                  batch_size=settings.batch_size, progress=bar,
                                  on_results=partial(_save_rows, progress, mode, seed, idx, golds,
                                                     aux_tokens))
    bar.close()

    # 4. Timed passes, interleaved across modes.
    timed_passes = _time_modes(settings, modes, mode_configs, seeds[0], prompts, progress,
                               lambda mode: runner_for(mode_models[mode]), static_proposer)

    # 5. Aggregate.
    baseline_nfe = baseline_wall = baseline_passes = None
    for m in modes:
        rows = [r for k, r in progress.done.items() if k[0] == m["mode"]]
        cfg = mode_configs[m["mode"]]
        per_block = make_cache_strategy(  # a Dream-protocol model's blocks cost one more cached forward
            cfg.decode.cache, loop_variants[m["mode"]], min_cached_block_steps=protocol_for(
                runner_for(mode_models[m["mode"]]).model).min_cached_block_steps).min_block_steps
        floor = cfg.decode.num_blocks * per_block
        rec = summarize(m["mode"], rows, baseline_nfe, m.get("settings", {}), floor, cfg.decode.gen_length)
        if m["mode"] == modes[0]["mode"] and not mode_configs[m["mode"]].warm.enabled:
            baseline_nfe, baseline_wall = rec["mean_nfe"], rec["wall_s"]
            baseline_passes = [p for p in timed_passes if p["mode"] == m["mode"]]
        if timed_passes:
            rec["timing"] = summarize_timing([p for p in timed_passes if p["mode"] == m["mode"]],
                                             baseline_passes)
        records.append(rec)
    if baseline_nfe:
        for rec in records:
            if rec["mode"] != "aux_only" and rec.get("mean_nfe") is not None:
                rec["nfe_reduction"] = 1.0 - rec["mean_nfe"] / baseline_nfe
                # end-to-end (dLLM + aux) speed-up over the cold baseline, same problems
                rec["wall_speedup"] = baseline_wall / rec["wall_s"] if rec["wall_s"] > 0 else None
    command_line = settings.command_line if settings.command_line is not None else sys.argv[1:]
    return {
        # The command as typed (paths as given), from the argv the CLI parsed.
        "command": "fastdllm-warmstart " + " ".join(shlex.quote(a) for a in command_line),
        "data": data_id, "n_problems": len(problems), "seeds": seeds,
        "model": runners[settings.model].model_id, "models": model_ids,
        "aux_model": records[0].get("model") if records and records[0]["mode"] == "aux_only" else None,
        "batch_size": settings.batch_size, "device": str(runners[settings.model].device), "threads": _threads(),
        "config": {m["mode"]: mode_configs[m["mode"]].to_dict() for m in modes},
        "loop_variants": {m["mode"]: loop_variants[m["mode"]] for m in modes},
        "shuffle_proposals": (None if permutation is None
                              else {"seed": shuffle_seed, "permutation": permutation}),
        "versions": versions(), "records": records, "fingerprint": fingerprint,
        # every timed pass in the order it ran (mode, pass, dLLM and CPU seconds)
        "repeats": settings.repeats, "timed_passes": timed_passes,
        "flags": dict(settings.flags),
    }


def _time_modes(settings: BenchSettings, modes: List[Dict[str, Any]], mode_configs: Dict[str, RunConfig],
                seed: int, prompts: List[str], progress: _Progress, runner_for: Any,
                proposer: Any) -> List[Dict[str, Any]]:
    """``settings.repeats`` timed passes of every mode with ``seed`` (none when it is 1), pass 1
    of every mode before pass 2 of any; every pass's answers are checked against the saved rows
    and the mode's first timed pass (a warning names the mode and pass that differ)."""
    if settings.repeats < 2:
        return []
    from tqdm.auto import tqdm

    timed: List[Dict[str, Any]] = []
    first: Dict[str, List[Tuple[List[int], int, str]]] = {}
    bar = tqdm(total=settings.repeats * len(modes) * len(prompts), desc="timed passes", unit="answer",
               disable=settings.quiet)
    for k in range(settings.repeats):
        for m in modes:
            mode = m["mode"]
            cfg = mode_configs[mode]
            cfg = dataclasses.replace(cfg, warm=dataclasses.replace(cfg.warm, seed=seed))
            dllm_s, cpu_s, answers = _timed_pass(runner_for(mode), cfg, prompts, proposer, settings.batch_size)
            saved = [(progress.done[(mode, seed, i)]["nfe"], progress.done[(mode, seed, i)]["answer"])
                     for i in range(len(prompts))]
            same = ([(nfe, text) for _, nfe, text in answers] == saved
                    and answers == first.setdefault(mode, answers))
            if not same:
                logger.warning("timed pass %d of mode %r decoded other tokens than its first decode; "
                               "its time is not comparable (a nondeterministic kernel or model?)", k + 1, mode)
            timed.append({"mode": mode, "pass": k + 1, "dllm_s": dllm_s, "cpu_s": cpu_s,
                          "same_tokens": same})
            bar.update(len(prompts))
    bar.close()
    return timed


def _threads() -> int:
    import torch

    return torch.get_num_threads()
