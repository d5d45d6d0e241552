"""``patches/``: the additions-only patch for a Fast-dLLM checkout.

Always checked: the patch only adds files (no context or removed lines, so no upstream line can be
in it), carries no NVIDIA copyright text, matches ``patches/src`` and the apply script refuses a
folder that is not a checkout. With ``FAST_DLLM_PATH`` pointing at a checkout, the patch is also
applied to a temporary copy and the hook's functions are compared with upstream's own.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PATCHES = ROOT / "patches"
PATCH = PATCHES / "fastdllm-warmstart.patch"
ADDED = ("llada/warmstart_hook.py", "llada/eval_llada_warmstart.py", "dream/eval_dream_warmstart.py")


def _sections(text):
    """(path, header lines, body lines) per file of a unified diff."""
    parts = re.split(r"(?m)^(?=diff --git )", text)
    return [p.splitlines() for p in parts if p.strip()]


def test_patch_only_adds_files():
    sections = _sections(PATCH.read_text(encoding="utf-8"))
    assert sorted(s[0].split()[-1][2:] for s in sections) == sorted(ADDED)
    for lines in sections:
        assert lines[1] == "new file mode 100644"
        assert lines[2] == "--- /dev/null" and lines[3].startswith(("+++ b/llada/", "+++ b/dream/"))
        hunk = re.fullmatch(r"@@ -0,0 \+1,(\d+) @@", lines[4])
        assert hunk, lines[4]
        body = lines[5:]
        assert len(body) == int(hunk.group(1))
        # No context (' ') and no removed ('-') lines: nothing of upstream's can be in the patch.
        assert all(line.startswith("+") for line in body)


def test_patch_has_no_upstream_license_text():
    text = PATCH.read_text(encoding="utf-8")
    for banned in ("NVIDIA", "Copyright", "SPDX-License-Identifier", "Apache License"):
        assert banned not in text


def test_patch_matches_sources():
    spec = importlib.util.spec_from_file_location("make_patch", PATCHES / "make_patch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == PATCH.read_text(encoding="utf-8"), \
        "run python patches/make_patch.py after editing patches/src"


def test_apply_script_refuses_a_non_checkout(tmp_path):
    proc = subprocess.run(["bash", str(PATCHES / "apply.sh"), str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "not a Fast-dLLM checkout" in proc.stderr


# ----------------------------------------------------------------------------------------------
# with a real checkout
# ----------------------------------------------------------------------------------------------

def _checkout() -> Path:
    path = os.environ.get("FAST_DLLM_PATH")
    if not path:
        pytest.skip("set FAST_DLLM_PATH to a Fast-dLLM checkout to apply the patch to it")
    root = Path(path).expanduser()
    for cand in (root, root.parent, root.parent.parent):
        if (cand / "llada" / "generate.py").is_file():
            return cand
    pytest.skip(f"FAST_DLLM_PATH={path} has no llada/generate.py")


@pytest.fixture
def patched(tmp_path):
    src = _checkout()
    dst = tmp_path / "Fast-dLLM"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "asset", "*.pdf", "__pycache__"))
    before = {p: p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    proc = subprocess.run(["bash", str(PATCHES / "apply.sh"), str(dst)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return dst, before


def test_apply_adds_files_and_revert_removes_them(patched):
    dst, before = patched
    for rel in ADDED:
        assert (dst / rel).is_file()
    assert all(p.read_bytes() == data for p, data in before.items())  # upstream files untouched
    proc = subprocess.run(["bash", str(PATCHES / "apply.sh"), str(dst), "--revert"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    after = {p: p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert after == before


def test_no_added_line_copies_an_upstream_line():
    upstream = set()
    for path in [*(_checkout() / "llada").rglob("*.py"), *(_checkout() / "dream").rglob("*.py")]:
        upstream |= {line.strip() for line in path.read_text(encoding="utf-8", errors="ignore")
                     .splitlines() if len(line.strip()) >= 30}
    added = [line[1:].strip() for line in PATCH.read_text(encoding="utf-8").splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    assert not [line for line in added if line in upstream]


def _load(name, path, llada):
    sys.path.insert(0, str(llada))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(llada))


def _tiny_model(tmp_path):
    """A random tiny dLLM with the real tiny tokenizer, saved (so its tokenizer can be found)
    and unable to prefer [MASK]/[PAD], which upstream's loop would commit."""
    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    torch.manual_seed(0)
    cfg = TinyLLaDAConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, init_std=0.5,
                          mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    model = TinyLLaDAModelLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[[tok.mask_token_id, tok.pad_token_id]] = 0
    model.save_pretrained(str(tmp_path / "tiny"))
    tok.save_pretrained(str(tmp_path / "tiny"))
    model.config._name_or_path = str(tmp_path / "tiny")
    return model, tok


