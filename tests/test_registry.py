"""Registry behaviour with entry points built in the test: fake distributions written to a folder."""

import textwrap

import pytest

from advkit import OptionError, PluginError
from advkit.registry import Registry, build_attack, component_options

GOOD_MODULE = '''
from advkit import Objective, Option, soft_cross_entropy


class MyObjective(Objective):
    """Plain AT under another name."""

    options = (Option("scale", float, 1.0, "loss scale", low=0.0),)

    def loss(self, ctx):
        return self.scale * soft_cross_entropy(ctx.model(ctx.x_adv), ctx.targets)


class NotAComponent:
    pass
'''


def write_dist(root, name, version, entry_points, module_name=None, module_text=None):
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module_name:
        (root / f"{module_name}.py").write_text(module_text)


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_dist(
        tmp_path,
        "good-plugin",
        "1.2",
        """
        [advkit.objectives]
        myobj = good_mod:MyObjective
        notacomponent = good_mod:NotAComponent
        """,
        "good_mod",
        GOOD_MODULE,
    )
    write_dist(
        tmp_path,
        "broken-plugin",
        "0.1",
        """
        [advkit.objectives]
        broken = broken_mod:Thing
        """,
        "broken_mod",
        "raise ImportError('needs libfoo')\n",
    )
    return tmp_path


def test_listing_reads_metadata_without_importing(plugin_root):
    registry = Registry([str(plugin_root)])
    names = {(e.kind, e.name, e.distribution, e.version) for e in registry.entries()}
    assert ("objective", "myobj", "good-plugin", "1.2") in names
    assert ("objective", "broken", "broken-plugin", "0.1") in names
    import sys

    assert "broken_mod" not in sys.modules  # listing did not import the broken plugin


def test_selected_plugin_loads_and_unrelated_broken_one_does_not_matter(plugin_root):
    cls = Registry([str(plugin_root)]).load("objective", "myobj")
    assert cls.__name__ == "MyObjective" and cls.name == "myobj"
    assert cls(scale="2").scale == 2.0


def test_broken_plugin_error_names_plugin_distribution_and_cause(plugin_root):
    with pytest.raises(PluginError) as info:
        Registry([str(plugin_root)]).load("objective", "broken")
    message = str(info.value)
    assert "'broken'" in message and "broken-plugin 0.1" in message and "ImportError: needs libfoo" in message


def test_unknown_name_lists_choices_and_suggests(plugin_root):
    with pytest.raises(PluginError) as info:
        Registry([str(plugin_root)]).find("objective", "myobjj")
    assert "did you mean 'myobj'" in str(info.value) and "broken" in str(info.value)


def test_duplicate_names_across_distributions_name_both(plugin_root):
    write_dist(
        plugin_root,
        "other-plugin",
        "3.0",
        """
        [advkit.objectives]
        myobj = other_mod:MyObjective
        """,
    )
    with pytest.raises(PluginError) as info:
        Registry([str(plugin_root)]).find("objective", "myobj")
    assert "good-plugin 1.2" in str(info.value) and "other-plugin 3.0" in str(info.value)


def test_entry_point_that_is_not_a_component_is_refused(plugin_root):
    with pytest.raises(PluginError, match="not a subclass of advkit.Objective"):
        Registry([str(plugin_root)]).load("objective", "notacomponent")


def test_option_errors_name_component_and_option(plugin_root):
    cls = Registry([str(plugin_root)]).load("objective", "myobj")
    with pytest.raises(OptionError, match="objective 'myobj': unknown option 'scal'"):
        cls(scal=1)
    with pytest.raises(OptionError, match="objective 'myobj': option 'scale' must lie in"):
        cls(scale=-1)


def test_torchattacks_attacks_are_available_with_signature_options(tiny_net):
    registry = Registry([])
    cls = registry.load("attack", "torchattacks:PGD")
    names = {option.name for option in component_options(cls)}
    assert {"eps", "alpha", "steps", "random_start"} <= names
    attack = build_attack(cls, tiny_net, {"eps": "8/255", "steps": "3"})
    assert attack.steps == 3 and attack.eps == pytest.approx(8 / 255)
    with pytest.raises(OptionError, match="torchattacks:PGD"):
        build_attack(cls, tiny_net, {"stepz": 3})
    with pytest.raises(PluginError, match="did you mean 'torchattacks:PGD'"):
        registry.find("attack", "torchattacks:PDG")


def test_builtins_are_registered_through_entry_points():
    registry = Registry()
    builtins = {(e.kind, e.name) for e in registry.entries() if e.distribution == "advkit"}
    expected = {
        ("rectifier", "onehot"),
        ("rectifier", "label-smoothing"),
        ("attack", "pgd"),
        ("attack", "trades-kl"),
        ("attack", "fgsm"),
        ("attack", "none"),
        ("objective", "standard"),
        ("objective", "at"),
        ("objective", "trades"),
    }
    assert expected <= builtins


def test_plugins_check_exits_1_when_a_plugin_is_broken(plugin_root, monkeypatch, run_cli):
    import advkit.registry

    monkeypatch.setattr(advkit.registry, "_DEFAULT", Registry([str(plugin_root)]))
    code, out, err = run_cli(["plugins", "--check"])
    assert code == 1 and "broken: " in out and "components are broken or claimed twice" in err
    code, out, _ = run_cli(["plugins"])  # listing alone imports nothing and judges nothing
    assert code == 0 and "installed" in out and "nothing imported" in out


