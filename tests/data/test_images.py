import pytest
import torch
from PIL import Image

from lowcomm.data import load_data
from lowcomm.data.images import channel_statistics, folder_images
from lowcomm.data.shapes import NUM_CLASSES, synthetic_images


def test_synthetic_images_are_seeded_uint8_32x32_rgb_of_ten_classes():
    images, labels = synthetic_images(300, seed=1)
    assert images.shape == (300, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (300,) and labels.dtype == torch.int64
    assert set(labels.tolist()) == set(range(NUM_CLASSES)) == set(range(10))
    again, again_labels = synthetic_images(300, seed=1)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, synthetic_images(300, seed=2)[0])


def test_channel_statistics_are_exact():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[0, 0] = 255  # channel 0: half 0, half 1 -> mean 0.5, std 0.5
    images[:, 1] = 51  # channel 1: all 0.2 -> std 0 (floored)
    images[:, 2, 0] = 255  # channel 2: half 0, half 1
    mean, std = channel_statistics(images)
    assert mean.flatten().tolist() == pytest.approx([0.5, 0.2, 0.5])
    assert std.flatten().tolist() == pytest.approx([0.5, 1e-6, 0.5])


def write_image(path, colour, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_images_are_resized_and_labelled_by_sorted_class_folder(tmp_path):
    write_image(tmp_path / "red" / "b.png", (255, 0, 0), (8, 8))
    write_image(tmp_path / "red" / "a.jpg", (255, 0, 0), (40, 20))
    write_image(tmp_path / "blue" / "c.png", (0, 0, 255), (64, 64))
    images, labels, num_classes = folder_images(tmp_path)
    assert (images.shape, images.dtype, num_classes) == ((3, 3, 32, 32), torch.uint8, 2)
    assert labels.tolist() == [0, 1, 1]  # blue, then red's a.jpg and b.png
    assert images[0, :, 5, 5].tolist() == [0, 0, 255]
    assert images[2].flatten(1).float().mean(1).tolist() == [255, 0, 0]


def test_unreadable_image_is_a_value_error(tmp_path):
    write_image(tmp_path / "ok" / "a.png", (0, 0, 0), (4, 4))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*b.png"):
        folder_images(tmp_path)


def test_image_folder_bundle_holds_out_a_fixed_few_images(tmp_path):
    for i in range(120):
        write_image(tmp_path / ("odd" if i % 2 else "even") / f"{i:03d}.png", (i, i, i), (4, 4))
    bundle = load_data(str(tmp_path), rank=0, world_size=1, batch_size=4, seq_len=1, seed=0, cache_dir=tmp_path)
    assert (bundle.task, bundle.num_classes, bundle.vocab_size) == ("image", 2, None)
    assert [len(labels) for _, labels in bundle.eval_batches] == [4, 1]
    assert bundle.train.state_dict()["shard_size"] == 115
    # items 19, 23, 101, 103 and 111 of [even 000..118, odd 001..119] are held out: 038, 046, 083, 087, 103
    assert [labels.tolist() for _, labels in bundle.eval_batches] == [[0, 0, 1, 1], [1]]


def test_synthetic_image_bundle_batches_are_normalised_and_rank_independent_for_eval(tmp_path):
    def bundle(rank):
        options = {"world_size": 2, "batch_size": 64, "seq_len": 1, "seed": 0, "cache_dir": tmp_path}
        return load_data("synthetic-images", rank=rank, **options)

    first, second = bundle(0), bundle(1)
    assert first.num_classes == 10 and first.task == "image"
    images, labels = next(first.train)
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32 and labels.shape == (64,)
    drawn = torch.cat([next(first.train)[0] for _ in range(20)])
    assert drawn.mean().abs() < 0.05 and (drawn.std() - 1).abs() < 0.05
    # 443 of the 10,000 images are held out: 6 full batches of 64, then 59
    assert [len(labels) for _, labels in first.eval_batches] == [64] * 6 + [59]
    for (a, x), (b, y) in zip(first.eval_batches, second.eval_batches, strict=True):
        assert torch.equal(a, b) and torch.equal(x, y)
