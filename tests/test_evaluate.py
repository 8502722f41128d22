"""advkit eval and plot calibration: attack specs, per-example worst case, the official AutoAttack, the CLI."""

import dataclasses
import json
import logging
import math

import pytest
import torch
from torch import nn

from advkit.compat import import_autoattack
from advkit.errors import AdvkitError, OptionError
from advkit.evaluate import (
    AttackResult,
    OfficialAutoAttack,
    evaluate_checkpoint,
    load_eval_setup,
    parse_attack,
    run_attacks,
    split_attack_text,
    worst_case,
)
from advkit.testing import train_digits

EPS = 0.1
N = 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {
        "target": train_digits(root / "target", epochs=2, seed=0, wa=0.9),
        "surrogate": train_digits(root / "surrogate", epochs=2, seed=1),
    }


@pytest.fixture(scope="module")
def setup(runs):
    return load_eval_setup(runs["target"], n_examples=N, device="cpu")


# ------------------------------------------------------------------------------------- specs
def test_attack_text_syntax():
    assert split_attack_text("pgd") == ("pgd", {})
    assert split_attack_text("pgd:steps=50,restarts=5") == ("pgd", {"steps": "50", "restarts": "5"})
    assert split_attack_text("torchattacks:APGD") == ("torchattacks:APGD", {})
    assert split_attack_text("torchattacks:APGD:steps=3") == ("torchattacks:APGD", {"steps": "3"})
    with pytest.raises(AdvkitError, match="name:key=value"):
        split_attack_text("pgd:steps=5,restarts")


def test_parse_attack_types_and_checks_options():
    spec = parse_attack("pgd:steps=50,restarts=5,alpha=1/255")
    assert spec.options == {"steps": 50, "restarts": 5, "alpha": pytest.approx(1 / 255)}
    assert parse_attack("apgd-t").options == {"iters": 100, "restarts": 1, "targets": 9}
    assert parse_attack("square").options["queries"] == 5000
    with pytest.raises(
        OptionError, match="attack 'pgd': unknown option 'step' \\(valid options: alpha, restarts, steps\\)"
    ):
        parse_attack("pgd:step=5")
    with pytest.raises(OptionError, match="attack 'pgd': option 'steps' must lie in \\[1, inf\\]"):
        parse_attack("pgd:steps=0")
    with pytest.raises(AdvkitError, match="attack 'cw' supports --norm Linf, not L2"):
        parse_attack("cw", norm="L2")
    with pytest.raises(AdvkitError, match="unknown evaluation attack 'pgdd'"):
        parse_attack("pgdd")
    with pytest.raises(AdvkitError, match="did you mean 'torchattacks:PGD'"):
        parse_attack("torchattacks:PDG")


def result(flags):
    correct = torch.tensor(flags, dtype=torch.bool)
    return AttackResult(parse_attack("clean"), "", "advkit", torch.zeros(len(flags)), correct, 0.0)


def test_worst_case_is_per_example_not_min_of_accuracies():
    results = {"a": result([1, 1, 0, 1]), "b": result([1, 0, 1, 1])}
    assert results["a"].accuracy == results["b"].accuracy == 0.75
    assert worst_case(results).tolist() == [True, False, False, True]  # 50%, below both accuracies


# ------------------------------------------------------------------------------------- attacks on a trained model
CHEAP_ATTACKS = [
    "fgsm",
    "pgd:steps=10",
    "pgd:steps=5,restarts=2",
    "cw:steps=10",
    "cw2:steps=30,rounds=2,max_norm=1.0",
    "apgd-ce:iters=10",
    "apgd-t:iters=10,targets=3",
    "square:queries=100",
    "transfer:steps=10",
    "torchattacks:FGSM",
]


@pytest.fixture(scope="module")
def attacked(runs, setup):
    from advkit.evaluate import load_surrogate

    ctx = setup.context(None, "Linf", seed=0, surrogate=load_surrogate(runs["surrogate"], setup.info, setup.device))
    specs = [parse_attack(text) for text in ["clean"] + CHEAP_ATTACKS]
    return run_attacks(ctx, setup.x, setup.y, specs, batch_size=N, progress=False)  # the batching of direct_autoattack


