import math
from itertools import pairwise

import pytest

from advkit import Option, OptionError, Schedule
from advkit.options import depends_on_training_length, parse_float, resolve_options


def test_fractions_parse_as_floats():
    assert parse_float("8/255") == pytest.approx(8 / 255)
    assert parse_float(" 0.5 ") == 0.5
    with pytest.raises(ValueError):
        parse_float("eight")


def test_schedule_cosine_hits_endpoints_and_midpoint():
    schedule = Schedule.parse("0.7:0.95")
    assert schedule.at(0.0) == pytest.approx(0.7)
    assert schedule.at(1.0) == pytest.approx(0.95)
    assert schedule.at(0.5) == pytest.approx((0.7 + 0.95) / 2)
    # cosine: a quarter of the way through, (1 - cos(pi/4)) / 2 of the change is done
    assert schedule.at(0.25) == pytest.approx(0.7 + 0.25 * (1 - math.cos(math.pi / 4)) / 2)


def test_schedule_linear_decreasing_and_constant():
    schedule = Schedule.parse("2.5:2:linear")
    values = [schedule.at(t / 10) for t in range(11)]
    assert values[0] == 2.5 and values[-1] == 2.0
    assert all(a > b for a, b in pairwise(values))
    assert Schedule.parse("3").at(0.7) == 3.0
    assert str(Schedule.parse("0.7:0.95")) == "0.7:0.95"


def test_schedule_rejects_bad_text():
    with pytest.raises(ValueError):
        Schedule.parse("1:2:3:4")
    with pytest.raises(ValueError):
        Schedule.parse("1:2:square")


OPTIONS = (
    Option("beta", float, 6.0, "weight", low=0.0),
    Option("steps", int, 10, "steps", low=1),
    Option("mode", str, "eval", "mode", choices=("train", "eval")),
    Option("lam", Schedule, "0.7:0.95", "schedule", low=0.0, high=1.0),
    Option("tau", float, 1.0, "temperature", low=0.0, low_open=True),
    Option("flag", bool, False, "a switch"),
)


def test_defaults_and_conversion():
    values = resolve_options(OPTIONS, {"beta": "8/2", "steps": "3", "flag": "yes", "lam": "0.1:0.2"}, "objective 'x'")
    assert values["beta"] == 4.0 and values["steps"] == 3 and values["flag"] is True
    assert values["mode"] == "eval" and values["lam"] == Schedule(0.1, 0.2)


@pytest.mark.parametrize(
    "given, fragment",
    [
        ({"gamma": 1}, "unknown option 'gamma'"),
        ({"beta": "abc"}, "option 'beta' expects float"),
        ({"beta": -1}, "option 'beta' must lie in [0, inf]"),
        ({"steps": 0}, "option 'steps' must lie in [1, inf]"),
        ({"steps": 2.5}, "option 'steps' expects int"),
        ({"mode": "both"}, "must be one of train, eval"),
        ({"lam": "0.5:1.5"}, "option 'lam' must lie in [0, 1]"),
        ({"tau": 0}, "option 'tau' must lie in (0, inf]"),
        ({"flag": "maybe"}, "option 'flag' expects bool"),
    ],
)
def test_errors_name_component_and_option(given, fragment):
    with pytest.raises(OptionError) as info:
        resolve_options(OPTIONS, given, "objective 'x'")
    assert str(info.value).startswith("objective 'x': ")
    assert fragment in str(info.value)


def test_what_depends_on_the_length_of_training():
    schedule = Option("tau", Schedule, "2", "a schedule")
    assert not depends_on_training_length(schedule, Schedule.parse("2"))  # constant: the same at any length
    assert depends_on_training_length(schedule, Schedule.parse("2.5:2"))
    assert not depends_on_training_length(schedule, None)
    share = Option("start", float, 0.45, "a fraction of the epochs", fraction_of_training=True)
    assert depends_on_training_length(share, 0.45)
    assert not depends_on_training_length(Option("beta", float, 6.0, "a weight"), 6.0)
