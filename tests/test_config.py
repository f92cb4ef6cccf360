import pytest

from pivotal.config import ConfigError, load_config, parse_override


def test_defaults_validate():
    cfg = load_config()
    assert cfg.model.name == "smollm2-135m"
    assert cfg.algo.advantage == "grpo"


def test_overrides_are_parsed_as_yaml_scalars():
    cfg = load_config(None, ["algo.loss=gspo", "optim.lr=2e-6", "rollout.group_size=4",
                             "algo.loss_options.clip_high=0.0004", "algo.dynamic_sampling=true"])
    assert cfg.algo.loss == "gspo"
    assert cfg.optim.lr == 2e-6
    assert cfg.rollout.group_size == 4
    assert cfg.algo.loss_options == {"clip_high": 0.0004}
    assert cfg.algo.dynamic_sampling is True
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_yaml_file_and_override_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1.0e-5\nrollout:\n  group_size: 4\n")
    cfg = load_config(path, ["optim.lr=3e-6"])
    assert cfg.optim.lr == 3e-6 and cfg.rollout.group_size == 4


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*Did you mean 'lr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'algoo'.*Did you mean 'algo'"):
        load_config(None, ["algoo.loss=gspo"])


def test_unknown_method_name_is_named():
    with pytest.raises(ConfigError, match=r"algo.advantage: unknown advantage estimator 'grpoo'.*"
                                          r"Did you mean 'grpo'"):
        load_config(None, ["algo.advantage=grpoo"])
    with pytest.raises(ConfigError, match=r"algo.loss: unknown policy loss 'ppo'"):
        load_config(None, ["algo.loss=ppo"])
    with pytest.raises(ConfigError, match=r"task.name: unknown task 'arithmetc'"):
        load_config(None, ["task.name=arithmetc"])


def test_unknown_method_option_is_named():
    with pytest.raises(ConfigError, match=r"'algo.loss=ppo_clip' has no option 'clip_hi'.*"
                                          r"Did you mean 'clip_high'"):
        load_config(None, ["algo.loss_options.clip_hi=0.3"])


@pytest.mark.parametrize("override, culprit", [
    ("rollout.group_size=0", "rollout.group_size"),
    ("optim.lr=-1", "optim.lr"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("rollout.group_size=two", "rollout.group_size"),
    ("algo.dynamic_sampling=maybe", "algo.dynamic_sampling"),
    ("rollout.group_size=2.5", "rollout.group_size"),
    ("model.dtype=float8", "model.dtype"),
])
def test_bad_values_name_the_key(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2:1: invalid YAML"):
        load_config(bad)


def test_every_shipped_config_validates():
    from pathlib import Path
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs, "no example configs found"
    for path in configs:
        load_config(path)


def test_task_options_and_reward_names_are_checked_before_any_model_loads():
    with pytest.raises(ConfigError, match=r"task.options.digit: .*Did you mean 'digits'"):
        load_config(None, ["task.options={digit: 2}"])
    with pytest.raises(ConfigError, match=r"task 'file'.*path"):
        load_config(None, ["task.name=file", "task.options={}"])
    with pytest.raises(ConfigError, match=r"reward.components\[0\].name: unknown reward function "
                                          r"'maths'.*Did you mean 'math'"):
        load_config(None, ["reward.components=[{name: maths}]"])


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    from pivotal.cli import main
    assert main(["train", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "answer": "2"}\n{broken\n')
    assert main(["eval", "--model", "tiny-random", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 2" in err and "Traceback" not in err


def test_plugins_register_methods_before_validation(tmp_path, monkeypatch):
    (tmp_path / "my_methods_for_test.py").write_text(
        "from pivotal.algos import register_credit\n"
        "@register_credit('late_tokens_test')\n"
        "def late_tokens(batch, logprobs, *, c: float = 0.5):\n"
        "    mask = batch.response_mask\n"
        "    return 1.0 + c * (mask.cumsum(1) - 1) / mask.sum(1, keepdim=True).clamp(min=1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["train.plugins=[my_methods_for_test]", "algo.credit=late_tokens_test",
                             "algo.credit_options.c=0.2"])
    assert cfg.algo.credit == "late_tokens_test"
    with pytest.raises(ConfigError, match="train.plugins: cannot import 'no_such_module_xyz'"):
        load_config(None, ["train.plugins=[no_such_module_xyz]"])


@pytest.mark.parametrize("override, culprit", [
    ("algo.credit=fipo algo.credit_options.tau=0", "algo.credit_options"),
    ("algo.loss_options.dual_clip=0.5", "algo.loss_options"),
    ("algo.credit=divergence algo.credit_options.kind=hellinger", "algo.credit_options"),
])
def test_method_knobs_out_of_range_fail_at_config_time(override, culprit):
    with pytest.raises(ConfigError, match=culprit):
        load_config(None, override.split())


def test_method_needing_a_reference_fails_when_none_is_configured():
    for extra, user in ((["algo.credit=owpo"], "algo.credit=owpo"),
                        (["algo.credit=divergence"], "algo.credit=divergence"),
                        (["algo.kl_beta=0.04"], "algo.kl_beta=0.04")):
        with pytest.raises(ConfigError, match=rf"{user} needs a frozen reference model, but "
                                              r"model.reference=none"):
            load_config(None, ["model.reference=none", *extra])
    load_config(None, ["model.reference=none", "algo.credit=dlogp"])  # needs none: fine
    load_config(None, ["algo.credit=owpo"])  # the default reference is the initial policy


def test_ratchet_without_a_reference_user_is_an_error():
    with pytest.raises(ConfigError, match="replaces a reference model that nothing uses"):
        load_config(None, ["algo.reference_ratchet_every=5"])
