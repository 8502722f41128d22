"""The settings schema: strict types, finite numbers, one-line errors naming the setting and its source."""

import pytest

from advkit import AdvkitError, TrainConfig
from advkit.config import config_from_mapping
from advkit.options import Option, parse_float


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("epochs", "ten", "setting 'epochs' expects an integer, got 'ten'"),
        ("epochs", 2.5, "setting 'epochs' expects an integer, got 2.5"),
        ("batch_size", "64", "setting 'batch_size' expects an integer, got '64'"),
        ("seed", "abc", "setting 'seed' expects an integer"),
        ("lr_milestones", 5, "setting 'lr_milestones' expects a list of epoch numbers"),
        ("val_size", "10%", "setting 'val_size' expects a count (integer) or a fraction"),
        ("model", 5, "setting 'model' expects a string, got 5"),
        ("nesterov", "maybe", "setting 'nesterov' expects true or false, got 'maybe'"),
        ("lr", "inf", "setting 'lr' must be a finite number"),
        ("eps", float("nan"), "setting 'eps' must be a finite number"),
        ("eps", "8/0", "setting 'eps' expects a finite number"),
    ],
)
def test_bad_yaml_values_name_the_setting(key, value, expected):
    with pytest.raises(AdvkitError, match="^cfg.yaml: " + expected.replace("(", r"\(").replace(")", r"\)")):
        config_from_mapping({key: value}, "cfg.yaml")


def test_good_yaml_values_keep_their_meaning():
    config = config_from_mapping({"eps": "8/255", "val_size": 100, "lr_milestones": [5, 7.5], "nesterov": True}, "f")
    assert config.eps == pytest.approx(8 / 255) and config.val_size == 100 and isinstance(config.val_size, int)
    assert config.lr_milestones == [5.0, 7.5] and config.nesterov is True
    assert config_from_mapping({"val_size": 0.1}, "f").val_size == 0.1


def test_validate_checks_programmatic_values_and_ranges():
    with pytest.raises(AdvkitError, match="^--lr must be a finite number, got inf"):
        TrainConfig(lr=float("inf")).validate()
    with pytest.raises(AdvkitError, match=r"^--seed must lie in \[0, 2\^32\)"):
        TrainConfig(seed=2**70).validate()
    with pytest.raises(AdvkitError, match="^--epochs expects an integer"):
        TrainConfig(epochs="3").validate()


def test_fractions_dividing_by_zero_and_infinite_options_are_rejected():
    with pytest.raises(ValueError, match="divides by zero"):
        parse_float("8/0")
    option = Option("beta", float, 1.0, "weight", low=0.0)
    with pytest.raises(AdvkitError, match="option 'beta' must be a finite number, got inf"):
        option.convert("inf", "trades")
    assert option.convert("1e3", "trades") == 1000.0
