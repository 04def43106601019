"""The predicted-vs-true boxes image: evenly spaced frames, true boxes green, predicted red."""

import torch

from trainer.pretrain.viz import boxes_image


def test_boxes_image_pixels():
    clip = torch.zeros(16, 32, 32, 3, dtype=torch.uint8)
    clip[15] = 50  # the last frame is grey, so the strip's order is visible
    true = torch.tensor([[4.0, 4.0, 12.0, 12.0]]).expand(1, 16, 4)
    predicted = torch.tensor([[16.0, 16.0, 28.0, 28.0]]).expand(1, 16, 4)
    image = boxes_image(clip, true, predicted, frames=4)
    assert image.shape == (3, 32 + 4, 4 * 32 + 5 * 2) and image.dtype == torch.uint8

    def tile(n: int) -> torch.Tensor:  # make_grid pads 2 px around and between tiles
        return image[:, 2 : 2 + 32, 2 + n * 34 : 2 + n * 34 + 32]

    for n in range(4):
        assert tile(n)[:, 4, 8].tolist() == [0, 255, 0]  # top edge of the true box
        assert tile(n)[:, 16, 20].tolist() == [255, 0, 0]  # top edge of the predicted box
    assert tile(0)[:, 0, 0].tolist() == [0, 0, 0] and tile(3)[:, 0, 0].tolist() == [50, 50, 50]
