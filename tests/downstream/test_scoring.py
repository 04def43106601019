"""Downstream metrics on hand-made cases: aggregation, top-k, per-class accuracy, confusion, retrieval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datagen.video.manifest import probe
from trainer.downstream.config import load_downstream_config
from trainer.downstream.datasets import LabelledSet
from trainer.downstream.evaluate import classification_results, predict
from trainer.downstream.retrieve import retrieval_features
from trainer.downstream.scoring import (
    aggregate_clips,
    confusion_image,
    confusion_matrix,
    per_class_accuracy,
    retrieval_hits,
    topk_accuracy,
)
from trainer.runtime.execution import Execution


def test_clips_are_averaged_per_video_in_any_order():
    values = torch.tensor([[1.0, 0.0], [0.0, 4.0], [3.0, 0.0], [0.2, 0.8], [0.0, 2.0]])
    owners = torch.tensor([7, 2, 7, 5, 2])
    ids, means = aggregate_clips(values, owners)
    assert ids.tolist() == [2, 5, 7]
    assert torch.allclose(means, torch.tensor([[0.0, 3.0], [0.2, 0.8], [2.0, 0.0]]))


class LogitTable(torch.nn.Module):
    """A classifier whose clips' logits are the rows of a table, in the order it sees the clips."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table, self.seen = table, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.table[self.seen : self.seen + len(x)]
        self.seen += len(x)
        return rows


def test_the_video_score_is_the_softmax_of_the_mean_logits(shared_videos):
    # Three clips of one video: one very confident for class 0, two moderately for class 1.
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0]])
    e = [math.exp(10 / 3), math.exp(2.0), 1.0]  # mean logits (10/3, 2, 0)
    expected = torch.tensor([v / sum(e) for v in e])  # (0.7696, 0.2029, 0.0275): class 0
    assert logits.softmax(1).mean(0).argmax().item() == 1  # a mean of softmaxes would pick class 1
    video = probe(shared_videos / "ucf101" / "v_SoccerJuggling_g23_c01.avi")
    data = LabelledSet("one", ("a", "b", "c"), (video,), (0,))
    cfg = load_downstream_config("tiny_cpu", ["clips.test_clips=3", "run.progress=false"])
    positions, scores, skipped = predict(LogitTable(logits), data, cfg, Execution.resolve("cpu"))
    assert positions.tolist() == [0] and not skipped
    assert torch.allclose(scores[0], expected, atol=1e-6)
    assert classification_results(scores, torch.tensor([0]), data.classes)["top1"] == 1.0


def test_topk_accuracy():
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.15, 0.05],  # label 1: rank 1
            [0.3, 0.1, 0.25, 0.2, 0.15],  # label 2: rank 2
            [0.1, 0.2, 0.3, 0.4, 0.0],  # label 4: rank 5
            [0.9, 0.02, 0.03, 0.04, 0.01],  # label 0: rank 1
        ]
    )
    labels = torch.tensor([1, 2, 4, 0])
    assert topk_accuracy(scores, labels, (1, 2, 4, 5)) == {1: 0.5, 2: 0.75, 4: 0.75, 5: 1.0}
    assert topk_accuracy(scores[:, :3], torch.tensor([1, 2, 0, 0]), (1, 5)) == {1: 0.5, 5: 1.0}  # k capped at C


def test_confusion_and_per_class_accuracy():
    labels = torch.tensor([0, 0, 0, 1, 1, 3])
    predicted = torch.tensor([0, 1, 0, 1, 3, 3])
    confusion = confusion_matrix(predicted, labels, 4)
    assert confusion.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 1]]
    accuracy, counts = per_class_accuracy(confusion)
    assert counts.tolist() == [3, 2, 0, 1]
    assert accuracy[0].item() == pytest.approx(2 / 3) and accuracy[1].item() == 0.5 and accuracy[3].item() == 1.0
    assert math.isnan(accuracy[2].item())  # no test videos of class 2