def test_plugins_check_passes_on_the_installed_components(run_cli):
    code, out, _ = run_cli(["plugins", "--check"])
    assert code == 0 and "broken" not in out


# ------------------------------------------------------------------ classes registered at run time (a script's own)
def counting_rectifier():
    """A fresh class object of the same qualified name on every call, as a re-run notebook cell makes."""
    from advkit import LabelRectifier, Option, one_hot

    class Counting(LabelRectifier):
        """One-hot targets, smoothed by ``smoothing``; counts its calls."""

        options = (Option("smoothing", float, 0.0, "mass spread evenly over all classes", low=0.0, high=1.0),)

        def setup(self, run):
            self.calls = 0

        def targets(self, ctx):
            self.calls += 1
            return (1 - self.smoothing) * one_hot(ctx.y, ctx.num_classes) + self.smoothing / ctx.num_classes

    return Counting


def test_runtime_registration_refuses_a_name_an_installed_distribution_provides(plugin_root):
    from advkit import Objective

    class Mine(Objective):
        pass

    with pytest.raises(PluginError) as info:
        Registry([str(plugin_root)]).register("objective", "myobj", Mine)
    message = str(info.value)
    assert "test_registry:" in message and "Mine" in message  # the class being registered …
    assert "good-plugin 1.2" in message and "good_mod:MyObjective" in message  # … and the installed one


def test_runtime_registration_checks_interface_kind_and_name():
    registry = Registry([])
    Counting = counting_rectifier()
    with pytest.raises(PluginError, match="not a subclass of advkit.Objective"):
        registry.register("objective", "counting", Counting)
    with pytest.raises(PluginError, match="not a subclass of advkit.Attack"):
        registry.register("attack", "counting", object)
    with pytest.raises(PluginError, match="unknown component kind 'rectifiers'"):
        registry.register("rectifiers", "counting", Counting)
    for bad in ("torchattacks:Counting", "my.counting", "", "-x"):
        with pytest.raises(PluginError, match="a name is letters, digits"):
            registry.register("rectifier", bad, Counting)
    assert registry.names("rectifier") == []  # nothing was registered by the failures


def test_runtime_registration_is_scoped_by_its_handle_and_a_rerun_cell_replaces_it():
    registry = Registry([])
    first, again = counting_rectifier(), counting_rectifier()
    with registry.register("rectifier", "counting", first) as handle:
        assert registry.load("rectifier", "counting") is first and first.name == "counting"
        entry = registry.find("rectifier", "counting")
        assert entry.distribution == "(registered at run time)" and entry.target.endswith(
            ":counting_rectifier.<locals>.Counting"
        )
        registry.register("rectifier", "counting", again)  # the same definition, re-run: replaces it
        assert registry.load("rectifier", "counting") is again
        handle.remove()  # the replaced registration's handle leaves the new one alone
        assert registry.load("rectifier", "counting") is again

        from advkit import LabelRectifier

        class Other(LabelRectifier):
            pass

        with pytest.raises(PluginError, match="counting_rectifier.<locals>.Counting is registered under that name"):
            registry.register("rectifier", "counting", Other)
    registry.register("rectifier", "counting", again).remove()
    with pytest.raises(PluginError, match="unknown rectifier 'counting'"):
        registry.load("rectifier", "counting")


def test_a_runtime_component_trains_is_recorded_and_a_resume_needs_it_registered_again(tmp_path, monkeypatch, run_cli):
    import yaml

    import advkit.registry
    from advkit import TrainConfig, Trainer

    monkeypatch.setattr(advkit.registry, "_DEFAULT", None)  # the CLI below: a fresh process's registry
    Counting = counting_rectifier()
    config = TrainConfig(
        dataset="digits",
        model="small-cnn",
        objective="at",
        rectifier="counting",
        eps=0.1,
        epochs=2,
        batch_size=64,
        lr=0.05,
        val_size=100,
        train_size=128,
        val_steps=1,
        device="cpu",
        options={"attack": {"steps": 1}, "counting": {"smoothing": 0.2}},
    )
    registry = Registry()
    registry.register("rectifier", "counting", Counting)
    run = tmp_path / "run"
    trainer = Trainer(config, run, registry=registry, progress=False)
    trainer.fit(stop_after_epoch=1)
    assert trainer.rectifier.calls == 2 and trainer.rectifier.smoothing == 0.2  # 128 examples, batches of 64
    saved = yaml.safe_load((run / "config.yaml").read_text())
    recorded = {"rectifier": {"name": "counting", "class": f"{__name__}:counting_rectifier.<locals>.Counting"}}
    assert saved["rectifier"] == "counting" and saved["options"]["rectifier"] == {"smoothing": 0.2}
    assert saved["software"]["registered_at_run_time"] == recorded
    assert all(not name.startswith("(") for name in saved["software"]["plugins"])  # not a distribution

    with pytest.raises(PluginError) as info:
        Trainer.resume_run(run, registry=Registry(), progress=False)
    message = str(info.value)
    assert "rectifier 'counting'" in message and "registered at run time" in message
    assert "advkit.register_component('rectifier', 'counting', Counting)" in message
    code, _, err = run_cli(["train", "--resume", str(run)])
    assert code == 2 and "rectifier 'counting'" in err and "resume from Python" in err

    again = Registry()
    again.register("rectifier", "counting", counting_rectifier())
    resumed = Trainer.resume_run(run, registry=again, progress=False)
    assert [record["epoch"] for record in resumed.fit()] == [1, 2] and resumed.rectifier.calls == 2
