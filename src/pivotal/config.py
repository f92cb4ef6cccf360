"""Configuration: nested dataclasses, YAML files, dotted command-line overrides, early validation.

`load_config("configs/demo.yaml", ["algo.loss=gspo", "optim.lr=2e-6"])` reads the file, applies the
overrides (values parsed as YAML scalars) and validates everything that can be checked before a
model loads: unknown keys (with the nearest valid name suggested), unknown method names, option
names a method does not take, and out-of-range numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """Bad configuration; the message names the key at fault."""


def _f(default, help: str):
    """A dataclass field with help text (shown by `pivotal config --help-keys`)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# The built-in demo: sums and differences where SmolLM2-135M is right ~16% of the time greedily and
# sometimes right when sampling, so GRPO has signal from the first step (see docs/results.md).
DEMO_TASK_OPTIONS = {"levels": [{"ops": ["+"], "digits": 2},
                                {"ops": ["-"], "digits": [[2, 2], [1, 1]]},
                                {"ops": ["+"], "digits": [[2, 2], [1, 1]]}]}


LABEL_MODES = ("all", "pseudo", "cag_oracle", "agreement")


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


@dataclass
class TaskConfig:
    name: str = _f("arithmetic", "arithmetic | countdown | file | gsm8k | svamp | mawps | hub.")
    options: dict = _f(DEMO_TASK_OPTIONS, "Keyword options of the task constructor (e.g. levels, "
                       "path, seed). Default: the demo's 2-digit arithmetic mix.")
    instruction: str = _f("Put the final answer in \\boxed{}.", "Appended to every question.")
    system_prompt: str | None = _f(None, "Optional system message for the chat template.")


@dataclass
class RolloutConfig:
    engine: str = _f("transformers", "Rollout engine: transformers (shares the policy's weights) "
                     "| vllm (pip install 'pivotal[vllm]'; weights synced in place every step) | "
                     "auto (vllm when installed, else transformers).")
    vllm_max_model_len: int = _f(2048, "vllm: longest prompt + response, in tokens.")
    vllm_kv_cache_gb: float = _f(1.0, "vllm: memory reserved for its KV cache, GiB.")
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
                       "Answer extraction order for 'math'/'task' rewards and evaluation.")
    timeout_s: float = _f(10.0, "Per-call timeout of a reward function; a timeout scores 0.")
    overlong_buffer: int = _f(0, "DAPO overlong shaping buffer L_buf in tokens (0 = off). "
                              "DAPO (arXiv:2503.14476): 4096 of 20480.")
    overlong_factor: float = _f(1.0, "DAPO overlong penalty at the length cap.")
    mask_truncated: bool = _f(False, "DAPO overlong filtering: truncated responses get no loss.")
    labels: str = _f("all", "Which prompts train on their ground-truth label (CAG / CARE active "
                     "labels): all | pseudo (majority vote only) | cag_oracle (true labels for "
                     "the top label_budget prompts by corrective advantage gap; an oracle upper "
                     "bound that peeks at every label to choose) | agreement (true labels for "
                     "the label_budget prompts whose samples agree least; label-free choice).")
    label_budget: float = _f(0.2, "Fraction of each step's prompts whose true label is queried.")


@dataclass
class AlgoConfig:
    advantage: str = _f("grpo", "grpo | dr_grpo | rloo | reinforce_pp_baseline.")
    advantage_options: dict = _f({}, "e.g. {std_scale: group|batch|none, eps: 1e-6}.")
    loss: str = _f("ppo_clip", "ppo_clip | gspo | vanilla_pg.")
    loss_options: dict = _f({}, "e.g. ppo_clip {clip_low: 0.2, clip_high: 0.28, dual_clip: 3}.")
    aggregation: str = _f("token-mean", "token-mean (DAPO) | seq-mean-token-mean (GRPO, GSPO) | "
                          "seq-mean-token-sum | seq-mean-token-sum-norm (Dr.GRPO).")
    credit: str = _f("identity", "Per-token credit: a registered (B,T) multiplier on advantages.")
    credit_options: dict = _f({}, "Keyword options of the credit function.")
    kl_beta: float = _f(0.0, "KL-to-reference coefficient; 0 = no reference model is loaded.")
    kl_estimator: str = _f("k3", "k1 | k2 | k3 (Schulman's estimators).")
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
    tis_cap: float = _f(0.0, "Truncated importance sampling for the sampler/trainer mismatch "
                        "(e.g. vLLM): each token's loss is weighted by min(pi_old/pi_sampler, "
                        "tis_cap). 0 = off; 2 is the common choice.")
    mtp_heads: int = _f(0, "Multi-token-prediction heads attached to the policy and trained "
                        "jointly with OCC coefficients (arXiv 2605.28184); 0 = none.")
    occ_scale: float = _f(0.1, "OCC's s: head k's advantage is scaled by (s/K) * the calibrated "
                          "coefficient. The authors use 0.1.")


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "AdamW learning rate. 1e-5 suits a 135M model over tens of steps; "
                   "larger models usually want 1e-6.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    betas: list = _f([0.9, 0.999], "AdamW betas.")
    warmup_steps: int = _f(0, "Linear LR warmup, in optimizer steps.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).")
    epochs_per_rollout: int = _f(1, "Passes over each rollout batch.")
    mini_batches: int = _f(1, "Optimizer steps per pass (FIPO's recipe uses 8).")
    micro_batch_size: int = _f(16, "Rows per forward/backward (gradient accumulation).")
    share_prompt: bool = _f(True, "Run each distinct prompt's forward/backward once per micro-batch "
                            "and let its G responses reuse it (exact; much less compute when "
                            "prompts are long against responses).")


