"""Target encoding, the CtP loss and IoU on hand-computed cases (docs/spec.md)."""

import math

import pytest
import torch

from trainer.model.loss import box_iou, ctp_loss, decode, encode, first_box_baseline

LN2 = math.log(2.0)

# One trajectory of four frames: the query, then it moves right by 6 px, grows to twice the width while its
# centre moves 10 px right, and shrinks to half its size around the original centre.
TRAJECTORY = torch.tensor(
    [
        [10.0, 10.0, 30.0, 30.0],  # centre (20, 20), size 20×20
        [16.0, 10.0, 36.0, 30.0],  # centre (26, 20)
        [10.0, 10.0, 50.0, 30.0],  # centre (30, 20), size 40×20
        [15.0, 15.0, 25.0, 25.0],  # centre (20, 20), size 10×10
    ]
)
EXPECTED_TARGETS = torch.tensor(
    [
        [0.0, 0.0, 0.0, 0.0],
        [6 / 0.8, 0.0, 0.0, 0.0],
        [10 / 0.8, 0.0, LN2 / 0.04, 0.0],
        [0.0, 0.0, -LN2 / 0.04, -LN2 / 0.04],
    ]
)


def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_encode_move_grow_shrink():
    torch.testing.assert_close(encode(TRAJECTORY), EXPECTED_TARGETS)


def test_encode_works_on_batched_trajectories():
    batched = TRAJECTORY.expand(2, 3, 4, 4)  # (B, K, T, 4)
    torch.testing.assert_close(encode(batched), EXPECTED_TARGETS.expand(2, 3, 4, 4))


def test_decode_inverts_encode():
    boxes = torch.tensor([[[3.0, 4.0, 40.0, 20.0], [5.5, 1.0, 30.0, 44.0], [90.0, 80.0, 111.0, 112.0]]])
    torch.testing.assert_close(decode(encode(boxes), boxes[:, 0]), boxes)


def test_sizes_below_one_pixel_are_clamped():
    degenerate = torch.tensor([[10.0, 10.0, 30.0, 30.0], [20.0, 20.0, 20.0, 20.5]])  # 0 × 0.5 px
    targets = encode(degenerate)
    assert torch.isfinite(targets).all()
    torch.testing.assert_close(targets[1, 2:], torch.full((2,), math.log(1 / 20) / 0.04))


def test_loss_hand_computed_with_zero_weight_frame():
    predicted = torch.zeros(1, 1, 4, 4)
    predicted[0, 0, 3] = torch.tensor([0.5, -0.5, -LN2 / 0.04, 0.0])  # size x exact; size y off by 17.33
    weights = torch.tensor([[[1.0, 1.0, 0.0, 1.0]]])  # frame 2 (the growing one) is left out

    loss = ctp_loss(predicted, encode(TRAJECTORY)[None, None], weights)

    frame1_centre = smooth_l1(6 / 0.8)  # 7.0
    frame3_centre = smooth_l1(-0.5) + smooth_l1(0.5)  # 0.25
    frame3_size = smooth_l1(-LN2 / 0.04)
    pairs = 3  # frames 0, 1 and 3
    assert loss.centre.item() == pytest.approx((frame1_centre + frame3_centre) / pairs)
    assert loss.size.item() == pytest.approx(frame3_size / pairs)
    assert loss.total.item() == pytest.approx(loss.centre.item() + loss.size.item())


def test_loss_is_normalised_by_weighted_pair_count():
    target = encode(TRAJECTORY)[None, None]
    one = ctp_loss(torch.zeros_like(target), target)
    # Adding a perfectly predicted trajectory doubles the pair count and halves the loss.
    target2 = torch.cat([target, target], dim=1)
    predicted2 = torch.cat([torch.zeros_like(target), target], dim=1)
    two = ctp_loss(predicted2, target2)
    assert two.total.item() == pytest.approx(one.total.item() / 2)
    expected = (smooth_l1(6 / 0.8) + smooth_l1(10 / 0.8) + smooth_l1(LN2 / 0.04) + 2 * smooth_l1(LN2 / 0.04)) / 4
    assert one.total.item() == pytest.approx(expected)


def test_loss_gradient_ignores_zero_weight_frames():
    target = encode(TRAJECTORY)[None, None]
    predicted = torch.zeros_like(target, requires_grad=True)
    ctp_loss(predicted, target, torch.tensor([[[1.0, 0.0, 1.0, 1.0]]])).total.backward()
    assert predicted.grad[0, 0, 1].abs().sum() == 0
    assert predicted.grad[0, 0, 2].abs().sum() > 0


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [1.0, 1.0, 3.0, 3.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([50 / 150, 1.0, 0.0, 4 / 16]))


def test_first_box_baseline_repeats_the_query():
    baseline = first_box_baseline(TRAJECTORY)
    torch.testing.assert_close(baseline, TRAJECTORY[:1].expand(4, 4))
    torch.testing.assert_close(box_iou(baseline, TRAJECTORY), torch.tensor([1.0, 280 / 520, 0.5, 0.25]))


def test_per_step_constants_are_built_once_not_copied_to_the_device_each_step(monkeypatch):
    """`torch.tensor(...)` on a CUDA device is a host-device copy and sync; steps after the first make none.
    Constants first built in inference mode still serve autograd afterwards."""
    from trainer.model.network import normalise

    clips = torch.randint(0, 256, (1, 4, 6, 5, 3), dtype=torch.uint8)
    with torch.inference_mode():
        normalise(clips), decode(encode(TRAJECTORY), TRAJECTORY[0])
    made = []
    original = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or original(*a, **k))
    for _ in range(3):
        normalise(clips)
        predicted = encode(TRAJECTORY).requires_grad_()
        ctp_loss(predicted, encode(decode(predicted, TRAJECTORY[0]))).total.backward()
    assert made == []
