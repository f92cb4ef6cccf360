"""Config validation: everything checkable before a model loads, each error naming its key.

`validate_config` only checks (the one step that changes a config is `config.resolve_config`);
method names come from the registries, method options are checked against the functions'
signatures, and a dry run of the configured advantage, credit and loss on a tiny synthetic batch
catches options out of range.
"""

from __future__ import annotations

import inspect

from .config import Config, import_plugins, nearest_name
from .errors import ConfigError

# keywords the trainer passes itself (a credit's mini-batch statistics or the policy's entropies,
# an advantage's sum across data-parallel ranks), never set in a config
RESERVED_OPTIONS = ("stats", "all_ranks", "entropy", "progress")


def check_options(fn, options: dict, where: str) -> None:
    """Every option must be a keyword parameter of `fn` (unless it takes **kwargs)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if (p.kind is inspect.Parameter.KEYWORD_ONLY
             or p.default is not inspect.Parameter.empty) and n not in RESERVED_OPTIONS]
    for key in options:
        if key not in valid:
            raise ConfigError(f"'{where}' has no option '{key}'.{nearest_name(key, valid)} "
                              f"Valid options: {', '.join(valid) or 'none'}")


def _check_label_selector(cfg: Config, selectors) -> None:
    """reward.label_options against the selector's signature (and its own range checks, by
    building it once); `soft` weights only from a selector that scores unqueried prompts."""
    r = cfg.reward
    if r.labels == "all":
        if r.label_options:
            raise ConfigError("reward.label_options is set but reward.labels is 'all'")
        return
    entry = selectors.get(r.labels)
    stateful = isinstance(entry, type)
    if r.unlabeled_weight == "soft" and not stateful:
        raise ConfigError(f"reward.unlabeled_weight=soft needs a selector that scores the "
                          f"unqueried prompts (reward.labels=care), not '{r.labels}'")
    if not stateful:
        if r.label_options:
            raise ConfigError(f"reward.label_options: reward.labels={r.labels} takes no options")
        return
    check_options(entry, r.label_options, f"reward.labels={r.labels}")
    try:
        entry(cfg.rollout.group_size, cfg.rollout.max_new_tokens, 0, **r.label_options)
    except TypeError as e:
        raise ConfigError(f"reward.label_options: {e}") from None


def _positive(value, path: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key '{path}' must be {'>= 0' if allow_zero else '> 0'}, "
                          f"got {value}")


def validate_config(cfg: Config) -> None:
    """Everything checkable before a model loads; changes nothing (see `resolve_config`). Raises
    ConfigError naming the key. A config already checked in this state is not checked again."""
    fingerprint = repr(cfg.to_dict())
    if getattr(cfg, "_checked_as", None) == fingerprint:
        return
    import_plugins(cfg.train.plugins)  # idempotent: the names of user methods must be known
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
                              f"{nearest_name(key, task_params)} Valid options: "
                              f"{', '.join(task_params)}")
    try:
        inspect.signature(TASKS.get(cfg.task.name)).bind(**cfg.task.options)
    except TypeError as e:  # e.g. the file task without its path
        raise ConfigError(f"task.options for task '{cfg.task.name}': {e}") from None
    if cfg.model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype '{cfg.model.dtype}' is not one of {', '.join(DTYPES)}")
    if cfg.rollout.engine not in ("auto", "transformers", "vllm", "vllm_server"):
        raise ConfigError(f"rollout.engine '{cfg.rollout.engine}' is not one of: auto, "
                          f"transformers, vllm, vllm_server")
    _check_servers(cfg.rollout, cfg.model)
    from .rollout.vllm_engine import VLLM_INSTALL_HINT, vllm_available
    if cfg.rollout.engine == "vllm":
        if not vllm_available():
            raise ConfigError(f"rollout.engine=vllm: vLLM is not installed; {VLLM_INSTALL_HINT}")
    if cfg.algo.tis_cap != 0 and not cfg.algo.tis_cap >= 1:
        raise ConfigError(f"algo.tis_cap must be 0 (off) or at least 1, got {cfg.algo.tis_cap}")
    _check_rollout_correction(cfg.algo)
    if not 0 <= cfg.algo.mtp_heads <= 8:
        raise ConfigError(f"algo.mtp_heads must be between 0 (none) and 8, got {cfg.algo.mtp_heads}")
    if cfg.algo.mtp_heads and not cfg.algo.occ_scale > 0:
        raise ConfigError(f"algo.occ_scale must be > 0 with MTP heads, got {cfg.algo.occ_scale}")
    if cfg.algo.occ_normaliser not in ("padded", "valid"):
        raise ConfigError(f"algo.occ_normaliser must be 'padded' or 'valid', got "
                          f"{cfg.algo.occ_normaliser!r}")
    if cfg.algo.old_logprobs not in ("rollout", "recompute"):
        raise ConfigError("algo.old_logprobs must be 'rollout' or 'recompute'")
    for path in ("rollout.prompts_per_step", "rollout.group_size", "rollout.max_new_tokens",
                 "rollout.vllm_max_model_len", "rollout.vllm_kv_cache_gb",
                 "rollout.server_timeout_s", "rollout.server_startup_timeout_s",
                 "optim.lr", "optim.epochs_per_rollout", "optim.mini_batches",
                 "optim.micro_batch_size", "train.steps", "eval.size", "eval.n_samples",
                 "eval.max_new_tokens", "eval.batch_size", "algo.max_sampling_rounds"):
        section, key = path.split(".")
        _positive(getattr(getattr(cfg, section), key), path)
    from .interrupts import signal_number
    for name in cfg.train.interrupt_signals:
        try:
            signal_number(str(name))
        except ValueError as e:
            raise ConfigError(f"train.interrupt_signals: {e}") from None
    for path in ("train.save_every_minutes", "train.max_bad_steps", "train.warn_zero_variance_steps",
                 "rollout.temperature", "algo.kl_beta", "algo.entropy_coef",
                 "optim.weight_decay", "optim.max_grad_norm", "train.save_every",
                 "train.eval_every", "reward.overlong_buffer", "optim.warmup_steps",
                 "algo.reference_ratchet_every", "rollout.server_retries", "rollout.gap_warn"):
        section, key = path.split(".")
        _positive(getattr(getattr(cfg, section), key), path, allow_zero=True)
    from .algos.labels import LABEL_SELECTORS
    from .labeling import UNLABELED_WEIGHTS
    label_modes = ["all", *LABEL_SELECTORS.names()]
    if cfg.reward.labels not in label_modes:
        raise ConfigError(f"reward.labels '{cfg.reward.labels}' is not one of "
                          f"{', '.join(label_modes)}.{nearest_name(cfg.reward.labels, label_modes)}")
    if cfg.reward.unlabeled_weight not in UNLABELED_WEIGHTS:
        raise ConfigError(f"reward.unlabeled_weight must be one of {', '.join(UNLABELED_WEIGHTS)}, "
                          f"got {cfg.reward.unlabeled_weight!r}")
    if not 0 <= cfg.reward.label_budget <= 1:
        raise ConfigError(f"reward.label_budget must be in [0, 1], got {cfg.reward.label_budget}")
    _check_label_selector(cfg, LABEL_SELECTORS)
    _check_reference(cfg)
    _check_dist(cfg)
    _check_lora(cfg)
    if cfg.train.shift_monitor_rows < 0:
        raise ConfigError(f"train.shift_monitor_rows must be >= 0, got {cfg.train.shift_monitor_rows}")
    if not all(isinstance(t, (int, float)) and t > 0 for t in cfg.train.shift_thresholds):
        raise ConfigError("train.shift_thresholds must be a list of positive numbers, got "
                          f"{cfg.train.shift_thresholds}")
    if cfg.algo.reference_ratchet_on_eval and not cfg.train.eval_every:
        raise ConfigError("algo.reference_ratchet_on_eval needs train.eval_every > 0")
    for path, value in (("rollout.top_p", cfg.rollout.top_p), ("eval.top_p", cfg.eval.top_p)):
        if not 0 < value <= 1:
            raise ConfigError(f"{path} must be in (0, 1], got {value}")
    if cfg.optim.mini_batches > cfg.rollout.prompts_per_step * cfg.rollout.group_size:
        raise ConfigError("optim.mini_batches exceeds the number of responses per step "
                          "(rollout.prompts_per_step x rollout.group_size)")
    if cfg.reward.overlong_buffer >= cfg.rollout.max_new_tokens:
        raise ConfigError("reward.overlong_buffer must be smaller than rollout.max_new_tokens")
    if not cfg.reward.components:
        raise ConfigError("reward.components is empty: give at least one reward function")
    from .algos import ADVANTAGES
    from .errors import PivotalError
    from .rewards import REWARDS, RewardScorer
    for i, comp in enumerate(cfg.reward.components):
        if not isinstance(comp, dict) or "name" not in comp:
            raise ConfigError(f"reward.components[{i}] must be a mapping with a 'name'")
        name = comp["name"]
        if name != "task" and ":" not in name and name not in REWARDS:
            raise ConfigError(f"reward.components[{i}].name: unknown reward function '{name}'."
                              f"{nearest_name(name, REWARDS.names() + ['task'])} Known: task, "
                              f"{', '.join(REWARDS.names())}, or 'package.module:function'")
        unknown = set(comp) - {"name", "weight", "options", "label"}
        if unknown:
            raise ConfigError(f"reward.components[{i}] has unknown key(s) {sorted(unknown)}; "
                              f"valid: name, weight, options, label")
        try:  # builds the component: unknown options and unimportable functions fail here
            RewardScorer([comp])
        except (PivotalError, ValueError) as e:
            raise ConfigError(f"reward.components[{i}] ({name}): {e}") from None
    advantage = ADVANTAGES.get(cfg.algo.advantage)
    if cfg.rollout.group_size < 2 and getattr(advantage, "group_relative", False):
        raise ConfigError(f"rollout.group_size={cfg.rollout.group_size} with the group-relative "
                          f"advantage algo.advantage={cfg.algo.advantage}: every advantage would "
                          "be 0; sample at least 2 responses per prompt")
    object.__setattr__(cfg, "_checked_as", fingerprint)  # not a field: to_dict never sees it


def reference_users(cfg: Config) -> list[str]:
    """The config keys whose setting needs a frozen reference model (empty: none is loaded)."""
    from .algos import CREDITS
    from .algos.credit import DIVERGENCE_INPUT, credit_requirements
    users = []
    if cfg.algo.kl_beta > 0:
        users.append(f"algo.kl_beta={cfg.algo.kl_beta}")
    inputs = credit_requirements(CREDITS.get(cfg.algo.credit), cfg.algo.credit_options)
    if any(n == "ref_logprobs" or n.startswith(DIVERGENCE_INPUT) for n in inputs):
        users.append(f"algo.credit={cfg.algo.credit}")
    return users


def _check_dist(cfg: Config) -> None:
    """The dist section, and what it implies for the world size torchrun gives (WORLD_SIZE)."""
    import os

    d = cfg.dist
    if d.strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"dist.strategy '{d.strategy}' is not one of: ddp, fsdp."
                          f"{nearest_name(d.strategy, ['ddp', 'fsdp'])}")
    if d.mixed_precision not in ("none", "bfloat16"):
        raise ConfigError(f"dist.mixed_precision '{d.mixed_precision}' is not one of: none, bfloat16")
    if d.mixed_precision != "none" and d.strategy != "fsdp":
        raise ConfigError(f"dist.mixed_precision={d.mixed_precision} is FSDP2's MixedPrecisionPolicy "
                          f"and needs dist.strategy=fsdp (with {d.strategy}, set model.dtype)")
    _positive(d.timeout_s, "dist.timeout_s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and cfg.rollout.prompts_per_step % world:
        raise ConfigError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} does not "
                          f"split over {world} ranks: each rank samples whole groups, so it must "
                          f"be a multiple of the world size")


def _check_lora(cfg: Config) -> None:
    lora = cfg.model.lora
    _positive(lora.r, "model.lora.r", allow_zero=True)
    if lora.r == 0:
        return
    _positive(lora.alpha, "model.lora.alpha")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"model.lora.dropout must be in [0, 1), got {lora.dropout}")
    targets = lora.target_modules
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"model.lora.target_modules must be a non-empty list of module names, "
                          f"got {targets!r}")
    import importlib.util
    if importlib.util.find_spec("peft") is None:
        raise ConfigError("model.lora.r > 0 needs peft: pip install peft")


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

    from .algos import ADVANTAGES, CREDITS, LOSSES, credit_requirements
    from .algos.credit import resolve_credit_options
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
        ref_logprobs=old - 0.2, divergence=mask * 0.1)
    a = cfg.algo
    unseeded = {"seed"}
    try:
        credit_inputs = credit_requirements(CREDITS.get(a.credit), a.credit_options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"algo.credit_options: {e}") from None
    stages = [
        ("algo.advantage_options", lambda: ADVANTAGES.get(a.advantage)(
            scores, group_ids, mask, **a.advantage_options,
            **_dry_advantage_inputs(ADVANTAGES.get(a.advantage), a.advantage_options, old, mask))),
        ("algo.credit_options", lambda: CREDITS.get(a.credit)(
            batch, current, **{k: v for k, v in resolve_credit_options(
                CREDITS.get(a.credit), a.credit_options, LOSSES.get(a.loss), a.loss_options).items()
                if k not in unseeded}, **_dry_credit_inputs(batch, credit_inputs))),
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




def _dry_credit_inputs(batch, names) -> dict:
    """Synthetic values of the inputs a credit declares: keywords, and batch extras set in place."""
    import torch
    mask = batch.response_mask
    if "context_logprobs" in names:
        batch.extras["context_logprobs"] = batch.old_logprobs + mask * torch.tensor([0.3, -0.3, 0.0])
    extra = {"entropy": mask * torch.tensor([0.5, 1.5, 1.0])} if "entropy" in names else {}
    if "progress" in names:
        extra["progress"] = 0.5
    return extra


def _dry_advantage_inputs(estimator, options: dict, logprobs, mask) -> dict:
    """Synthetic values of the inputs an advantage estimator declares, for the dry run."""
    from .algos import advantage_inputs

    try:
        names = advantage_inputs(estimator, options)
    except ValueError as e:
        raise ConfigError(f"algo.advantage_options: {e}") from None
    extra = {}
    if "policy_stats" in names:
        extra.update(logprobs=logprobs, sum_sq_probs=mask * 0.4)
    if "rollout_is_weights" in names:
        extra["is_weights"] = None
    if "correct" in names:
        extra["correct"] = mask.new_tensor([1, 0, 0, 1]).bool()  # the dry scores' verdicts
    return extra


def _check_servers(rollout, model) -> None:
    """rollout.server_*: URLs that parse, a known weight route (the lora route for a LoRA
    policy), lists where lists belong."""
    from urllib.parse import urlparse

    from .lora import lora_enabled
    from .rollout.weight_sync import WEIGHT_SYNC_ROUTES
    for key in ("server_urls", "server_args"):
        if not isinstance(getattr(rollout, key), list):
            raise ConfigError(f"rollout.{key} must be a list, got {getattr(rollout, key)!r}")
    for url in rollout.server_urls:
        parsed = urlparse(str(url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"rollout.server_urls: {url!r} is not an http(s)://host:port URL")
    if rollout.server_weight_sync not in WEIGHT_SYNC_ROUTES:
        raise ConfigError(f"rollout.server_weight_sync '{rollout.server_weight_sync}' is not one "
                          f"of: {', '.join(WEIGHT_SYNC_ROUTES)}")
    if rollout.server_weight_sync == "lora" and not lora_enabled(model.lora):
        raise ConfigError("rollout.server_weight_sync=lora pushes LoRA adapters, and model.lora.r "
                          "is 0 (full fine-tuning): set model.lora.r > 0, or use "
                          "server_weight_sync=filesystem")
    if rollout.server_weight_sync == "nccl" and rollout.engine == "vllm_server":
        from .rollout.vllm_engine import VLLM_INSTALL_HINT, vllm_available
        if str(model.device) == "cpu":
            raise ConfigError("rollout.server_weight_sync=nccl broadcasts the weights from the "
                              "trainer's GPU over NCCL, and model.device is cpu: set "
                              "model.device=cuda, or use server_weight_sync=filesystem")
        if not vllm_available():
            raise ConfigError("rollout.server_weight_sync=nccl drives vLLM's weight-transfer "
                              f"engine from the trainer, and vLLM is not installed here; "
                              f"{VLLM_INSTALL_HINT}")
    if rollout.server_urls and rollout.engine != "vllm_server":
        raise ConfigError(f"rollout.server_urls is set but rollout.engine is "
                          f"'{rollout.engine}'; set rollout.engine=vllm_server to use them")


def _check_rollout_correction(algo) -> None:
    from .algos.correction import CORRECTION_LEVELS, CORRECTION_MODES
    rc = algo.rollout_correction
    if rc.level not in CORRECTION_LEVELS:
        raise ConfigError(f"algo.rollout_correction.level '{rc.level}' is not one of "
                          f"{', '.join(CORRECTION_LEVELS)}")
    if rc.mode not in CORRECTION_MODES:
        raise ConfigError(f"algo.rollout_correction.mode '{rc.mode}' is not one of "
                          f"{', '.join(CORRECTION_MODES)}")
    if rc.mode != "off" and algo.tis_cap:
        raise ConfigError("algo.tis_cap and algo.rollout_correction both set a correction: "
                          "tis_cap=C is rollout_correction {level: token, mode: truncate, "
                          "high: C}; keep one")
    if rc.mode != "off" and not 0 <= rc.low <= 1 <= rc.high:
        # a band that excludes 1 would weight away every token of an exact (on-policy) sampler
        raise ConfigError(f"algo.rollout_correction needs 0 <= low <= 1 <= high, got low={rc.low}, "
                          f"high={rc.high}")