@dataclass
class TrainConfig:
    steps: int = _f(30, "Training steps (one rollout batch each).")
    seed: int = _f(0, "Seeds sampling, shuffling and the task stream.")
    output_dir: str = _f("runs/demo", "Where metrics, checkpoints and the final model go.")
    save_every: int = _f(0, "Checkpoint every N steps (0 = only at the end).")
    keep_checkpoints: int = _f(2, "How many recent checkpoints to keep.")
    eval_every: int = _f(0, "Held-out greedy eval every N steps (0 = only before/after).")
    eval_before_after: bool = _f(True, "Greedy held-out accuracy before and after training.")
    plugins: list = _f([], "Python modules imported before validation; they may register "
                       "methods (@register_credit, @register_loss, ...) used by name here.")
    shift_monitor: bool = _f(False, "Log per step how sparse the change from the initial "
                             "policy is: the fraction of sampled tokens whose |Δlog p| against "
                             "the initial policy exceeds each of shift_thresholds.")
    shift_thresholds: list = _f([0.1, 0.5, 1.0], "|Δlog p| thresholds of the shift monitor.")
    shift_monitor_rows: int = _f(8, "Responses per step the shift monitor scores (0 = all).")
    tensorboard: bool = _f(True, "Write TensorBoard event files.")
    wandb: bool = _f(False, "Log to Weights & Biases (needs `wandb` installed).")


@dataclass
class EvalConfig:
    size: int = _f(100, "Held-out problems to evaluate (<= the task's eval set).")
    n_samples: int = _f(1, "Samples per problem for avg@n / pass@k / maj@n (1 = greedy only).")
    temperature: float = _f(1.0, "Sampling temperature when n_samples > 1.")
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- loading

def _nearest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _apply(obj, data: dict, where: str) -> None:
    """Write `data` into dataclass `obj`, recursing into sub-configs; unknown keys raise."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'.{_nearest(key, names)} "
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


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                validate: bool = True) -> Config:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    for text in overrides:
        keys, value = parse_override(text)
        _merge(data, _nest(keys, value))
    cfg = Config()
    _apply(cfg, data, "")
    if validate:
        validate_config(cfg)
    return cfg


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


# ---------------------------------------------------------------------------- validation

def check_options(fn, options: dict, where: str) -> None:
    """Every option must be a keyword parameter of `fn` (unless it takes **kwargs)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
             or (p.default is not inspect.Parameter.empty)]
    for key in options:
        if key not in valid:
            raise ConfigError(f"'{where}' has no option '{key}'.{_nearest(key, valid)} "
                              f"Valid options: {', '.join(valid) or 'none'}")


def _positive(value, path: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key '{path}' must be {'>= 0' if allow_zero else '> 0'}, "
                          f"got {value}")


