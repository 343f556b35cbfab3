"""Top-down Q-learning: geometry, gradient isolation, target-network sync, and learning on planted tasks."""

from __future__ import annotations

import pytest
import torch

from robust_uatt.models.top_down import TopDown, TopDownChoice


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core box: intra-op threads only add contention (25 s -> 2 s under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# Expected (x0, y0, x1, y1) of quadrant a of the whole image: 0 TL, 1 TR, 2 BL, 3 BR.
QUADS = {
    0: (-1.0, -1.0, 0.0, 0.0),
    1: (0.0, -1.0, 1.0, 0.0),
    2: (-1.0, 0.0, 0.0, 1.0),
    3: (0.0, 0.0, 1.0, 1.0),
}


def planted(n: int, quadrant: torch.Tensor | int, size: int = 32, gen: torch.Generator | None = None) -> torch.Tensor:
    """Dim noise plus one bright square fully inside ``quadrant`` (per image)."""
    quad = torch.as_tensor(quadrant).expand(n) if not torch.is_tensor(quadrant) or quadrant.dim() == 0 else quadrant
    half, side = size // 2, size // 5
    x = 0.2 * torch.rand(n, 1, size, size, generator=gen)
    ox = torch.randint(0, half - side + 1, (n,), generator=gen) + (quad % 2) * half
    oy = torch.randint(0, half - side + 1, (n,), generator=gen) + (quad // 2) * half
    ar = torch.arange(size)
    in_x = (ar >= ox[:, None]) & (ar < ox[:, None] + side)
    in_y = (ar >= oy[:, None]) & (ar < oy[:, None] + side)
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return torch.where(mask, torch.ones_like(x), x)


def train_planted(model: TopDown, fixed: int | None, steps: int, batch: int = 32, seed: int = 0) -> float:
    """Train on the planted task with reward 1 iff the chosen quadrant holds the square; return eval accuracy."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.q_net.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        quad = torch.full((batch,), fixed) if fixed is not None else torch.randint(0, 4, (batch,), generator=gen)
        choice = model.select(planted(batch, quad, gen=gen))
        reward = (choice.actions[:, 0] == quad).float()
        loss = model.q_loss(choice, reward)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_optimizer_step()
    model.eval()
    quad = torch.full((400,), fixed) if fixed is not None else torch.randint(0, 4, (400,), generator=gen)
    choice = model.select(planted(400, quad, gen=gen))
    return (choice.actions[:, 0] == quad).float().mean().item()


@pytest.mark.parametrize("size", [28, 32, 100])
def test_shapes_and_eval_determinism(size: int) -> None:
    torch.manual_seed(0)
    model = TopDown(1, size).eval()
    x = torch.rand(5, 1, size, size)
    a, b = model.select(x), model.select(x)
    assert isinstance(a, TopDownChoice)
    assert a.actions.shape == (5, 1) and a.actions.dtype == torch.long
    assert a.box.shape == (5, 4) and a.l0.shape == (5, 2)
    assert len(a.q_values) == 1 and a.q_values[0].shape == (5, 4)
    assert len(a.states) == 1 and a.states[0].shape == (5, 4 * 64)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.box, b.box) and torch.equal(a.l0, b.l0)
    centre = torch.stack([(a.box[:, 0] + a.box[:, 2]) / 2, (a.box[:, 1] + a.box[:, 3]) / 2], 1)
    assert torch.allclose(a.l0, centre)
    assert torch.equal(a.actions[:, 0], a.q_values[0].argmax(1))


def test_box_geometry_levels2() -> None:
    model = TopDown(1, 32)
    whole = torch.tensor([[-1.0, -1.0, 1.0, 1.0]]).expand(4, 4)
    boxes = model.quadrant(whole, torch.arange(4))
    for a, expected in QUADS.items():
        assert torch.allclose(boxes[a], torch.tensor(expected)), a


def test_box_geometry_levels3_and_observation_content() -> None:
    """Force each action sequence by planting the square; the final box is the quadrant of the quadrant."""
    model = TopDown(1, 32, levels=3)
    whole = torch.tensor([[-1.0, -1.0, 1.0, 1.0]]).expand(16, 4)
    a1 = torch.arange(4).repeat_interleave(4)
    a2 = torch.arange(4).repeat(4)
    box = model.quadrant(model.quadrant(whole, a1), a2)
    for i in range(16):
        ex0, ey0, ex1, ey1 = QUADS[int(a1[i])]
        sx0, sy0, sx1, sy1 = QUADS[int(a2[i])]
        # map the unit-quadrant box into the parent box
        fx = lambda t: ex0 + (t + 1) / 2 * (ex1 - ex0)  # noqa: E731
        fy = lambda t: ey0 + (t + 1) / 2 * (ey1 - ey0)  # noqa: E731
        assert torch.allclose(box[i], torch.tensor([fx(sx0), fy(sy0), fx(sx1), fy(sy1)])), i
    # second decision: the bottom-right region seen at pyramid level 1 (16 px) is that level's 8x8 block, and
    # its sub-quadrants are exact 4x4 pixel blocks of it (32 px divides evenly)
    x = torch.rand(2, 1, 32, 32)
    level1 = model.pyramid(x)[1]
    assert level1.shape[-1] == 16
    obs = model.observe(level1, torch.tensor([QUADS[3]]).expand(2, 4))
    assert obs.shape == (2, 4, 1, 4, 4)
    assert torch.allclose(obs[:, 1, 0], level1[:, 0, 8:12, 12:16], atol=1e-5)  # top-right sub-quadrant
    assert torch.allclose(obs[:, 2, 0], level1[:, 0, 12:16, 8:12], atol=1e-5)  # bottom-left sub-quadrant


def test_levels3_select_and_loss_use_target() -> None:
    torch.manual_seed(0)
    model = TopDown(1, 32, levels=3, target_sync=3).train()
    choice = model.select(torch.rand(6, 1, 32, 32))
    assert choice.actions.shape == (6, 2) and len(choice.q_values) == 2 and len(choice.obs) == 2
    w, h = choice.box[:, 2] - choice.box[:, 0], choice.box[:, 3] - choice.box[:, 1]
    assert torch.allclose(w, torch.full((6,), 0.5)) and torch.allclose(h, torch.full((6,), 0.5))
    loss = model.q_loss(choice, torch.ones(6))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_train_l0_inside_box_and_exploration() -> None:
    torch.manual_seed(0)
    for exploration in ("epsilon", "softmax"):
        model = TopDown(1, 32, exploration=exploration, epsilon=1.0).train()
        choice = model.select(torch.rand(256, 1, 32, 32))
        x, y = choice.l0.unbind(1)
        b = choice.box
        assert bool(((x >= b[:, 0]) & (x <= b[:, 2]) & (y >= b[:, 1]) & (y <= b[:, 3])).all())
        assert choice.l0.std(0).min() > 0.1  # spread over the box, not its centre
        assert len(choice.actions.unique()) == 4  # exploration reaches every quadrant


def test_gradients_reach_only_q_params_and_not_from_select() -> None:
    torch.manual_seed(0)
    model = TopDown(1, 28).train()
    x = torch.rand(8, 1, 28, 28, requires_grad=True)
    choice = model.select(x)
    for t in [choice.box, choice.l0, *choice.q_values, *choice.states, *choice.obs]:
        assert not t.requires_grad  # the discrete choice passes no gradient downstream
    model.q_loss(choice, torch.rand(8).round()).backward()
    assert x.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.q_net.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.target_net.parameters())


def test_target_changes_only_at_sync_points() -> None:
    torch.manual_seed(0)
    model = TopDown(1, 16, levels=3, target_sync=3)
    opt = torch.optim.SGD(model.q_net.parameters(), lr=0.1)
    snapshot = [p.clone() for p in model.target_net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.q_net.parameters()))
    for step in range(1, 7):
        choice = model.select(torch.rand(4, 1, 16, 16))
        opt.zero_grad()
        model.q_loss(choice, torch.ones(4)).backward()
        opt.step()
        model.after_optimizer_step()
        target = list(model.target_net.parameters())
        online = list(model.q_net.parameters())
        if step % 3 == 0:
            assert all(torch.equal(t, o) for t, o in zip(target, online)), step
            snapshot = [p.clone() for p in target]
        else:
            assert all(torch.equal(t, s) for t, s in zip(target, snapshot)), step
            assert not all(torch.equal(t, o) for t, o in zip(target, online)), step
    assert int(model.updates) == 6


def test_learns_fixed_quadrant() -> None:
    torch.manual_seed(0)
    assert train_planted(TopDown(1, 32, feat_dim=32), fixed=2, steps=150) > 0.9


@pytest.mark.parametrize("exploration", ["epsilon", "softmax"])
def test_learns_to_look_for_the_object(exploration: str) -> None:
    torch.manual_seed(0)
    model = TopDown(1, 32, feat_dim=32, exploration=exploration)
    assert train_planted(model, fixed=None, steps=400) > 0.9


def test_two_decisions_learn_through_the_frozen_target() -> None:
    """levels=3: reward only after the second decision, so the first learns from max_a Q_target(s_2, a) (Eq. 8)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    size, side = 32, 4

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = 0.2 * torch.rand(n, 1, size, size, generator=gen)
        ox = torch.randint(0, size - side + 1, (n,), generator=gen)
        oy = torch.randint(0, size - side + 1, (n,), generator=gen)
        ar = torch.arange(size)
        m = ((ar >= oy[:, None]) & (ar < oy[:, None] + side))[:, :, None] & (
            (ar >= ox[:, None]) & (ar < ox[:, None] + side)
        )[:, None, :]
        centre = torch.stack([(ox + side / 2) / size * 2 - 1, (oy + side / 2) / size * 2 - 1], 1)
        return torch.where(m[:, None], torch.ones_like(x), x), centre

    def hit(box: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        inside_x = (c[:, 0] >= box[:, 0]) & (c[:, 0] <= box[:, 2])
        return (inside_x & (c[:, 1] >= box[:, 1]) & (c[:, 1] <= box[:, 3])).float()

    model = TopDown(1, size, levels=3, feat_dim=32, target_sync=10)
    opt = torch.optim.Adam(model.q_net.parameters(), lr=3e-3)
    for _ in range(400):
        x, c = batch(32)
        choice = model.select(x)
        loss = model.q_loss(choice, hit(choice.box, c))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_optimizer_step()
    model.eval()
    x, c = batch(400)
    assert hit(model.select(x).box, c).mean() > 0.9


def test_glimpse_plot_writes_png(tmp_path) -> None:
    """The plot helper draws the top-down box and a fake glimpse trace into a non-empty PNG, atomically."""
    from robust_uatt.viz.glimpses import plot_glimpses

    torch.manual_seed(0)
    model = TopDown(1, 28).eval()
    images = torch.rand(5, 1, 28, 28)
    choice = model.select(images)
    trace = {"locations": torch.rand(6, 5, 2) * 2 - 1, "patch_sizes": [8 * 2 / 28, 16 * 2 / 28], "box": choice.box}
    out = tmp_path / "sub" / "glimpses.png"
    plot_glimpses(images, trace, out, labels=torch.arange(5), preds=torch.tensor([0, 1, 0, 3, 0]), title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    assert [p.name for p in out.parent.iterdir()] == ["glimpses.png"]  # no temp file left behind
    plot_glimpses(torch.rand(2, 3, 32, 32), {"locations": torch.zeros(1, 2, 2), "patch_sizes": [0.5], "box": None}, out)
    assert out.stat().st_size > 1000
