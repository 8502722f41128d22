"""--compile: torch.compile (inductor on CPU) gives the eager results to float tolerance, and plain checkpoints."""

import torch

from advkit import TrainConfig, Trainer

SETTINGS = dict(
    dataset="digits",
    model="small-cnn",
    objective="at",
    eps=0.1,
    epochs=1,
    batch_size=64,
    val_steps=1,
    seed=1,
    wa=0.9,
    options={"attack": {"steps": "2"}},
)


def test_compiled_training_matches_eager_and_saves_plain_checkpoints(tmp_path):
    eager = Trainer(TrainConfig(**SETTINGS), tmp_path / "eager", progress=False)
    compiled = Trainer(TrainConfig(**SETTINGS, compile=True), tmp_path / "compiled", progress=False)
    x = next(iter(eager.val_loader))[0][:16]
    with torch.no_grad():
        assert torch.allclose(compiled.model.eval()(x), eager.model.eval()(x), atol=1e-5)
    for trainer in (eager, compiled):
        trainer.fit(stop_after_steps=3)
    # Inductor fuses and reorders float arithmetic: after 3 SGD steps at lr 0.1 weights agree to ~5e-5.
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert a.keys() == b.keys()  # no "_orig_mod." prefixes: checkpoints load into a plain model
    assert max((a[key].float() - b[key].float()).abs().max().item() for key in a) < 1e-3
    saved = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)
    assert saved["model"].keys() == a.keys() and saved["config"]["compile"] is True
    # the weight average is a plain (uncompiled) copy that follows the compiled model's weights
    average = compiled.averages[0.9].model
    assert "_compiled_call_impl" not in vars(average) or average._compiled_call_impl is None
    assert not torch.equal(average.state_dict()["net.linear.weight"], b["net.linear.weight"])
