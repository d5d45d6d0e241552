"""The training scripts run end to end on tiny random models: train, checkpoint, resume, export."""

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _run(*args, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_train_rcd_trains_resumes_and_exports(tmp_path):
    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    torch.manual_seed(0)
    cfg = TinyLLaDAConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2, mask_token_id=tok.mask_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_sequence_length=512)
    ref = tmp_path / "ref"
    TinyLLaDAModelLM(cfg).save_pretrained(ref)
    tok.save_pretrained(ref)
    common = ["scripts/train_rcd.py", "--reference", str(ref), "--out", str(tmp_path / "out"), "--work",
              str(tmp_path / "work"), "--batch", "4", "--eval-every", "2", "--eval-n", "3", "--final-n", "3",
              "--steps", "6", "--draft-frac", "0.5", "--lr", "0.05", "--warmup", "1"]
    _run(*common, "--stop-at", "4", cwd=REPO)
    ck = torch.load(tmp_path / "work" / "ckpt.pt", weights_only=False)
    assert ck["state"]["step"] == 4 and "opt" in ck
    out = _run(*common, "--resume", cwd=REPO)
    assert "resumed from" in out
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["steps_done"] == 6 and len(log["command"]) == 2
    assert [c["step"] for c in log["learning_curve"]] == [0, 2, 4, 6]
    assert {"test", "fresh_seed"} <= log["final_eval"].keys()
    model = TinyLLaDAModelLM.from_pretrained(tmp_path / "out")
    assert model.config.rcd["reference"] == str(ref)
    # the target really moved away from the reference
    base = TinyLLaDAModelLM.from_pretrained(ref)
    assert not torch.allclose(model.wte.weight.float(), base.wte.weight.float(), atol=1e-3)


def test_train_tiny_dllm_trains_resumes_and_exports(tmp_path):
    common = ["scripts/train_tiny.py", "dllm", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
              "--d-model", "16", "--layers", "1", "--heads", "2", "--batch", "4", "--steps", "6",
              "--eval-every", "3", "--eval-n", "3", "--final-n", "3", "--eq-frac", "0.5", "--threads", "1"]
    _run(*common, "--stop-at", "3", cwd=REPO)
    _run(*common, "--resume", cwd=REPO)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["steps_done"] == 6 and [c["step"] for c in log["learning_curve"]] == [3, 6]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # On another machine only ckpt.pt and best.pt travel (committed): the export still works.
    for snap in (tmp_path / "work").glob("snap_*.pt"):
        snap.unlink()
    (tmp_path / "out" / "model.safetensors").unlink()
    _run(*common, "--export-only", cwd=REPO)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "train_log.json").read_text())["exported_step"] == log["exported_step"]


def test_dual_cache_loss_trains_a_block_against_stale_context():
    """training.dllm_cache_loss: the block runs against cached keys/values of a canvas masked from
    the block on (constants: no gradient reaches them), and a model fits a fixed batch with it."""
    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer
    from fastdllm_warmstart.training import dllm_cache_loss, dllm_encode_batch

    tok = build_dllm_tokenizer()
    torch.manual_seed(0)
    model = TinyLLaDAModelLM(TinyLLaDAConfig(vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2,
                                             mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id))
    batch = dllm_encode_batch(tok, tinygsm.generate_problems(5, 4), "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_at(seed):
        return dllm_cache_loss(model, batch, tok.mask_token_id, tok.eos_token_id,
                               torch.Generator().manual_seed(seed))

    first = [loss_at(s).item() for s in range(3)]
    for step in range(40):
        opt.zero_grad()
        loss = loss_at(step % 3)
        loss.backward()
        assert model.wte.weight.grad is not None and torch.isfinite(loss)
        opt.step()
    last = [loss_at(s).item() for s in range(3)]
    assert sum(last) < 0.5 * sum(first)