def validate_config(cfg: Config) -> None:
    """Everything checkable before a model loads. Raises ConfigError naming the key."""
    import_plugins(cfg.train.plugins)  # user methods must be registered before names are checked
    from .algos import ADVANTAGES, AGGREGATIONS, CREDITS, KL_ESTIMATORS, LOSSES
    from .models import DTYPES
    from .registry import UnknownNameError
    from .tasks import TASKS

    checks = [("algo.advantage", ADVANTAGES, cfg.algo.advantage, cfg.algo.advantage_options),
              ("algo.loss", LOSSES, cfg.algo.loss, cfg.algo.loss_options),
              ("algo.credit", CREDITS, cfg.algo.credit, cfg.algo.credit_options),
              ("algo.aggregation", AGGREGATIONS, cfg.algo.aggregation, None),
              ("algo.kl_estimator", KL_ESTIMATORS, cfg.algo.kl_estimator, None),
              ("task.name", TASKS, cfg.task.name, None)]
    for path, registry, name, options in checks:
        try:
            fn = registry.get(name)
        except UnknownNameError as e:
            raise ConfigError(f"{path}: {e}") from None
        if options:
            check_options(fn, options, f"{path}={name}")
    _dry_run_algorithms(cfg)
    task_params = inspect.signature(TASKS.get(cfg.task.name)).parameters
    for key in cfg.task.options:
        if key not in task_params:
            raise ConfigError(f"task.options.{key}: task '{cfg.task.name}' has no option '{key}'."
                              f"{_nearest(key, task_params)} Valid options: "
                              f"{', '.join(task_params)}")
    try:
        inspect.signature(TASKS.get(cfg.task.name)).bind(**cfg.task.options)
    except TypeError as e:  # e.g. the file task without its path
        raise ConfigError(f"task.options for task '{cfg.task.name}': {e}") from None
    if cfg.model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype '{cfg.model.dtype}' is not one of {', '.join(DTYPES)}")
    if cfg.rollout.engine not in ("auto", "transformers", "vllm"):
        raise ConfigError(f"rollout.engine '{cfg.rollout.engine}' is not one of: auto, "
                          f"transformers, vllm")
    from .rollout_vllm import VLLM_INSTALL_HINT, vllm_available
    if cfg.rollout.engine == "auto":  # vLLM samples fastest when installed (docs/results.md)
        cfg.rollout.engine = "vllm" if vllm_available() else "transformers"
    if cfg.rollout.engine == "vllm":
        if not vllm_available():
            raise ConfigError(f"rollout.engine=vllm: vLLM is not installed; {VLLM_INSTALL_HINT}")
    if cfg.algo.tis_cap != 0 and not cfg.algo.tis_cap >= 1:
        raise ConfigError(f"algo.tis_cap must be 0 (off) or at least 1, got {cfg.algo.tis_cap}")
    if not 0 <= cfg.algo.mtp_heads <= 8:
        raise ConfigError(f"algo.mtp_heads must be between 0 (none) and 8, got {cfg.algo.mtp_heads}")
    if cfg.algo.mtp_heads and not cfg.algo.occ_scale > 0:
        raise ConfigError(f"algo.occ_scale must be > 0 with MTP heads, got {cfg.algo.occ_scale}")
    if cfg.algo.old_logprobs not in ("rollout", "recompute"):
        raise ConfigError("algo.old_logprobs must be 'rollout' or 'recompute'")
    for path in ("rollout.prompts_per_step", "rollout.group_size", "rollout.max_new_tokens",
                 "rollout.vllm_max_model_len", "rollout.vllm_kv_cache_gb",
                 "optim.lr", "optim.epochs_per_rollout", "optim.mini_batches",
                 "optim.micro_batch_size", "train.steps", "eval.size", "eval.n_samples",
                 "eval.max_new_tokens", "eval.batch_size", "algo.max_sampling_rounds"):
        section, key = path.split(".")
        _positive(getattr(getattr(cfg, section), key), path)
    for path in ("rollout.temperature", "algo.kl_beta", "algo.entropy_coef",
                 "optim.weight_decay", "optim.max_grad_norm", "train.save_every",
                 "train.eval_every", "reward.overlong_buffer", "optim.warmup_steps",
                 "algo.reference_ratchet_every"):
        section, key = path.split(".")
        _positive(getattr(getattr(cfg, section), key), path, allow_zero=True)
    if cfg.reward.labels not in LABEL_MODES:
        raise ConfigError(f"reward.labels '{cfg.reward.labels}' is not one of "
                          f"{', '.join(LABEL_MODES)}.{_nearest(cfg.reward.labels, LABEL_MODES)}")
    if not 0 <= cfg.reward.label_budget <= 1:
        raise ConfigError(f"reward.label_budget must be in [0, 1], got {cfg.reward.label_budget}")
    _check_reference(cfg)
    if cfg.train.shift_monitor_rows < 0:
        raise ConfigError(f"train.shift_monitor_rows must be >= 0, got {cfg.train.shift_monitor_rows}")
    if not all(isinstance(t, (int, float)) and t > 0 for t in cfg.train.shift_thresholds):
        raise ConfigError("train.shift_thresholds must be a list of positive numbers, got "
                          f"{cfg.train.shift_thresholds}")
    if cfg.algo.reference_ratchet_on_eval and not cfg.train.eval_every:
        raise ConfigError("algo.reference_ratchet_on_eval needs train.eval_every > 0")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {cfg.rollout.top_p}")
    if cfg.optim.mini_batches > cfg.rollout.prompts_per_step * cfg.rollout.group_size:
        raise ConfigError("optim.mini_batches exceeds the number of responses per step "
                          "(rollout.prompts_per_step x rollout.group_size)")
    if cfg.reward.overlong_buffer >= cfg.rollout.max_new_tokens:
        raise ConfigError("reward.overlong_buffer must be smaller than rollout.max_new_tokens")
    if not cfg.reward.components:
        raise ConfigError("reward.components is empty: give at least one reward function")
    from .rewards import REWARDS
    for i, comp in enumerate(cfg.reward.components):
        if not isinstance(comp, dict) or "name" not in comp:
            raise ConfigError(f"reward.components[{i}] must be a mapping with a 'name'")
        name = comp["name"]
        if name != "task" and ":" not in name and name not in REWARDS:
            raise ConfigError(f"reward.components[{i}].name: unknown reward function '{name}'."
                              f"{_nearest(name, REWARDS.names() + ['task'])} Known: task, "
                              f"{', '.join(REWARDS.names())}, or 'package.module:function'")
        unknown = set(comp) - {"name", "weight", "options", "label"}
        if unknown:
            raise ConfigError(f"reward.components[{i}] has unknown key(s) {sorted(unknown)}; "
                              f"valid: name, weight, options, label")