@pytest.mark.parametrize("rule", [dict(threshold=None), dict(threshold=0.9), dict(threshold=0.2),
                                  dict(factor=1.0)])
def test_hook_matches_upstream_generate(patched, tmp_path, rule, monkeypatch):
    """Same tokens and the same NFE as the checkout's own functions. Checkouts that decode
    batches (today's upstream) get a batch, and upstream's NFE for a batch is its forward calls;
    step_callback sees the same step indices."""
    from fastdllm_warmstart.upstream import detect_loop_variant

    dst, _ = patched
    for name in [k for k in os.environ if k.startswith("FASTDLLM_WARMSTART_")]:
        monkeypatch.delenv(name)
    llada = dst / "llada"
    upstream = _load("fdl_upstream_generate", llada / "generate.py", llada)
    hook = _load("fdl_warmstart_hook", llada / "warmstart_hook.py", llada)
    if "factor" in rule and not hasattr(upstream, "get_transfer_index_dynamic"):
        pytest.skip("this checkout has no factor rule")
    model, tok = _tiny_model(tmp_path)
    questions = ["Tom has 7 apples . He buys 5 more . How many ?",
                 "Amy has 9 pens . She loses 4 pens . How many ?",
                 "Sam has 3 cups . He gets 8 more . How many now ?"]
    rows = [tok(f"Question: {q}\nAnswer:")["input_ids"] for q in questions]
    width = min(len(r) for r in rows)
    batched = detect_loop_variant((llada / "generate.py").read_text()) == "current"
    prompt = torch.tensor([r[-width:] for r in rows][:3 if batched else 1])
    kwargs = dict(steps=32, gen_length=32, block_length=8, temperature=0.0,
                  remasking="low_confidence", mask_id=tok.mask_token_id, **rule)
    fn_cache = {"generate": "none", "generate_with_prefix_cache": "prefix",
                "generate_with_dual_cache": "dual"}
    for fn in fn_cache:
        x_up, nfe_up = getattr(upstream, fn)(model, prompt, **kwargs)
        steps = []
        x_ws, nfe_ws = getattr(hook, fn)(model, prompt, step_callback=steps.append, **kwargs)
        assert torch.equal(x_up, x_ws), fn
        assert nfe_up == nfe_ws, fn
        assert steps == list(range(nfe_ws)), fn
        if batched and rule.get("threshold") == 0.2:  # rows are slowest in different blocks here
            from fastdllm_warmstart import generate as engine_generate

            per_row = engine_generate(model, prompt, cache=fn_cache[fn], use_upstream=False, **{
                k: v for k, v in kwargs.items() if k != "temperature"}).nfe
            assert nfe_up > int(per_row.max()), fn
        if "step_callback" in inspect.signature(getattr(upstream, fn)).parameters:
            seen = []
            getattr(upstream, fn)(model, prompt, step_callback=seen.append, **kwargs)
            assert seen == steps, fn


def test_hook_warm_start_from_environment(patched, tmp_path, monkeypatch):
    dst, _ = patched
    llada = dst / "llada"
    hook = _load("fdl_warmstart_hook_warm", llada / "warmstart_hook.py", llada)
    model, tok = _tiny_model(tmp_path)
    ids = tok("Question: Tom has 7 apples . How many ?\nAnswer:")["input_ids"]
    text = tok.decode(ids, skip_special_tokens=True)  # what the hook hands the proposer
    proposal = "7 + 5 = 12 . #### 12"
    path = tmp_path / "proposals.jsonl"
    path.write_text(json.dumps({"prompt": text, "proposal": proposal}) + "\n", encoding="utf-8")
    kwargs = dict(steps=16, gen_length=16, block_length=8, mask_id=tok.mask_token_id, threshold=0.9)
    _, cold_nfe = hook.generate(model, torch.tensor([ids]), **kwargs)
    monkeypatch.setenv("FASTDLLM_WARMSTART_WARM_INIT", "token")
    monkeypatch.setenv("FASTDLLM_WARMSTART_RHO", "1.0")
    monkeypatch.setenv("FASTDLLM_WARMSTART_PROPOSALS", str(path))
    x, nfe = hook.generate(model, torch.tensor([ids]), **kwargs)
    answer = tok.decode(x[0, len(ids):].tolist(), skip_special_tokens=True)
    assert answer.startswith(proposal)  # rho=1: every position starts from the proposal
    assert nfe < cold_nfe
    monkeypatch.setenv("FASTDLLM_WARMSTART_RHOO", "1.0")
    with pytest.raises(ValueError, match="FASTDLLM_WARMSTART_RHOO is not a warm-start setting"):
        hook.generate(model, torch.tensor([ids]), **kwargs)


