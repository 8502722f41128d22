import pytest
import torch
import torchattacks

from advkit import kl_divergence, soft_cross_entropy
from advkit.builtin.attacks import FGSM, PGD, NoAttack, TradesKL

EPS = 0.1


def model_state(model):
    modes = {name: module.training for name, module in model.named_modules()}
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    grads = {name: p.grad for name, p in model.named_parameters()}
    return modes, requires, grads


def assert_in_ball(x_adv, x, eps=EPS):
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= eps + 1e-6


@pytest.mark.parametrize("attack_cls", [PGD, TradesKL, FGSM])
@pytest.mark.parametrize("start", ["uniform", "uniform-noclamp", "gauss", "tiny-uniform", "none"])
def test_attacks_stay_in_ball_and_box(tiny_net, batch, attack_cls, start):
    x, y = batch
    x = x.clone()
    x[0] = 0.0  # pixels at the box edges: the start point must not push the result outside [0, 1]
    x[1] = 1.0
    x_adv = attack_cls(tiny_net, eps=EPS, start=start)(x, y)
    assert_in_ball(x_adv, x)
    assert not x_adv.requires_grad


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_attack_restores_every_flag_and_leaves_no_grad(tiny_net, batch, bn_mode):
    x, y = batch
    tiny_net.train()
    tiny_net.drop.eval()  # a mixed configuration: only restoring the top-level flag would lose this
    tiny_net.conv.bias.requires_grad_(False)
    before = model_state(tiny_net)
    PGD(tiny_net, eps=EPS, bn_mode=bn_mode)(x, y)
    after = model_state(tiny_net)
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert all(grad is None for grad in after[2].values())


def test_bn_mode_decides_whether_running_stats_move(tiny_net, batch):
    x, y = batch
    stats = tiny_net.bn.running_mean.clone()
    PGD(tiny_net, eps=EPS, steps=3, bn_mode="eval")(x, y)
    assert torch.equal(tiny_net.bn.running_mean, stats)
    PGD(tiny_net, eps=EPS, steps=3, bn_mode="train")(x, y)
    assert not torch.equal(tiny_net.bn.running_mean, stats)


def test_pgd_increases_the_loss_it_maximises(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    soft = torch.softmax(torch.randn(8, 3, generator=torch.Generator().manual_seed(2)), dim=1)
    for labels in (y, soft):
        x_adv = PGD(tiny_net, eps=EPS, steps=10, bn_mode="eval")(x, labels)
        with torch.no_grad():
            clean_loss = soft_cross_entropy(tiny_net(x), labels, reduction="none")
            adv_loss = soft_cross_entropy(tiny_net(x_adv), labels, reduction="none")
        assert (adv_loss >= clean_loss - 1e-6).all() and adv_loss.mean() > clean_loss.mean()


def test_cw_loss_raises_the_margin(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    x_adv = PGD(tiny_net, eps=EPS, loss="cw", bn_mode="eval")(x, y)
    with torch.no_grad():
        true_clean = tiny_net(x).gather(1, y[:, None])
        true_adv = tiny_net(x_adv).gather(1, y[:, None])
    assert true_adv.mean() < true_clean.mean()


def test_restarts_keep_the_worst_case_per_sample(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    torch.manual_seed(5)
    single = PGD(tiny_net, eps=EPS, steps=2, bn_mode="eval")(x, y)
    torch.manual_seed(5)  # the first restart then replays the single run exactly
    multi = PGD(tiny_net, eps=EPS, steps=2, restarts=4, bn_mode="eval")(x, y)
    assert_in_ball(multi, x)
    with torch.no_grad():
        loss_single = soft_cross_entropy(tiny_net(single), y, reduction="none")
        loss_multi = soft_cross_entropy(tiny_net(multi), y, reduction="none")
    assert (loss_multi >= loss_single - 1e-6).all()


def test_trades_kl_moves_away_from_the_clean_prediction(tiny_net, batch):
    x, _ = batch
    tiny_net.eval()
    x_adv = TradesKL(tiny_net, eps=EPS)(x)
    with torch.no_grad():
        kl = kl_divergence(torch.softmax(tiny_net(x), 1), tiny_net(x_adv), "sum")
    assert kl > 1e-4


def test_fgsm_is_one_full_step(tiny_net, batch):
    x, y = batch
    x = x.clamp(0.2, 0.8)  # away from the box so no pixel is clipped
    tiny_net.eval()
    x_adv = FGSM(tiny_net, eps=EPS)(x, y)
    assert torch.allclose((x_adv - x).abs(), torch.full_like(x, EPS), atol=1e-6)


def test_step_size_defaults_to_a_quarter_of_eps(tiny_net):
    assert PGD(tiny_net, eps=8 / 255).step_size == pytest.approx(2 / 255)
    assert PGD(tiny_net, eps=8 / 255, alpha=0.5 / 255).step_size == pytest.approx(0.5 / 255)


def test_advkit_attacks_are_torchattacks_attacks(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    pgd = PGD(tiny_net, eps=EPS, bn_mode="eval")
    assert isinstance(pgd, torchattacks.attack.Attack)
    combined = torchattacks.MultiAttack([FGSM(tiny_net, eps=EPS), pgd])
    assert_in_ball(combined(x, y), x)
    assert torch.equal(NoAttack(tiny_net)(x, y), x)


def test_no_attack_returns_a_copy(tiny_net, batch):
    from advkit.builtin.attacks import NoAttack

    x, y = batch
    x_adv = NoAttack(tiny_net)(x, y)
    assert torch.equal(x_adv, x) and x_adv.data_ptr() != x.data_ptr()