@pytest.mark.parametrize("text", CHEAP_ATTACKS)
def test_each_attack_lowers_accuracy_and_respects_eps_and_box(attacked, setup, text):
    clean, outcome = attacked["clean"], attacked[text]
    assert outcome.accuracy < clean.accuracy
    assert not (outcome.correct & ~clean.correct).any()  # misclassified clean examples stay misclassified
    delta = outcome.x_adv - setup.x
    if text.startswith("cw2"):
        assert delta.flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    else:
        assert delta.abs().max() <= EPS + 1e-6
    assert outcome.x_adv.min() >= 0 and outcome.x_adv.max() <= 1
    # the stored x_adv is what fooled the model: predictions on it reproduce the per-example flags
    with torch.no_grad():
        assert torch.equal(setup.model(outcome.x_adv).argmax(1) == setup.y, outcome.correct)


def test_l2_pgd_stays_in_the_l2_ball(setup):
    ctx = setup.context(0.5, "L2", seed=0)
    outcome = run_attacks(ctx, setup.x, setup.y, [parse_attack("pgd:steps=10", "L2")], batch_size=N)["pgd:steps=10"]
    clean = (setup.model(setup.x).argmax(1) == setup.y).double().mean()
    assert outcome.accuracy < clean
    assert (outcome.x_adv - setup.x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert outcome.implementation == "torchattacks"  # PGDL2; the Linf PGD is advkit's


def test_cw2_rounds_raise_c_on_unbroken_examples(setup):
    ctx = setup.context(None, "Linf", seed=0)
    specs = [parse_attack("cw2:steps=30,rounds=1"), parse_attack("cw2:steps=30,rounds=3")]
    one, three = run_attacks(ctx, setup.x, setup.y, specs, batch_size=N).values()
    assert three.accuracy < one.accuracy  # c = 0.1 alone rarely succeeds; c = 1 and 10 do
    assert not (three.correct & ~one.correct).any()  # the first round is the same; later rounds only add


def test_results_do_not_depend_on_attack_order(setup):
    ctx = setup.context(None, "Linf", seed=3)
    specs = [parse_attack("pgd:steps=5"), parse_attack("fgsm")]
    forward = run_attacks(ctx, setup.x, setup.y, specs, batch_size=N)
    backward = run_attacks(ctx, setup.x, setup.y, specs[::-1], batch_size=N)
    assert torch.equal(forward["pgd:steps=5"].x_adv, backward["pgd:steps=5"].x_adv)


# ------------------------------------------------------------------------------------- the official AutoAttack
def direct_autoattack(model, x, y, eps, attacks, configure=None):
    """pyautoattack called the way its README does, on the same model, data and seed."""
    module = import_autoattack()
    model.eval()
    if attacks is None:
        aa = module.AutoAttack(model, eps=eps, norm="Linf", seed=0, version="standard")
    else:
        aa = module.AutoAttack(model, attacks=attacks, eps=eps, norm="Linf", seed=0, version="custom")
        configure(module, aa)
    return aa.run_standard_evaluation(x, y, batch_size=N)


# Cheap but faithful: the official sub-attacks with fewer iterations/queries, built with the official
# constructors exactly as AutoAttack's standard version parametrises them (AutoAttack standard itself
# takes minutes on a CPU once any example survives APGD-CE).
OFFICIAL = {
    "apgd-ce:iters=10": (
        "apgd-ce",
        lambda m, aa: setattr(
            aa,
            "apgd",
            m.autopgd_base.APGDAttack(aa.model, n_iter=10, n_restarts=1, eps=EPS, norm="Linf", seed=0, device="cpu"),
        ),
    ),
    "apgd-t:iters=10,targets=3": (
        "apgd-t",
        lambda m, aa: setattr(
            aa,
            "apgd_targeted",
            m.autopgd_base.APGDAttack_targeted(
                aa.model, n_iter=10, n_restarts=1, n_target_classes=3, eps=EPS, norm="Linf", seed=0, device="cpu"
            ),
        ),
    ),
    "square:queries=100": (
        "square",
        lambda m, aa: setattr(
            aa,
            "square",
            m.square.SquareAttack(
                aa.model,
                p_init=0.8,
                n_queries=100,
                eps=EPS,
                norm="Linf",
                n_restarts=1,
                seed=0,
                device="cpu",
                resc_schedule=False,
            ),
        ),
    ),
}


@pytest.mark.parametrize("text", list(OFFICIAL))
def test_official_attacks_match_pyautoattack_called_directly(attacked, setup, text):
    name, configure = OFFICIAL[text]
    x_adv, y_adv = direct_autoattack(setup.model, setup.x, setup.y, EPS, [name], configure)
    assert torch.equal(attacked[text].correct, y_adv == setup.y)
    assert torch.equal(attacked[text].x_adv, x_adv)
    assert 0 < attacked[text].correct.sum() < N  # a mixed outcome, so the comparison means something


def test_autoattack_standard_matches_pyautoattack_called_directly(setup):
    eps = 0.3  # large enough that APGD-CE breaks every example and the slow later attacks are skipped
    ctx = setup.context(eps, "Linf", seed=0)
    ours = run_attacks(ctx, setup.x, setup.y, [parse_attack("autoattack")], batch_size=N)["autoattack"]
    x_adv, y_adv = direct_autoattack(setup.model, setup.x, setup.y, eps, None)
    assert torch.equal(ours.correct, y_adv == setup.y) and torch.equal(ours.x_adv, x_adv)
    assert (ours.x_adv - setup.x).abs().max() <= eps + 1e-6


def test_autoattack_stages_are_the_official_running_tally(attacked, setup):
    """AutoAttack logs the robust accuracy after each sub-attack; advkit keeps it (the first stage is exactly
    that sub-attack alone, the last is the final per-example outcome)."""
    first, second = OFFICIAL["apgd-ce:iters=10"][1], OFFICIAL["apgd-t:iters=10,targets=3"][1]
    runner = OfficialAutoAttack(
        EPS, "Linf", 0, "custom", ["apgd-ce", "apgd-t"], lambda module, aa: (first(module, aa), second(module, aa))
    )
    _, correct = runner.run(setup.model, setup.x, setup.y, N, None)
    assert list(runner.stages) == ["apgd-ce", "apgd-t"]
    # logged as a percentage with 2 decimals (exact for n <= 10,000; here n = 32)
    assert runner.stages["apgd-ce"] == pytest.approx(attacked["apgd-ce:iters=10"].accuracy, abs=5e-5)
    assert runner.stages["apgd-t"] == pytest.approx(correct.double().mean().item(), abs=5e-5)
    assert runner.stages["apgd-t"] < runner.stages["apgd-ce"]  # APGD-T found more: the stages differ
    assert logging.getLogger("auto-attack").handlers == []  # the recorder is removed afterwards


def test_autoattack_warnings_are_recorded_once_each(setup, capsys):
    """A model whose logits do not depend on the input has zero gradients everywhere: the official APGD on
    the DLR loss warns once per batch and target class; the runner keeps each distinct warning once and
    still prints every one."""
    flat = nn.Sequential(nn.Flatten(), nn.Linear(setup.x[0].numel(), 10))
    nn.init.zeros_(flat[1].weight)
    with torch.no_grad():
        flat[1].bias.copy_(torch.arange(10.0))  # predicts class 9 everywhere
    runner = parse_attack("apgd-t:iters=10,targets=3").build(setup.context(EPS, "Linf", seed=0))
    x, y = setup.x[:8], torch.full((8,), 9)
    _, correct = runner.run(flat, torch.cat([x, x]), torch.cat([y, y]), 8, None)  # two batches of 8
    assert correct.all() and runner.stages == {}  # a single sub-attack has no stages to tell apart
    assert len(runner.warnings) == 1 and "there are 8 points with zero gradient" in runner.warnings[0]
    assert capsys.readouterr().err.count("autoattack: there are 8 points with zero gradient") == 2 * 3


def test_autoattack_spec_builds_the_official_standard_version(setup):
    aa = OfficialAutoAttack(EPS, "Linf", 0, "standard").build(setup.model, torch.device("cpu"))
    assert type(aa).__module__.startswith(("pyautoattack", "autoattack"))
    assert aa.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (aa.apgd.n_iter, aa.apgd.n_restarts, aa.apgd_targeted.n_target_classes, aa.square.n_queries) == (
        100,
        1,
        9,
        5000,
    )


# ------------------------------------------------------------------------------------- checkpoints and CLI
def test_wa_flag_evaluates_the_averaged_weights(runs, setup):
    from advkit.checkpoint import load_trained_model

    report = evaluate_checkpoint(runs["target"], ["clean"], n_examples=N, averaged=True, device="cpu")
    averaged, _, _ = load_trained_model(setup.path, "cpu", averaged=True)
    with torch.no_grad():
        expected = (averaged(setup.x).argmax(1) == setup.y).double().mean().item()
    assert report["model"] == "weight-averaged" and report["accuracy"]["clean"] == pytest.approx(expected)


def test_eval_cli_autoattack_and_pgd_with_json_and_markdown(runs, tmp_path, run_cli):
    json_path, md_path = tmp_path / "r.json", tmp_path / "r.md"
    code, out, err = run_cli(
        [
            "eval",
            str(runs["target"]),
            "--attack",
            "autoattack",
            "--attack",
            "pgd",
            "--attack",
            "clean",
            "--eps",
            "0.3",
            "--n-examples",
            "16",
            "--json",
            str(json_path),
            "--markdown",
            str(md_path),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0, err
    report = json.loads(json_path.read_text())
    accuracy = report["accuracy"]
    assert set(accuracy) == {"autoattack", "pgd", "clean"} and report["n_examples"] == 16 and report["eps"] == 0.3
    assert report["worst_case"] <= min(accuracy.values())
    assert [a["implementation"] for a in report["attacks"]] == ["pyautoattack", "advkit", "advkit"]
    # eps 0.3 breaks every example in APGD-CE, so AutoAttack skips the rest: one stage, at 0%
    assert accuracy["clean"] > 0 and report["attacks"][0]["stages"] == {"apgd-ce": 0.0}
    assert "stages" not in report["attacks"][1]
    assert "worst case" in out and "AutoAttack standard (Linf)" in out and "after apgd-ce" in out
    markdown = md_path.read_text()
    assert "| `autoattack` | AutoAttack standard (Linf) |" in markdown and "| `worst case` |" in markdown
    assert "| after apgd-ce | robust so far (AutoAttack's own tally) | 0.00% |" in markdown


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--norm", "L2"], "--norm L2 needs --eps"),
        (["--attack", "transfer"], "attack 'transfer' needs --surrogate"),
        (["--attack", "pgd:steps=0"], "attack 'pgd': option 'steps' must lie in [1, inf]"),
        (["--attack", "cw", "--norm", "L2", "--eps", "1"], "attack 'cw' supports --norm Linf, not L2"),
        (["--eps", "1.5"], "--eps must lie in [0, 1] for Linf"),
    ],
)
def test_eval_cli_user_errors_are_one_line_exit_2(runs, extra, message, run_cli):
    code, _, err = run_cli(["eval", str(runs["target"]), "--n-examples", "4", "--quiet", *extra])
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_eval_list_attacks_needs_no_target(run_cli):
    code, out, _ = run_cli(["eval", "--list-attacks"])
    assert code == 0
    assert "autoattack  [pyautoattack; norms Linf, L2]" in out and "    queries  int [1, inf]  default 5000" in out


def test_plot_calibration_cli_with_ood(runs, tmp_path, run_cli):
    from advkit.data import debian_fashion_mnist_dir

    ood = ["--ood", "fashion-mnist"] if debian_fashion_mnist_dir() is not None else []
    code, out, err = run_cli(
        [
            "plot",
            "calibration",
            str(runs["target"]),
            "--attack",
            "pgd:steps=5",
            "--n-examples",
            "64",
            "--out-dir",
            str(tmp_path / "cal"),
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "cal.json"),
            "--quiet",
            *ood,
        ]
    )
    assert code == 0, err
    report = json.loads((tmp_path / "cal.json").read_text())
    assert report["n_examples"] == 64 and report["attack_description"] == "PGD-5 (Linf, α=0.025)"
    assert report["adversarial"]["accuracy"] < report["clean"]["accuracy"]
    assert 0 < report["js_clean_adversarial"] < math.log(2)
    for name in ("reliability.png", "entropy.png"):
        assert (tmp_path / "cal" / name).read_bytes().startswith(b"\x89PNG")
    assert "JS divergence clean ↔ adversarial" in out
    if ood:  # 28×28 fashion images shrunk to the digits model's 8×8 input
        assert report["ood"]["n_examples"] == 64 and 0 < report["ood"]["mean_entropy"] <= math.log(10)
        assert "out-of-distribution (fashion-mnist, n=64)" in out


def test_different_surrogate_dataset_is_refused(runs, setup, tmp_path):
    from advkit.evaluate import load_surrogate

    other = dataclasses.replace(setup.info, name="mnist")
    with pytest.raises(AdvkitError, match="was trained on digits, the evaluated model on mnist"):
        load_surrogate(runs["surrogate"], other, setup.device)
