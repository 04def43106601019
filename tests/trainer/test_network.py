"""Encoders and the CtP head: shapes, the stage-4 stride switch, torchvision compatibility, the head's RoI."""

import pytest
import torch

from trainer.model.encoders import (
    PRETRAIN_SPATIAL_STRIDE,
    build_encoder,
    count_parameters,
    feature_frames,
    set_stage4_spatial_stride,
    torchvision_model,
)
from trainer.model.head import CtPHead
from trainer.model.network import MEAN, STD, CtPNetwork, normalise

TORCHVISION_ENCODERS = ("r3d_18", "r2plus1d_18")


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", TORCHVISION_ENCODERS)
def test_pretraining_and_standard_feature_shapes(name, clip):
    network = CtPNetwork(name, num_frames=16).eval()
    queries = torch.tensor([[[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 112.0, 112.0], [50.0, 50.0, 66.0, 74.0]]])
    with torch.no_grad():
        assert network.encoder(clip).shape == (1, 512, 2, 14, 14)
        assert network(clip, queries).shape == (1, 3, 16, 4)
        set_stage4_spatial_stride(network.encoder, 2)
        assert network.encoder(clip).shape == (1, 512, 2, 7, 7)
    head_share = count_parameters(network.head) / count_parameters(network)
    assert 0.17 < head_share < 0.19  # "about 18% of the parameters"


@pytest.mark.parametrize("name", TORCHVISION_ENCODERS)
def test_standard_strides_reproduce_torchvision_with_the_same_weights(name, clip):
    encoder = build_encoder(name, pretraining=True).eval()
    assert encoder.layer4[0].downsample[0].stride == (2, 1, 1)
    set_stage4_spatial_stride(encoder, 2)
    reference = torchvision_model(name).eval()
    reference.load_state_dict(encoder.state_dict(), strict=True)
    with torch.no_grad():
        pooled = encoder(clip).mean(dim=(2, 3, 4))
        torch.testing.assert_close(pooled, reference(clip), rtol=1e-4, atol=1e-5)


def test_stride_switch_touches_only_spatial_strides_of_stage4():
    encoder = build_encoder("r2plus1d_18", pretraining=False)
    before = {n: m.stride for n, m in encoder.named_modules() if isinstance(m, torch.nn.Conv3d)}
    set_stage4_spatial_stride(encoder, 1)
    after = {n: m.stride for n, m in encoder.named_modules() if isinstance(m, torch.nn.Conv3d)}
    changed = {n: (before[n], after[n]) for n in before if before[n] != after[n]}
    assert changed == {
        "layer4.0.conv1.0.0": ((1, 2, 2), (1, 1, 1)),  # the (1,3,3) spatial half of the (2+1)D conv
        "layer4.0.downsample.0": ((2, 2, 2), (2, 1, 1)),
    }
    with pytest.raises(ValueError, match="must be 1 or 2"):
        set_stage4_spatial_stride(encoder, 3)


def test_tiny_encoder_has_the_same_layout():
    network = CtPNetwork("tiny", num_frames=16)
    clips = torch.randn(2, 3, 16, 64, 64)
    assert network.encoder(clips).shape == (2, 128, 2, 8, 8)
    assert network(clips, torch.tensor([[[8.0, 8.0, 24.0, 30.0]]] * 2)).shape == (2, 1, 16, 4)
    assert count_parameters(network.encoder) < count_parameters(build_encoder("r3d_18")) / 20
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        torchvision_model("tiny")


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="r3d_18, r2plus1d_18"):
        build_encoder("resnet50")


def test_feature_frames():
    assert [feature_frames(t) for t in (16, 8, 32, 12)] == [2, 1, 4, 2]


