"""One error hierarchy: each class names its culprit, and the CLI prints one line for any of them."""

from __future__ import annotations

import pytest

from pivotal.cli import main
from pivotal.config import load_config
from pivotal.errors import ConfigError, DataError, ModelLoadError, PivotalError, RewardError
from pivotal.models import load_model
from pivotal.rewards import load_reward
from pivotal.tasks.files import load_problems


def test_config_error_names_the_yaml_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("algo:\n  loss: ppo_clip\n  credit: [fipo\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4:1: invalid YAML") as e:
        load_config(path)
    assert "<unicode string>" not in str(e.value)


def test_config_error_names_a_misspelt_reward_option():
    with pytest.raises(ConfigError, match=r"reward\.components\[0\] \(math\).*'extrct'.*Did you mean 'extract'"):
        load_config(None, ["reward.components=[{name: math, options: {extrct: [boxed]}}]"])


def test_group_size_one_with_a_group_relative_advantage_is_a_config_error():
    with pytest.raises(ConfigError, match=r"rollout\.group_size=1.*algo\.advantage=rloo"):
        load_config(None, ["rollout.group_size=1", "algo.advantage=rloo"])


def test_data_error_names_the_file_and_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl line 2: missing field 'answer'"):
        load_problems(path)


def test_model_load_error_names_the_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no_such_model"):
        load_model(str(tmp_path / "no_such_model"))


def test_reward_error_names_the_reward_and_suggests():
    with pytest.raises(RewardError, match=r"reward 'math'.*'extrct'.*Did you mean 'extract'"):
        load_reward("math", extrct=["boxed"])


def test_every_class_is_a_pivotal_error():
    for cls in (ConfigError, DataError, ModelLoadError, RewardError):
        assert issubclass(cls, PivotalError)


@pytest.mark.parametrize("argv, culprit", [
    (["train", "reward.components=[{name: math, options: {extrct: [boxed]}}]"], "extrct"),
    (["eval", "--model", "/no/such/model/dir"], "/no/such/model/dir"),
])
def test_cli_prints_one_line_naming_the_culprit(argv, culprit, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pivotal:") and culprit in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
