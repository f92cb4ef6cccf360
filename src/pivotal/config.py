"""Configuration: nested dataclasses, YAML files, dotted command-line overrides.

`load_config("configs/demo.yaml", ["algo.loss=gspo", "optim.lr=2e-6"])` reads the file, applies the
overrides (values parsed as YAML scalars), rejects unknown keys (with the nearest valid name
suggested) and wrongly typed values, resolves the config (`resolve_config`) and validates it
(`pivotal.validation`: method names, method options, ranges).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _f(default, help: str, registry: str | None = None):
    """A dataclass field with help text (shown by `pivotal config --keys`); `registry` names the
    registry whose entries the key takes, listed in the help from the registry itself."""
    metadata = {"help": help, "registry": registry}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _registry(name: str):
    """The registry a config key takes its names from (imported late: it fills on import)."""
    from . import algos
    from .algos.labels import LABEL_SELECTORS
    from .tasks import TASKS
    return {"advantage": algos.ADVANTAGES, "loss": algos.LOSSES, "aggregation": algos.AGGREGATIONS,
            "credit": algos.CREDITS, "kl": algos.KL_ESTIMATORS, "labels": LABEL_SELECTORS,
            "task": TASKS}[name]


# The built-in demo: sums and differences where SmolLM2-135M is right ~16% of the time greedily and
# sometimes right when sampling, so GRPO has signal from the first step (see docs/results.md).
DEMO_TASK_OPTIONS = {"levels": [{"ops": ["+"], "digits": 2},
                                {"ops": ["-"], "digits": [[2, 2], [1, 1]]},
                                {"ops": ["+"], "digits": [[2, 2], [1, 1]]}]}


@dataclass
class LoraConfig:
    r: int = _f(0, "LoRA rank (arXiv 2106.09685, through peft); 0 = full fine-tuning. With r > 0 "
                "only the adapters train, checkpoints hold only them, and the reference "
                "'initial' is the base model with the adapters switched off (no second copy).")
    alpha: float = _f(16.0, "LoRA scaling numerator: the update is (alpha / r) * B @ A.")
    dropout: float = _f(0.0, "Dropout on the adapters' input while training. 0 by default: the "
                        "rollout and pi_old recompute run without dropout, so any would make "
                        "the first mini-batch's ratio differ from 1.")
    target_modules: list = _f(["all-linear"], "Module names (or name suffixes) that get adapters; "
                              "['all-linear'] = every linear layer but the LM head.")


@dataclass
class ModelConfig:
    name: str = _f("smollm2-135m", "'smollm2-135m' (built in), 'tiny-random' (tests), a local HF "
                   "model directory, or a hub id already in the local HF cache.")
    device: str = _f("cpu", "cpu | cuda | cuda:N | auto.")
    dtype: str = _f("float32", "float32 | bfloat16 | float16. CPUs without bf16 units: float32.")
    cache_dir: str | None = _f(None, "Where the built-in model's safetensors are cached "
                               "(default $PIVOTAL_CACHE or ~/.cache/pivotal).")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory on long responses.")
    reference: str = _f("initial", "The frozen reference/base model of KL terms and of credit "
                        "methods that read one (owpo, divergence): 'initial' (a copy of the "
                        "starting policy), 'none' (never load one), or another model spec "
                        "sharing the policy's tokenizer.")
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA adapters."})


@dataclass
class TaskConfig:
    name: str = _f("arithmetic", "The task (its problems and verifier).", "task")
    options: dict = _f(DEMO_TASK_OPTIONS, "Keyword options of the task constructor (e.g. levels, "
                       "path, seed). Default: the demo's 2-digit arithmetic mix.")
    instruction: str = _f("Put the final answer in \\boxed{}.", "Appended to every question.")
    system_prompt: str | None = _f(None, "Optional system message for the chat template.")


@dataclass
class RolloutConfig:
    engine: str = _f("transformers", "Rollout engine: transformers (shares the policy's weights) "
                     "| vllm (pip install 'pivotal[vllm]'; weights synced in place every step) | "
                     "vllm_server (`vllm serve` processes, weights pushed every step; "
                     "docs/scaling.md) | auto (vllm when installed, else transformers).")
    vllm_max_model_len: int = _f(2048, "vllm, vllm_server (local): longest prompt + response, "
                                 "in tokens.")
    vllm_kv_cache_gb: float = _f(1.0, "vllm, vllm_server (local): memory reserved for its KV "
                                 "cache, GiB.")
    vllm_compile: bool = _f(False, "vllm: let vLLM torch.compile its model instead of running "
                            "eager (measured here: 60 s more at start, rollouts 15% faster; pays off past ~60 steps).")
    server_urls: list = _f([], "vllm_server: base URLs of running servers (http://host:8000); "
                           "prompts are spread over them. Empty: pivotal starts one on this "
                           "machine and stops it when the run ends.")
    server_weight_sync: str = _f("filesystem", "vllm_server: how new weights reach the servers: "
                                 "filesystem (every weight, LoRA merged in, as safetensors in "
                                 "server_weight_dir, loaded by the worker extension) | lora "
                                 "(model.lora.r > 0: only the adapters, which the servers apply "
                                 "through vLLM's LoRA support) | nccl (GPUs: every weight "
                                 "broadcast over NCCL by vLLM's weight-transfer API).")
    server_nccl_address: str = _f("", "vllm_server, nccl route: this machine's address the "
                                  "servers reach it at for the NCCL rendezvous; empty: the "
                                  "interface that routes to each server.")
    server_weight_dir: str | None = _f(None, "vllm_server: directory for the pushed weights, "
                                       "readable by every server (default <output_dir>/"
                                       "vllm_weights); only the latest version is kept.")
    server_timeout_s: float = _f(600.0, "vllm_server: seconds one request may take.")
    server_retries: int = _f(3, "vllm_server: retries of a failed or timed-out request "
                             "(backoff 1, 2, 4 s, ...) before the run stops naming the URL.")
    server_startup_timeout_s: float = _f(900.0, "vllm_server (local): seconds to wait for the "
                                         "server pivotal starts to be ready.")
    server_python: str | None = _f(None, "vllm_server (local): the Python that runs the server "
                                   "(one with vLLM and pivotal installed); default: this one.")
    server_args: list = _f([], "vllm_server (local): extra `vllm serve` arguments, e.g. "
                           "['--tensor-parallel-size', '2'].")
    gap_warn: float = _f(0.05, "Warn when a step's mean sampler/trainer log-prob gap "
                         "(sampler_logprob_diff, nats) exceeds this: the sampler is not running "
                         "the trainer's weights (a failed sync) or runs them at low precision. "
                         "0: off.")
    prompts_per_step: int = _f(4, "Prompts sampled per training step.")
    group_size: int = _f(8, "Responses per prompt (G). GRPO paper: 64; 8-16 is common.")
    max_new_tokens: int = _f(48, "Response length cap (L_max).")
    temperature: float = _f(1.0, "Sampling temperature; log-probs are taken at this temperature.")
    top_p: float = _f(1.0, "Nucleus sampling mass (1 = off).")
    top_k: int = _f(0, "Top-k sampling (0 = off).")


@dataclass
class RewardConfig:
    components: list = _f([{"name": "task", "weight": 1.0}],
                          "Reward functions and weights: a registered name ('task' = the task's own "
                          "verifier, 'math', 'math_strict', 'countdown', 'format') or "
                          "'module:function'. The first component defines correctness.")
    extract: list = _f(["boxed", "hash", "last_number"],
                       "Answer extraction order for the built-in rewards that take one ('math', "
                       "'task') and for active-label votes. Evaluation reports two fixed "
                       "extractions instead: strict (boxed only) and lenient (boxed, ####, last "
                       "number).")
    timeout_s: float = _f(10.0, "Per-call timeout of a reward function; a timeout scores 0.")
    overlong_buffer: int = _f(0, "DAPO overlong shaping buffer L_buf in tokens (0 = off). "
                              "DAPO (arXiv:2503.14476): 4096 of 20480.")
    overlong_factor: float = _f(1.0, "DAPO overlong penalty at the length cap.")
    mask_truncated: bool = _f(False, "DAPO overlong filtering: truncated responses get no loss.")
    labels: str = _f("all", "Which prompts train on their ground-truth label (CAG / CARE active "
                     "labels): all, or a label selector: pseudo (majority vote only), cag_oracle "
                     "(true labels for the top label_budget prompts by corrective advantage gap; "
                     "an oracle upper bound that peeks at every label to choose), care (CARE's "
                     "two-stage hidden-state probe, trained online on the queried prompts), "
                     "agreement (the label_budget prompts whose samples agree least; label-free).",
                     "labels")
    label_budget: float = _f(0.2, "Fraction of each step's prompts whose true label is queried.")
    label_options: dict = _f({}, "Options of a selector that takes them (care: prob_gate, "
                             "warmup_steps, soft_adv, lr, train_steps, buffer_size, ...; "
                             "docs/methods.md).")
    unlabeled_weight: str = _f("auto", "Advantage weight of the prompts that train on a pseudo-label "
                               "under active labels: zero (the released CAG / ranked-label code: "
                               "only queried prompts train), soft (CARE: clip(soft_adv x expected "
                               "gap, 0, 1) on the prompts its probe trusts, 0 on the rest), "
                               "pseudo (weight 1, the majority vote as their label), auto (soft "
                               "under care, pseudo under pseudo, else zero).")


@dataclass
class RolloutCorrectionConfig:
    level: str = _f("token", "token: the ratio rho = pi_old / pi_sampler of each token; sequence: "
                    "the product over the response (one weight for all its tokens).")
    mode: str = _f("off", "off | truncate: weight clamp(rho, low, high) | mask: weight rho inside "
                   "[low, high] (edges included), 0 outside. token/mask with [0.5, 5] is IcePop "
                   "(arXiv 2510.18855); sequence/mask is TRL's default for vLLM rollouts.")
    low: float = _f(0.0, "Lower bound of the ratio (0 = none).")
    high: float = _f(2.0, "Upper bound of the ratio.")


@dataclass
class AlgoConfig:
    advantage: str = _f("grpo", "Advantage estimator.", "advantage")
    advantage_options: dict = _f({}, "e.g. {std_scale: group|batch|none, eps: 1e-6}.")
    loss: str = _f("ppo_clip", "Policy loss.", "loss")
    loss_options: dict = _f({}, "e.g. ppo_clip {clip_low: 0.2, clip_high: 0.28, dual_clip: 3}.")
    aggregation: str = _f("token-mean", "Loss aggregation: token-mean (DAPO), seq-mean-token-mean "
                          "(GRPO, GSPO), seq-mean-token-sum-norm (Dr.GRPO), ...", "aggregation")
    credit: str = _f("identity", "Per-token credit: a registered (B,T) multiplier on advantages.",
                     "credit")
    credit_options: dict = _f({}, "Keyword options of the credit function.")
    kl_beta: float = _f(0.0, "KL-to-reference coefficient; 0 = no KL term (a reference model is "
                        "then loaded only if the credit method reads one).")
    kl_estimator: str = _f("k3", "Schulman's estimators.", "kl")
    kl_in_reward: bool = _f(False, "Subtract beta * sum(k1) from the reward instead of a loss term.")
    entropy_coef: float = _f(0.0, "Entropy bonus coefficient (0 = off).")
    dynamic_sampling: bool = _f(False, "DAPO: drop groups whose rewards all agree and sample more.")
    max_sampling_rounds: int = _f(3, "DAPO dynamic sampling: cap on generation rounds per step.")
    reference_ratchet_every: int = _f(0, "Replace the frozen reference with the current policy "
                                      "every K steps (OWPO's ratchet; 0 = never).")
    reference_ratchet_on_eval: bool = _f(False, "Replace the reference whenever held-out greedy "
                                         "accuracy improves at an eval (needs train.eval_every).")
    old_logprobs: str = _f("rollout", "Source of log pi_old after the first update: 'rollout' "
                           "(the sampler's) or 'recompute' (one extra no-grad forward).")
    rollout_correction: RolloutCorrectionConfig = field(
        default_factory=RolloutCorrectionConfig,
        metadata={"help": "Correction for the sampler/trainer mismatch (e.g. vLLM), weighting the "
                          "policy loss by the importance ratio pi_old / pi_sampler."})
    tis_cap: float = _f(0.0, "Shorthand for rollout_correction {level: token, mode: truncate, "
                        "high: tis_cap} (truncated importance sampling: each token's loss is "
                        "weighted by min(pi_old/pi_sampler, tis_cap)). 0 = off; 2 is common.")
    mtp_heads: int = _f(0, "Multi-token-prediction heads attached to the policy and trained "
                        "jointly with OCC coefficients (arXiv 2605.28184); 0 = none.")
    occ_scale: float = _f(0.1, "OCC's s: head k's advantage is scaled by (s/K) * the calibrated "
                          "coefficient. The authors use 0.1.")
    occ_normaliser: str = _f("padded", "The mean in OCC's coefficient: 'padded' (the released "
                             "code: over rows x rollout.max_new_tokens, padding included) or "
                             "'valid' (over the tokens a head scores).")


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "AdamW learning rate. 1e-5 suits a 135M model over tens of steps; "
                   "larger models usually want 1e-6. LoRA wants about 10x its full "
                   "fine-tuning lr.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    betas: list = _f([0.9, 0.999], "AdamW betas.")
    fused_adamw: bool = _f(True, "One fused kernel for the AdamW step (torch's fused=True: 3.4x "
                           "faster than the per-parameter loop on the built-in model, equal to it "
                           "to 1 float32 ulp); false: the per-parameter loop.")
    warmup_steps: int = _f(0, "Linear LR warmup, in optimizer steps.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).")
    epochs_per_rollout: int = _f(1, "Passes over each rollout batch.")
    mini_batches: int = _f(1, "Optimizer steps per pass (FIPO's recipe uses 8).")
    micro_batch_size: int = _f(16, "Rows per forward/backward (gradient accumulation).")
    share_prompt: bool = _f(True, "Run each distinct prompt's forward/backward once per micro-batch "
                            "and let its G responses reuse it (exact; much less compute when "
                            "prompts are long against responses).")
    pack_responses: bool = _f(True, "Train on packed rows: a group's responses side by side after "
                              "one copy of their prompt, under a block mask, with no padding "
                              "(pivotal.packing; equal to float rounding). Needs sdpa or eager "
                              "attention, and runs where it costs fewer FLOPs than the padded "
                              "rows above (its dense mask pays for every token pair of a row).")


@dataclass
class TrainConfig:
    steps: int = _f(30, "Training steps (one rollout batch each).")
    seed: int = _f(0, "Seeds sampling, shuffling and the task stream.")
    output_dir: str = _f("runs/demo", "Where metrics, checkpoints and the final model go.")
    save_every: int = _f(0, "Checkpoint every N steps (0 = by time only, and at the end).")
    save_every_minutes: float = _f(10.0, "Also checkpoint after a step once this many minutes have "
                                   "passed since the last checkpoint (0 = off): a crash loses at "
                                   "most about this much work.")
    keep_checkpoints: int = _f(2, "How many recent checkpoints to keep.")
    max_bad_steps: int = _f(3, "Consecutive steps with a non-finite loss, gradient norm or reward "
                            "(each skipped, weights unchanged) after which the run stops.")
    warn_zero_variance_steps: int = _f(5, "Warn when every group's rewards agreed in this many "
                                       "consecutive steps (nothing to learn; 0 = never).")
    interrupt_signals: list = _f(["SIGUSR1"], "Signals besides SIGINT and SIGTERM that stop the "
                                 "run gracefully: save, then exit (Slurm's --signal sends "
                                 "SIGUSR1 before the time limit).")
    eval_every: int = _f(0, "Held-out greedy eval every N steps (0 = only before/after).")
    eval_before_after: bool = _f(True, "Greedy held-out accuracy before and after training.")
    plugins: list = _f([], "Python modules imported before validation; they may register "
                       "methods (@register_credit, @register_loss, ...) used by name here.")
    shift_monitor: bool = _f(False, "Log per step how sparse the change from the initial "
                             "policy is: the fraction of sampled tokens whose |Δlog p| against "
                             "the initial policy exceeds each of shift_thresholds.")
    shift_thresholds: list = _f([0.1, 0.5, 1.0], "|Δlog p| thresholds of the shift monitor.")
    shift_monitor_rows: int = _f(8, "Responses per step the shift monitor scores (0 = all).")
    retain_freed_memory: bool = _f(True, "Keep freed host memory in the process (glibc mallopt) so "
                                   "large tensors do not page-fault each step; changes no "
                                   "value, costs the peak heap staying allocated "
                                   "(pivotal.allocator).")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms for the process: GPU runs "
                             "repeat bit for bit (CPU runs already do); pivotal.reproducibility.")
    tensorboard: bool = _f(True, "Write TensorBoard event files.")
    wandb: bool = _f(False, "Log to Weights & Biases (needs `wandb` installed).")


@dataclass
class DistConfig:
    strategy: str = _f("ddp", "Data parallelism across the ranks torchrun starts (ignored in one "
                       "process): ddp (every rank holds the whole model; gradients all-reduced) "
                       "or fsdp (FSDP2 fully_shard per decoder layer: parameters, gradients and "
                       "optimizer state sharded).")
    cpu_offload: bool = _f(False, "fsdp: keep the sharded parameters and optimizer state in CPU "
                           "memory (FSDP2 CPUOffloadPolicy).")
    mixed_precision: str = _f("none", "fsdp: none | bfloat16 (FSDP2 MixedPrecisionPolicy: bf16 "
                              "compute and all-gathers, fp32 gradient reduction, fp32 weights and "
                              "optimizer state; on GPUs and on CPU).")
    reshard_after_forward: bool = _f(True, "fsdp: free each layer's gathered weights after its "
                                     "forward and gather them again for its backward (least "
                                     "memory); false keeps them to the backward (one all-gather "
                                     "per micro-batch instead of two).")
    timeout_s: float = _f(600.0, "Collective timeout, seconds: a rank that dies or hangs makes the "
                          "others stop with an error within this long (torch's default is 30 "
                          "minutes).")


@dataclass
class EvalConfig:
    size: int = _f(100, "Held-out problems to evaluate (<= the task's eval set).")
    n_samples: int = _f(1, "Samples per problem for avg@n / pass@k / maj@n (1 = greedy only).")
    temperature: float = _f(1.0, "Sampling temperature when n_samples > 1.")
    top_p: float = _f(1.0, "Nucleus (top-p) of the sampled answers when n_samples > 1 (1 = off; "
                      "the Δlog p paper's extrapolation samples with 0.7).")
    max_new_tokens: int = _f(48, "Response length cap at evaluation.")
    batch_size: int = _f(50, "Prompts per generation batch.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # The Python API's ways in (`pivotal.Config.build(...)` and friends): each checks keys, types
    # and method names exactly as the CLI does, "did you mean" included.
    @classmethod
    def build(cls, source: str | Path | dict | None = None, /, *, overrides: list[str] = (),
              **sections) -> Config:
        """A validated Config from a YAML path or a dict (optional), then keyword sections
        (`algo={"loss": "cispo"}`, a section dataclass, or dotted `**{"optim.lr": 1e-6}`), then
        CLI-style overrides ("optim.lr=1e-6"); later ones win."""
        data = _source_data(source)
        for key, value in sections.items():
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            _merge(data, _nest(key.split("."), copy.deepcopy(value)))
        return _finish(data, overrides, validate=True)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> Config:
        return load_config(path, overrides)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        return cls.build(data)


# ---------------------------------------------------------------------------- loading

def nearest_name(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _apply(obj, data: dict, where: str) -> None:
    """Write `data` into dataclass `obj`, recursing into sub-configs; unknown keys raise."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'.{nearest_name(key, names)} "
                              f"Valid keys{' of ' + where if where else ''}: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' is a section; give it a mapping")
            _apply(current, value, path)
        else:
            setattr(obj, key, _coerce(value, current, names[key], path))


