import pytest

from mixhub import ConfigError
from mixhub.config import load_config, parse_overrides, read_yaml


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'; did you mean 'epochs'"):
        load_config({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean 'train'"):
        load_config({"trian": {}})


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(ConfigError, match=r"train.batch_size: .*integer.*'many'"):
        load_config({"train": {"batch_size": "many"}})
    with pytest.raises(ConfigError, match=r"train.lr: Input should be greater than 0"):
        load_config({"train": {"lr": -1}})


def test_overrides_are_typed_and_nested():
    o = parse_overrides(["train.lr=0.01", "plugins=mixup,cmixup", "train.amp=false", "data.options.kind=sin"])
    assert o == {"train": {"lr": 0.01, "amp": False}, "plugins": ["mixup", "cmixup"], "data": {"options": {"kind": "sin"}}}
    cfg = load_config(o)
    assert cfg.train.lr == 0.01 and cfg.plugins == ["mixup", "cmixup"]


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        read_yaml(bad)


def test_resolved_config_round_trips():
    cfg = load_config({"seed": 3, "train": {"epochs": 2}})
    again = load_config(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