def test_eval_entry_point_wires_hook_and_fixes_harness(patched):
    """eval_llada_warmstart.py: eval_llada's generate* are the hook's, llada_dist gets a device
    setter and working collectives, and both models are registered."""
    dst, _ = patched
    code = "\n".join([
        "import torch, eval_llada_warmstart as entry",
        "eval_llada = entry.prepare()",
        "import warmstart_hook",
        "from lm_eval.api.registry import get_model",
        "assert eval_llada.generate_with_dual_cache is warmstart_hook.generate_with_dual_cache",
        "assert eval_llada.generate is warmstart_hook.generate",
        "cls = eval_llada.LLaDAEvalHarness",
        "assert get_model('llada_dist') is cls and get_model('llada_warmstart').__name__ == "
        "'LLaDAWarmStartLM'",
        "lm = cls.__new__(cls); lm.accelerator = None",
        "lm.device = 'cpu'; assert lm.device == torch.device('cpu')",
        "t = torch.tensor(3); assert lm.all_gather(t) is t and lm.gather_object(1) == [1]",
        "lm.barrier(); assert cls.cfg == 0.0",
        "print('ok')",
    ])
    proc = subprocess.run([sys.executable, "-c", code], cwd=dst / "llada", capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# the checkout's own evaluation, end to end
# ----------------------------------------------------------------------------------------------

EVAL_ARGS = ["--tasks", "tinygsm", "--limit", "4", "--device", "cpu", "--log_samples"]
DECODE = "gen_length=16,steps=16,block_length=8,threshold=0.9,is_check_greedy=False"


def _llada_checkpoint(llada: Path, out: Path):
    """A tiny random LLaDA checkpoint as a user has one: the checkout's own classes, a config
    with ``auto_map``, the model files beside the weights, and a matching (the tiny) tokenizer.
    Its output layer cannot prefer [MASK]/[PAD], which upstream's loop would commit."""
    from fastdllm_warmstart.compat import post_init_compatible, save_tokenizer
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer
    from fastdllm_warmstart.upstream import find_upstream

    up = find_upstream(str(llada))
    tok = build_dllm_tokenizer()
    torch.manual_seed(0)
    cfg = up.config_class(
        d_model=32, n_heads=2, n_layers=1, mlp_hidden_size=64, vocab_size=len(tok),
        embedding_size=len(tok), block_type="llama", rope=True, mask_token_id=tok.mask_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, max_sequence_length=256,
        include_bias=False, weight_tying=False, layer_norm_type="rms", activation_type="silu",
        mlp_ratio=2, attention_layer_norm=False, init_device="cpu", init_fn="normal", init_std=0.5,
        use_cache=False, flash_attention=False)
    model = post_init_compatible(up.model_class)(cfg, init_params=True)
    with torch.no_grad():
        head = dict(model.named_parameters())["model.transformer.ff_out.weight"]  # (V, d)
        head[[tok.mask_token_id, tok.pad_token_id]] = 0
    model.save_pretrained(str(out))
    save_tokenizer(tok, out)
    for name in ("configuration_llada.py", "modeling_llada.py"):
        shutil.copy(llada / "model" / name, out / name)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_llada.LLaDAConfig",
                          "AutoModel": "modeling_llada.LLaDAModelLM"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return tok


def _run_eval(llada: Path, out: Path, model_args: str, *, hook=True, env=None):
    """The checkout's evaluation through eval_llada_warmstart.py; (samples by doc id, stderr)."""
    main = "import eval_llada_warmstart as e; e.main(hook=%s)" % hook
    cmd = [sys.executable, "-c", main, *EVAL_ARGS, "--model", "llada_dist",
           "--model_args", model_args, "--output_path", str(out)]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("FASTDLLM_WARMSTART_")}
    run_env.update(PYTHONPATH=os.pathsep.join([str(ROOT), run_env.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   **(env or {}))
    proc = subprocess.run(cmd, cwd=llada, env=run_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (samples,) = out.rglob("samples_tinygsm*.jsonl")
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    return {r["doc_id"]: r["resps"][0][0] for r in rows}, proc.stderr


def test_checkout_evaluation_cold_and_warm_from_proposals(patched, tmp_path):
    """tinygsm through the checkout's own eval_llada.py (model llada_dist): the hook's cold run
    answers exactly as upstream's own decoding; a warm run from a proposals file keyed by the
    task's prompt text warm-starts the prompts the file has and counts the one it lacks."""
    dst, _ = patched
    llada = dst / "llada"
    ckpt = tmp_path / "tiny-llada"
    tok = _llada_checkpoint(llada, ckpt)
    args = f"model_path={ckpt},mask_id={tok.mask_token_id},{DECODE}"

    upstream, _ = _run_eval(llada, tmp_path / "upstream", args, hook=False)
    cold, _ = _run_eval(llada, tmp_path / "cold", args)
    assert sorted(cold) == [0, 1, 2, 3]
    assert cold == upstream

    docs = [json.loads(line) for line in
            (ROOT / "fastdllm_warmstart/tasks/data/tinygsm_test.jsonl").read_text().splitlines()[:4]]
    proposals = tmp_path / "proposals.jsonl"  # docs 0-2 only: doc 3 must fall back to cold
    proposals.write_text("".join(json.dumps({"prompt": f"Question: {d['question']}\nAnswer:",
                                             "proposal": d["answer"]}) + "\n" for d in docs[:3]))
    warm, log = _run_eval(llada, tmp_path / "warm", args, env={
        "FASTDLLM_WARMSTART_WARM_INIT": "token", "FASTDLLM_WARMSTART_RHO": "1.0",
        "FASTDLLM_WARMSTART_PROPOSALS": str(proposals)})
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for i, doc in enumerate(docs[:3]):  # rho=1: the proposal fills the canvas and stays
        assert ids(warm[i]) == ids(doc["answer"])[:16], (warm[i], doc["answer"])
        assert warm[i] != cold[i]
    assert warm[3] == cold[3]
    assert "Warm start: 3 of 4 prompt(s) warm-started; 1 found no usable proposal" in log


DREAM_PARITY = '''
import json, sys, types, torch
import eval_dream_warmstart as entry
dream_eval = entry.prepare()
import model.modeling_dream as m, model.generation_utils_block as b
from lm_eval.api.registry import get_model
assert get_model("dream") is dream_eval.Dream and get_model("dream_warmstart").__name__ == "DreamWarmStartLM"
assert b.DreamGenerationMixin.diffusion_generate is entry.diffusion_generate
cfg = m.DreamConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                    mask_token_id=299, pad_token_id=297, eos_token_id=297, bos_token_id=296)
torch.manual_seed(0)
model = m.DreamModel(cfg).eval()
with torch.no_grad():
    model.lm_head.weight.mul_(400.0)
    model.lm_head.weight[299] = 0
calls = [0]
model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
# as eval.py binds it onto the model
model.diffusion_generate = types.MethodType(b.DreamGenerationMixin.diffusion_generate, model)
model._sample = types.MethodType(b.DreamGenerationMixin._sample, model)
x = torch.randint(0, 290, (1, 6), generator=torch.Generator().manual_seed(0))
out = {}
for dual in (False, True):
    kw = dict(max_new_tokens=24, steps=3, alg="confidence_threshold", threshold=0.9, block_length=8,
              dual_cache=dual, return_dict_in_generate=True, output_history=False, temperature=0.0)
    gc = b.DreamGenerationConfig(mask_token_id=299, pad_token_id=297, eos_token_id=297, bos_token_id=296)
    calls[0] = 0
    ours = model.diffusion_generate(x, generation_config=gc, **kw).sequences
    n_ours, calls[0] = calls[0], 0
    theirs = entry._upstream["diffusion_generate"](model, x, gc, **kw).sequences
    out[str(dual)] = [torch.equal(ours, theirs), n_ours, calls[0]]
print(json.dumps(out))
'''


def test_dream_entry_point_decodes_as_upstream(patched):
    """eval_dream_warmstart.py: eval.py's block-loop diffusion_generate becomes the engine's, with
    upstream's tokens and forward counts (prefix and dual cache); both models are registered."""
    dst, _ = patched
    dream = dst / "dream"
    proc = subprocess.run([sys.executable, "-c", DREAM_PARITY], cwd=dream, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(dream), str(ROOT)])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for dual, (equal, ours, theirs) in result.items():
        assert equal and ours == theirs and ours > 0, (dual, result)