def _coerce(value, current, f: dataclasses.Field, path: str):
    """Check a value against the field's default type; ints are accepted where floats are."""
    if value is None or current is None:
        return value
    kind = type(current)
    if kind in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads '1e-6' (no dot) as a string; users write it all the time
            value = float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"config key '{path}' must be a number, got {value!r}")
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"config key '{path}' must be an integer, got {value!r}")
        return int(value)
    if kind in (dict, list, str) and not isinstance(value, kind):
        raise ConfigError(f"config key '{path}' must be a {kind.__name__}, got {value!r}")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """'algo.loss_options.clip_high=0.28' -> (['algo', 'loss_options', 'clip_high'], 0.28)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _nest(keys: list[str], value) -> dict:
    out: dict = value
    for k in reversed(keys):
        out = {k: out}
    return out


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def _source_data(source) -> dict:
    """The mapping a config starts from: a YAML file's (errors name file, line and column), a
    copy of a dict, or nothing."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return copy.deepcopy(source)
    if not isinstance(source, (str, Path)):
        raise ConfigError(f"a config comes from a YAML path or a dict, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"config file {where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    return data


def _finish(data: dict, overrides, validate: bool) -> Config:
    for text in overrides:
        keys, value = parse_override(text)
        _merge(data, _nest(keys, value))
    cfg = Config()
    _apply(cfg, data, "")
    if validate:
        from .validation import validate_config
        resolve_config(cfg)
        validate_config(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                validate: bool = True) -> Config:
    return _finish(_source_data(path), overrides, validate)


def config_from_dict(data: dict, where: str = "config") -> Config:
    """A Config from `Config.to_dict()` output (e.g. a checkpoint's), unvalidated: plugins it
    names need not be importable to read it. Keys added since it was written take defaults."""
    cfg = Config()
    try:
        _apply(cfg, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def resolve_config(cfg: Config) -> None:
    """The one step that changes a config: import `train.plugins` (their registrations must exist
    before names are checked), turn `rollout.engine=auto` into the engine that is installed
    (vLLM samples fastest when it is, docs/results.md), and apply what several ranks need
    (`pivotal.distributed.resolve_for_ranks`)."""
    import_plugins(cfg.train.plugins)
    from .rollout.vllm_engine import vllm_available
    if cfg.rollout.engine == "auto":
        cfg.rollout.engine = "vllm" if vllm_available() else "transformers"
    from .distributed import resolve_for_ranks
    resolve_for_ranks(cfg)


def import_plugins(modules: list[str]) -> None:
    """Import user modules so their registrations exist before names are checked."""
    import importlib
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"train.plugins: cannot import '{name}': {e}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe_keys() -> str:
    """Every config key with its default and help text, for `pivotal config --keys`."""
    lines = []

    def describe(section, indent: str) -> None:
        for f in dataclasses.fields(section):
            default = getattr(section, f.name)
            if dataclasses.is_dataclass(default):  # a nested section (model.lora)
                lines.append(f"{indent}{f.name}:")
                describe(default, indent + "  ")
                continue
            help_text = f.metadata.get("help", "")
            if f.metadata.get("registry"):
                names = _registry(f.metadata["registry"]).names()
                extra = ["all"] if f.metadata["registry"] == "labels" else []
                help_text += f" Known: {', '.join(extra + names)}."
            lines.append(f"{indent}{f.name} = {default!r}\n{indent}    {help_text}")

    for section in dataclasses.fields(Config):
        lines.append(f"{section.name}:")
        describe(section.default_factory(), "  ")
    return "\n".join(lines)
