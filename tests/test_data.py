"""Tests for core.data: the factory, the three sources and calibration batches.

Checks compare against independent computations: sklearn's raw digits resized by PIL, colours
painted into PNG files, mask geometry measured from the mask itself.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from core.data import (
    SHAPE_CLASSES,
    ShapesDataset,
    calibration_batch,
    list_datasets,
    load_dataset,
)

# --------------------------------------------------------------------------- factory


def test_list_datasets_names_every_source() -> None:
    assert list_datasets() == ["shapes", "digits", "folder"]


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as err:
        load_dataset("mnist", 32)
    for name in ("shapes", "digits", "folder"):
        assert name in str(err.value)


@pytest.mark.parametrize("bad", [7, 0, -32, 32.0, "32", True, (32,), (32, 4), (32, 32.0), None])
def test_bad_image_size_is_value_error_naming_it(bad: object) -> None:
    with pytest.raises(ValueError, match="image_size") as err:
        load_dataset("shapes", bad, num_train=6, num_val=6)  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)


def test_unknown_option_is_type_error() -> None:
    with pytest.raises(TypeError, match="num_trian"):
        load_dataset("shapes", 16, num_trian=10)


# --------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def shapes() -> tuple[ShapesDataset, ShapesDataset]:
    return load_dataset("shapes", 32, seed=3, num_train=240, num_val=60)  # type: ignore


def _all_images(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_shapes_items_have_promised_types_and_ranges(shapes) -> None:
    train, val = shapes
    assert (len(train), len(val)) == (240, 60)
    assert train.classes == list(SHAPE_CLASSES) and train.image_size == (32, 32)
    image, label = train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert isinstance(label, int) and label == train.targets[0]
    x = _all_images(train)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x.std() > 0.1  # not a blank image set
    # 240 samples over 6 classes: exactly balanced
    assert Counter(train.targets) == {k: 40 for k in range(6)}


def test_shapes_deterministic_per_seed_and_different_across_seeds(shapes) -> None:
    train, val = shapes
    again_train, again_val = load_dataset("shapes", 32, seed=3, num_train=240, num_val=60)
    assert torch.equal(_all_images(train), _all_images(again_train))
    assert torch.equal(_all_images(val), _all_images(again_val))
    assert train.targets == again_train.targets
    assert torch.equal(train.mask(7), again_train.mask(7))

    other, _ = load_dataset("shapes", 32, seed=4, num_train=240, num_val=60)
    assert not torch.equal(_all_images(train), _all_images(other))


def test_shapes_train_and_val_share_no_image(shapes) -> None:
    train, val = shapes
    flat_train = _all_images(train).flatten(1)
    flat_val = _all_images(val).flatten(1)
    # smallest L1 distance between any val and any train image: far from identical
    assert torch.cdist(flat_val, flat_train, p=1).min() > 10.0


def test_shapes_masks_cover_the_object(shapes) -> None:
    train, _ = shapes
    H, W = train.image_size
    for i in range(len(train)):
        image, label = train[i]
        mask = train.mask(i)
        assert mask.dtype == torch.bool and mask.shape == (H, W)
        area = mask.float().mean().item()
        # circumscribed diameter 40-75 % of the side: the smallest star covers ~4.7 % of the
        # image, the biggest disc ~44 %
        assert 0.03 < area < 0.5, (i, area)
        # never clipped by the border
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        inside, outside = image[:, mask], image[:, ~mask]
        # flat object colour (pixel noise only) that stands out from the background
        assert inside.std(dim=1).max() < 0.05, i
        assert (inside.mean(1) - outside.mean(1)).norm() > 0.2, i
        # bright object (HSV value >= 0.75) on a dark background
        assert inside.amax(0).median() > 0.7 and outside.amax(0).median() < 0.55, i


def test_shapes_mask_geometry_matches_class(shapes) -> None:
    train, _ = shapes
    checked = Counter()
    for i in range(len(train)):
        name = train.classes[train.targets[i]]
        mask = train.mask(i).numpy()
        ys, xs = np.nonzero(mask)
        cy, cx = int(round(ys.mean() - 0.5)), int(round(xs.mean() - 0.5))
        if name in ("circle", "ring"):
            diameter = xs.max() - xs.min() + 1
            disc = np.pi * (diameter / 2) ** 2
            if name == "circle":
                assert abs(mask.sum() / disc - 1) < 0.2, i  # area of a disc of that width
                assert mask[cy, cx]
            else:
                assert mask.sum() / disc < 0.85, i  # the hole is missing
                assert not mask[cy, cx]  # ... and sits in the middle
            checked[name] += 1
    assert checked["circle"] > 10 and checked["ring"] > 10


def test_shapes_class_subset_and_rectangular_size() -> None:
    train, val = load_dataset(
        "shapes", (24, 40), seed=0, classes=["ring", "circle"], num_train=10, num_val=4
    )
    assert train.classes == ["ring", "circle"]
    assert set(train.targets) == {0, 1}
    assert train[0][0].shape == (3, 24, 40) and train.mask(0).shape == (24, 40)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["circle"], "at least 2 classes"),
        (["circle", "blob"], "blob"),
        (["star", "star"], "repeat"),
    ],
)
def test_shapes_bad_classes(classes: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset("shapes", 16, classes=classes, num_train=4, num_val=4)


def test_shapes_large_images() -> None:
    train, _ = load_dataset("shapes", 224, seed=1, num_train=6, num_val=2)
    assert train[5][0].shape == (3, 224, 224)
    area = train.mask(5).float().mean().item()
    assert 0.03 < area < 0.5


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def sklearn_digits():
    return load_digits()


def test_digits_is_sklearn_data_resized(sklearn_digits) -> None:
    train, val = load_dataset("digits", 32, seed=0)
    assert len(train) + len(val) == 1797
    assert sorted(train.indices + val.indices) == list(range(1797))
    assert train.classes == [str(d) for d in range(10)]
    for ds in (train, val):
        for i in (0, len(ds) - 1):
            image, label = ds[i]
            src = ds.indices[i]
            assert label == sklearn_digits.target[src]
            raw = (sklearn_digits.images[src] / 16.0).astype(np.float32)
            expected = np.asarray(Image.fromarray(raw).resize((32, 32), Image.Resampling.BILINEAR))
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            for c in range(3):  # grayscale replicated
                np.testing.assert_allclose(image[c].numpy(), expected, atol=1e-5)


def test_digits_native_size_is_exact_and_labels_match(sklearn_digits) -> None:
    train, _ = load_dataset("digits", 8, seed=0)
    raw = torch.from_numpy(sklearn_digits.images / 16.0).float()
    for i in range(0, len(train), 97):
        image, label = train[i]
        # find the image in sklearn's array without trusting .indices
        match = torch.nonzero((raw - image[0]).abs().flatten(1).amax(1) < 1e-6).flatten()
        assert len(match) >= 1
        assert label in sklearn_digits.target[match.numpy()].tolist()


def test_digits_split_is_stratified_and_seeded(sklearn_digits) -> None:
    train, val = load_dataset("digits", 8, seed=0)
    per_class = Counter(sklearn_digits.target.tolist())
    val_counts = Counter(val.targets)
    for digit, n in per_class.items():
        assert val_counts[digit] == round(n * 0.2)
    assert set(train.indices).isdisjoint(val.indices)
    again, _ = load_dataset("digits", 8, seed=0)
    other, _ = load_dataset("digits", 8, seed=1)
    assert again.indices == train.indices and other.indices != train.indices
    small_val = load_dataset("digits", 8, seed=0, val_fraction=0.5)[1]
    assert abs(len(small_val) - 1797 / 2) < 10


# --------------------------------------------------------------------------- folder

COLOURS = {"apple": (255, 0, 0), "bean": (0, 255, 0), "corn": (0, 0, 255)}
COUNTS = {"apple": 5, "bean": 4, "corn": 3}


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def plant_dir(tmp_path: Path) -> Path:
    for name, n in COUNTS.items():
        for j in range(n):
            _png(tmp_path / name / f"{j}.png", COLOURS[name], size=(20 + j, 12))
    _png(tmp_path / "corn" / "nested" / "deep.png", COLOURS["corn"])  # any depth counts
    Image.new("L", (9, 9), 128).save(tmp_path / "bean" / "gray.png")  # grayscale -> RGB
    good = (tmp_path / "apple" / "0.png").read_bytes()
    (tmp_path / "apple" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "bean" / "notes.txt").write_text("not an image")
    (tmp_path / "corn" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored silently
    (tmp_path / "README.md").write_text("files at the root are not samples")
    return tmp_path


def test_folder_reads_classes_skips_bad_files_with_one_warning(plant_dir: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val = load_dataset("folder", 16, seed=0, root=plant_dir)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 2 unreadable" in message
    assert "truncated.png" in message and "notes.txt" in message

    assert train.classes == ["apple", "bean", "corn"]
    # apple 5, bean 4 + gray, corn 3 + nested
    expected = {0: 5, 1: 5, 2: 4}
    assert len(train) + len(val) == sum(expected.values())
    assert Counter(train.targets) + Counter(val.targets) == expected
    assert set(val.targets) == {0, 1, 2}  # stratified: every class in val
    assert {p for p, _ in train.samples}.isdisjoint(p for p, _ in val.samples)

    for ds in (train, val):
        for i in range(len(ds)):
            image, label = ds[i]
            assert image.shape == (3, 16, 16) and image.dtype == torch.float32
            path = ds.samples[i][0]
            if path.endswith("gray.png"):
                expected_rgb = torch.full((3,), 128 / 255)
            else:
                expected_rgb = torch.tensor(COLOURS[ds.classes[label]]) / 255
            assert torch.allclose(image, expected_rgb[:, None, None].expand(3, 16, 16))


def test_folder_split_seeded(plant_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = load_dataset("folder", 8, seed=0, root=plant_dir)[1].samples
        b = load_dataset("folder", 8, seed=0, root=plant_dir)[1].samples
        others = [load_dataset("folder", 8, seed=s, root=plant_dir)[1].samples for s in (1, 2, 3)]
    assert a == b
    assert any(o != a for o in others)


def test_folder_loads_lazily_and_names_a_file_that_went_bad(tmp_path: Path) -> None:
    for name in ("a", "b"):
        for j in range(3):
            _png(tmp_path / name / f"{j}.png", (10, 20, 30))
    train, _ = load_dataset("folder", 8, root=tmp_path)
    path = train.samples[0][0]
    Path(path).write_bytes(b"gone")
    with pytest.raises(OSError, match="could not read image .*" + Path(path).name):
        train[0]


def test_folder_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("folder", 16, root=missing)


def test_folder_without_root() -> None:
    with pytest.raises(ValueError, match="root="):
        load_dataset("folder", 16)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "loose.png", (1, 2, 3))
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset("folder", 16, root=tmp_path)


def test_folder_without_readable_images(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text("text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable images"):
            load_dataset("folder", 16, root=tmp_path)


def test_folder_single_class(tmp_path: Path) -> None:
    _png(tmp_path / "only" / "0.png", (1, 2, 3))
    _png(tmp_path / "only" / "1.png", (1, 2, 3))
    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="at least 2 classes"):
            load_dataset("folder", 16, root=tmp_path)
    assert "empty" in str(caught[0].message)


# --------------------------------------------------------------------------- calibration_batch


class _Toy(torch.utils.data.Dataset):
    """Image value = sample index, so a batch shows which samples it holds."""

    def __init__(self, targets: list[int]) -> None:
        self.targets = targets
        self.classes = [str(c) for c in sorted(set(targets))]
        self.image_size = (8, 8)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((3, 8, 8), float(i)), self.targets[i]


def test_calibration_batch_is_balanced_and_real(shapes) -> None:
    train, _ = shapes
    images, labels = calibration_batch(train, 12, seed=0)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.long
    assert Counter(labels.tolist()) == {k: 2 for k in range(6)}
    # every image is a dataset sample with that label
    all_x = _all_images(train).flatten(1)
    for x, y in zip(images, labels):
        j = torch.nonzero((all_x - x.flatten()).abs().amax(1) == 0).flatten()
        assert len(j) == 1 and train.targets[j.item()] == y.item()

    odd = Counter(calibration_batch(train, 15, seed=0)[1].tolist())
    assert sorted(odd.values()) == [2, 2, 2, 3, 3, 3]


def test_calibration_batch_seeded() -> None:
    toy = _Toy([0] * 20 + [1] * 20 + [2] * 20)
    a, la = calibration_batch(toy, 9, seed=5)
    b, lb = calibration_batch(toy, 9, seed=5)
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, _ = calibration_batch(toy, 9, seed=6)
    assert not torch.equal(a, c)
    picked = a[:, 0, 0, 0].long()
    assert len(set(picked.tolist())) == 9  # no sample twice
    assert torch.equal(torch.tensor(toy.targets)[picked], la)


def test_calibration_batch_smaller_than_class_count() -> None:
    toy = _Toy([c for c in range(6) for _ in range(3)])
    chosen = []
    for seed in range(8):
        labels = calibration_batch(toy, 4, seed=seed)[1].tolist()
        assert len(labels) == 4 and len(set(labels)) == 4  # one per class
        chosen.append(frozenset(labels))
    assert len(set(chosen)) > 1  # the seed picks which classes


def test_calibration_batch_fills_from_bigger_classes() -> None:
    toy = _Toy([0] * 10 + [1] * 2 + [2] * 10)
    counts = Counter(calibration_batch(toy, 12, seed=0)[1].tolist())
    assert counts == {1: 2, 0: 5, 2: 5}


@pytest.mark.parametrize(
    ("batch_size", "message"), [(0, "batch_size"), (-3, "batch_size"), (99, "larger")]
)
def test_calibration_batch_bad_size(batch_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibration_batch(_Toy([0, 1, 0, 1]), batch_size)


def test_calibration_batch_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        calibration_batch(_Toy([1, 1, 1]), 2)


def test_calibration_batch_through_subset() -> None:
    toy = _Toy([0] * 5 + [1] * 5)
    subset = torch.utils.data.Subset(toy, [0, 1, 2, 7, 8])
    labels = calibration_batch(subset, 4, seed=0)[1]
    assert Counter(labels.tolist()) == {0: 2, 1: 2}