def reference_users(cfg: Config) -> list[str]:
    """The config keys whose setting needs a frozen reference model (empty: none is loaded)."""
    from .algos import CREDITS
    users = []
    if cfg.algo.kl_beta > 0:
        users.append(f"algo.kl_beta={cfg.algo.kl_beta}")
    credit = CREDITS.get(cfg.algo.credit)
    if set(getattr(credit, "needs", ())) & {"ref_logprobs", "divergence"}:
        users.append(f"algo.credit={cfg.algo.credit}")
    return users


def _check_reference(cfg: Config) -> None:
    users = reference_users(cfg)
    ratchet = cfg.algo.reference_ratchet_every or cfg.algo.reference_ratchet_on_eval
    if cfg.model.reference == "none" and users:
        raise ConfigError(f"{' and '.join(users)} needs a frozen reference model, but "
                          "model.reference=none; set model.reference=initial (a copy of the "
                          "starting policy) or to a model sharing the policy's tokenizer")
    if ratchet and not users:
        raise ConfigError("algo.reference_ratchet_* replaces a reference model that nothing "
                          "uses: set algo.kl_beta > 0 or a credit that reads the reference "
                          "(owpo, divergence)")


def _dry_run_algorithms(cfg: Config) -> None:
    """Call the configured advantage, credit and loss once on a tiny synthetic batch.

    An option out of range (FIPO's tau <= 0, a dual clip <= 1, ...) then fails here, before any
    model loads, with the config key named, and no method needs a validator of its own. Seeded
    options are left out and the global RNG is restored, so the dry run changes no random stream.
    """
    import torch

    from .algos import ADVANTAGES, CREDITS, LOSSES
    from .batch import RolloutBatch

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    group_ids = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    old = torch.full_like(mask, -1.0)
    current = old + torch.tensor([0.05, -0.3, 0.4])  # past both clip boundaries somewhere
    batch = RolloutBatch(
        prompt_ids=torch.zeros(4, 1, dtype=torch.long), prompt_mask=torch.ones(4, 1, dtype=torch.long),
        response_ids=torch.zeros(4, 3, dtype=torch.long), response_mask=mask, old_logprobs=old,
        group_ids=group_ids, truncated=torch.zeros(4, dtype=torch.bool), rewards=scores,
        ref_logprobs=old - 0.2, extras={"divergence": mask * 0.1})
    a = cfg.algo
    unseeded = {"seed"}
    stages = [
        ("algo.advantage_options", lambda: ADVANTAGES.get(a.advantage)(
            scores, group_ids, mask, **a.advantage_options)),
        ("algo.credit_options", lambda: CREDITS.get(a.credit)(
            batch, current, **{k: v for k, v in a.credit_options.items() if k not in unseeded})),
        ("algo.loss_options", lambda: LOSSES.get(a.loss)(
            current.clone().requires_grad_(), old, batch.advantages, mask,
            **{k: v for k, v in a.loss_options.items() if k not in unseeded})),
    ]
    with torch.random.fork_rng(), torch.no_grad():
        for key, call in stages:
            try:
                result = call()
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{key}: {e}") from None
            if key == "algo.advantage_options":
                batch.advantages = result


def describe_keys() -> str:
    """Every config key with its default and help text, for `pivotal config --keys`."""
    lines = []
    for section in dataclasses.fields(Config):
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(section.default_factory()):
            default = getattr(section.default_factory(), f.name)
            lines.append(f"  {f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
