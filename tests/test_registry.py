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
    write_dist(tmp_path, "good-plugin", "1.2", """
        [advkit.objectives]
        myobj = good_mod:MyObjective
        notacomponent = good_mod:NotAComponent
        """, "good_mod", GOOD_MODULE)
    write_dist(tmp_path, "broken-plugin", "0.1", """
        [advkit.objectives]
        broken = broken_mod:Thing
        """, "broken_mod", "raise ImportError('needs libfoo')\n")
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
    write_dist(plugin_root, "other-plugin", "3.0", """
        [advkit.objectives]
        myobj = other_mod:MyObjective
        """)
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
    expected = {("rectifier", "onehot"), ("rectifier", "label-smoothing"), ("attack", "pgd"), ("attack", "trades-kl"),
                ("attack", "fgsm"), ("attack", "none"), ("objective", "standard"), ("objective", "at"),
                ("objective", "trades")}
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