def test_retrieval_hits_with_known_neighbours():
    # Gallery on the unit circle at 0°, 90°, 180°, 270° (cosine ignores the length); classes a, b, a, c.
    gallery = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -1.0]])
    gallery_labels = torch.tensor([0, 1, 0, 2])
    queries = torch.tensor(
        [
            [1.0, 0.1],  # nearest: 0° (a), then 90° (b) → class a hits at 1
            [0.1, 1.0],  # class c: order 90°, 0°, 180°, 270° → hits at 4
            [-1.0, -0.9],  # class b: order 180°, 270°, 90°/0° → b at 3 (90° is closer than 0°)
        ]
    )
    query_labels = torch.tensor([0, 2, 1])
    hits = retrieval_hits(queries, query_labels, gallery, gallery_labels, ks=(1, 2, 3, 4, 50))
    assert hits == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3), 4: 1.0, 50: 1.0}


def test_a_video_never_retrieves_itself():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    same = torch.eye(3, dtype=torch.bool)
    hits = retrieval_hits(features, labels, features, labels, ks=(1, 2, 3), same=same)
    # video 0 (a) has no other a: never hits; video 1 (b): nearest other is 0 (a), then 2 (b); video 2: 1 (b).
    assert hits == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}
    assert retrieval_hits(features, labels, features, labels, ks=(1,))[1] == 1.0  # without `same`: itself


def test_retrieval_feature_is_the_max_pooled_final_map():
    fmap = torch.arange(2 * 512 * 2 * 7 * 7, dtype=torch.float32).view(2, 512, 2, 7, 7)
    features = retrieval_features(fmap)
    assert features.shape == (2, 512 * 2 * 3 * 3)  # a 16×112×112 clip through R3D-18: 9216 values
    # Window (rows 2-3, columns 4-5) of channel 5, time 1: its maximum is the bottom-right pixel.
    cell = features.view(2, 512, 2, 3, 3)[1, 5, 1, 1, 2]
    assert cell.item() == fmap[1, 5, 1, 3, 5].item()


def _inked(pixels: np.ndarray) -> bool:
    return bool((pixels < 128).any())


@pytest.mark.parametrize("num_classes", [2, 101])
def test_confusion_image_labels_both_axes_and_has_a_colour_bar(num_classes, tmp_path):
    classes = [f"class_{i:03d}" for i in range(num_classes)]
    confusion = torch.eye(num_classes, dtype=torch.long) * 3 + 1
    drawn = confusion_image(confusion, classes)
    drawn.save(tmp_path / f"confusion{num_classes}.png")
    left, top, cell = drawn.info["grid"]
    side = num_classes * cell
    image = np.asarray(drawn.convert("L"))
    assert image.shape[0] > side + 1 and image.shape[1] > side + 1  # larger than the bare matrix
    for i in range(num_classes):  # UCF-101 too: every true class named at the left of its row ...
        assert _inked(image[top + i * cell : top + (i + 1) * cell, :left]), f"row {i} has no label"
        assert _inked(image[:top, left + i * cell : left + (i + 1) * cell]), f"column {i} has no index"  # ... above
    bar = image[top : top + side, left + side + 2 :]
    assert bar[0].min() < 100 and bar[-1].max() == 255  # the colour bar: dark at 1 (top), white at 0
    ticks = image[top : top + side, left + side + 12 + 18 :]
    assert _inked(ticks)  # its scale: 1.0 / 0.5 / 0.0


def test_confusion_image_shades_rows_by_rate():
    confusion = torch.tensor([[3, 1], [0, 2]])
    drawn = confusion_image(confusion, ["walk", "run"])
    width, top, cell = drawn.info["grid"]  # labels to the left and above the grid
    assert cell == 24 and width > 0 and top > 0
    image = np.asarray(drawn.convert("RGB"))
    centre = lambda r, c: image[top + r * cell + cell // 2, width + c * cell + cell // 2]  # noqa: E731
    assert centre(1, 0).tolist() == [255, 255, 255]  # rate 0: white
    assert centre(1, 1).tolist() == [8, 48, 107]  # rate 1: dark blue
    assert centre(0, 0).tolist() == np.round(0.75 * np.array([8, 48, 107]) + 0.25 * 255).tolist()