def test_head_initialisation():
    head = CtPHead(512, feature_frames=2, num_frames=16)
    assert head.temporal.kernel_size == (2, 1, 1)
    assert head.fc1.in_features == 512 * 5 * 5 and head.fc2.out_features == 16 * 4
    for fc in (head.fc1, head.fc2):
        assert fc.weight.std().item() == pytest.approx(0.001, rel=0.05)
        assert fc.bias.abs().sum() == 0
    fan_out = 512 * 2
    assert head.temporal.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)


def test_head_pools_only_the_query_region():
    """RoIAlign at 1/8 scale: features far from the query box cannot change the prediction; inside they do."""
    torch.manual_seed(0)
    head = CtPHead(8, feature_frames=2, num_frames=4, hidden=16).eval()
    for fc in (head.fc1, head.fc2):
        torch.nn.init.normal_(fc.weight)
    features = torch.randn(1, 8, 2, 14, 14)
    query = torch.tensor([[[32.0, 32.0, 64.0, 64.0]]])  # feature cells 4..8
    base = head(features, query)

    far = features.clone()
    far[..., :2, :] += 5.0
    far[..., :, 11:] += 5.0
    torch.testing.assert_close(head(far, query), base)
    inside = features.clone()
    inside[..., 5:7, 5:7] += 5.0
    assert not torch.allclose(head(inside, query), base)


def test_head_handles_each_sample_with_its_own_features():
    torch.manual_seed(0)
    head = CtPHead(8, feature_frames=2, num_frames=4, hidden=16).eval()
    torch.nn.init.normal_(head.fc2.weight)
    features = torch.randn(2, 8, 2, 14, 14)
    queries = torch.tensor(
        [[[0.0, 0.0, 30.0, 30.0], [40.0, 40.0, 90.0, 100.0]], [[10.0, 5.0, 50.0, 40.0], [60.0, 0.0, 112.0, 30.0]]]
    )
    together = head(features, queries)
    for b in range(2):
        torch.testing.assert_close(together[b : b + 1], head(features[b : b + 1], queries[b : b + 1]))


def test_normalise_uint8_clips():
    clips = torch.randint(0, 256, (2, 4, 6, 5, 3), dtype=torch.uint8)
    x = normalise(clips)
    assert x.shape == (2, 3, 4, 6, 5) and x.dtype == torch.float32
    expected = (clips.float() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(x, expected.permute(0, 4, 1, 2, 3))
    channels_last = normalise(clips, channels_last=True)
    assert channels_last.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(channels_last, x)


def test_roi_boxes_and_batch_indices_stay_float32_under_bf16_autocast():
    """600 RoIs over a batch of 300 with bf16 features, as the encoder gives them under autocast. Sample i's map
    holds i // 16 and i % 16 (exact in bf16) and its column index, so each pooled RoI names its sample and,
    through the column ramp, where its box was. bf16 RoIs pool sample 256 for 257 and move boxes by 0.5 px."""
    head = CtPHead(in_channels=3, feature_frames=1, num_frames=2, hidden=4)
    b, k, size = 300, 2, 14
    i = torch.arange(b, dtype=torch.float32).view(b, 1, 1)
    features = torch.stack(
        [
            (i // 16).expand(b, size, size),
            (i % 16).expand(b, size, size),
            torch.arange(size, dtype=torch.float32).expand(b, size, size),
        ],
        1,
    ).bfloat16()
    x1 = torch.linspace(65.3, 71.9, b * k).view(b, k)  # input pixels: in bf16 these move in 0.5 px steps
    queries = torch.stack([x1, torch.full_like(x1, 8.0), x1 + 24, torch.full_like(x1, 40.0)], -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = head.pool(features, queries).mean((2, 3))  # (B·K, 3)
    assert pooled.dtype == torch.float32
    assert torch.equal(16 * pooled[:, 0] + pooled[:, 1], i.flatten().repeat_interleave(k))
    centre_column = ((x1 + 12) / PRETRAIN_SPATIAL_STRIDE - 0.5).flatten()  # aligned RoIAlign: pixel centres at +0.5
    torch.testing.assert_close(pooled[:, 2], centre_column, rtol=0, atol=1e-3)
