"""A model's own preprocessing and labels (``core.data.preprocess``, ``core.data.labels``).

Oracles: transformers' own PIL image processors (ViT, DeiT, BiT for ``shortest_edge``; the
slow ones of transformers 4, the ``…Pil`` ones transformers 5 falls back to without
torchvision) and models; for timm (not installed here) its documented eval transform written
out below with PIL and numpy the way torchvision computes it (``Resize`` output size,
``CenterCrop``'s ``round`` and its padding, ``ToTensor``, ``Normalize``), independently of the
code under test.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.data import (default_photos, photos_are_default, pixel_values, preprocessing_of,
                       to_model_input, top_k)
from core.data.images import ImageTooLargeError, to_tensor
from core.data.labels import imagenet_classes, labels_from_hf, labels_from_timm
from core.data.preprocess import Preprocessing, from_hf_processor, from_timm_cfg
from core.models import CheckpointError, build_model, load_model

transformers = pytest.importorskip("transformers")

SIZES = [(224, 224), (300, 200), (199, 401), (37, 53), (513, 256), (256, 257), (7, 300)]
"""(H, W) of the test pictures: square, landscape, portrait, smaller than every crop, odd
margins, a strip."""


def pictures(sizes=SIZES, seed: int = 0) -> list[Image.Image]:
    """Smooth random RGB pictures (noise plus gradients: interpolation filters differ on them)."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1),
                         127 + 100 * np.sin(xx / 7.0 + yy / 5.0)], axis=-1)
        noisy = base + rng.normal(0, 40, size=(h, w, 3))
        out.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB"))
    return out


# ---------------------------------------------------------------------------- transformers

HF_CASES = [
    ("ViTImageProcessor", {}),
    ("ViTImageProcessor", {"size": {"height": 384, "width": 320}, "resample": 3,
                           "image_mean": [0.485, 0.456, 0.406],
                           "image_std": [0.229, 0.224, 0.225]}),
    ("DeiTImageProcessor", {}),
    ("DeiTImageProcessor", {"size": {"height": 248, "width": 240}, "resample": 1,
                            "crop_size": {"height": 224, "width": 223}}),
    ("DeiTImageProcessor", {"size": {"height": 200, "width": 200}}),  # crop larger: padding
    ("BitImageProcessor", {}),
    ("BitImageProcessor", {"size": {"shortest_edge": 255}, "resample": 2,
                           "crop_size": {"height": 224, "width": 224}}),
    ("BitImageProcessor", {"size": {"shortest_edge": 255}, "do_center_crop": False,
                           "do_normalize": False, "rescale_factor": 1 / 127.5}),
]


@pytest.mark.parametrize("kind, options", HF_CASES)
def test_pixel_values_equal_transformers_processors(kind, options):
    processor = getattr(transformers, kind)(**options)
    prep = from_hf_processor(processor.to_dict(), (224, 224))
    for im in pictures():
        if "do_center_crop" in options and not options["do_center_crop"] and im.size == (300, 7):
            continue  # without a crop the 7x300 strip becomes 255x10928: slow, nothing new
        ref = processor(images=im, return_tensors="np")["pixel_values"][0]
        ours = pixel_values(im, prep).numpy()
        assert ours.shape == ref.shape, (kind, im.size)
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0, err_msg=f"{kind} {im.size}")


def test_processor_file_defaults_follow_its_type():
    vit = from_hf_processor({"image_processor_type": "ViTImageProcessor"}, (224, 224))
    assert (vit.resize, vit.crop, vit.interpolation) == ((224, 224), None, "bilinear")
    deit = from_hf_processor({"image_processor_type": "DeiTImageProcessor"}, (224, 224))
    assert (deit.resize, deit.crop, deit.interpolation) == ((256, 256), (224, 224), "bicubic")
    legacy = from_hf_processor({"feature_extractor_type": "ViTFeatureExtractor", "size": 384},
                               (384, 384))
    assert legacy.resize == (384, 384) and legacy.output_size == (384, 384)
    # no file: PruneLens' own resize to the model's input, as to_tensor always did
    none = from_hf_processor({}, (32, 48))
    assert none.resize == (32, 48) and none.crop is None and none.interpolation == "bilinear"


def hf_model(cls_name: str, num_labels: int = 5, id2label=None, image_size: int = 16):
    config_cls = transformers.ViTConfig if cls_name.startswith("ViT") else transformers.DeiTConfig
    extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} \
        if id2label else {"num_labels": num_labels}
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config_cls(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=image_size, patch_size=4, attn_implementation="eager", **extra)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def test_hf_folder_model_sees_what_transformers_sees(tmp_path):
    """DeiT processor (resize 20x20 bicubic, crop 16x16, ImageNet mean/std) saved beside a
    DeiT: our model on to_model_input gives transformers' logits on the processor's output."""
    hf = hf_model("DeiTForImageClassificationWithTeacher")
    hf.save_pretrained(tmp_path)
    processor = transformers.DeiTImageProcessor(
        size={"height": 20, "width": 20}, crop_size={"height": 16, "width": 16},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    processor.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    prep = preprocessing_of(ours)
    assert (prep.resize, prep.crop, prep.interpolation) == ((20, 20), (16, 16), "bicubic")
    assert "DeiTImageProcessor" in prep.source
    ims = pictures([(40, 30), (16, 16), (17, 90)])
    x = torch.stack([to_model_input(im, prep) for im in ims])
    assert x.min() >= 0 and x.max() <= 1
    ref = torch.from_numpy(processor(images=ims, return_tensors="np")["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(ref).logits, atol=1e-4, rtol=0)
    # transformers' placeholders LABEL_0 … LABEL_4 are no names
    assert ours.labels is None and ours.wnids is None


def test_processor_that_does_not_fit_the_model_warns_and_resizes_to_it(tmp_path):
    hf_model("ViTForImageClassification").save_pretrained(tmp_path)
    transformers.ViTImageProcessor().save_pretrained(tmp_path)  # 224x224 for a 16x16 model
    with pytest.warns(UserWarning, match=r"gives 224x224 images but the model takes 16x16"):
        ours = load_model(tmp_path)
    assert preprocessing_of(ours).output_size == (16, 16)


@pytest.mark.parametrize("field, value, named", [
    ("size", {"height": 10 ** 9, "width": 224}, "size.height"),
    ("size", {"longest_edge": 1333}, "size with keys ['longest_edge']"),
    ("resample", "bicubic", "resample"),
    ("do_center_crop", "yes", "do_center_crop"),
])
def test_bad_processor_fields_are_one_line_errors(tmp_path, field, value, named):
    hf_model("DeiTForImageClassification").save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "DeiTImageProcessor", field: value}))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    assert named in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------- timm

def timm_eval_reference(im: Image.Image, size: int, crop_pct: float, interpolation: str,
                        mean, std) -> np.ndarray:
    """timm's transforms_imagenet_eval for a square ``size``, as torchvision runs it on a PIL
    image: Resize(floor(size / crop_pct)) of the shorter side, CenterCrop(size) (padding with
    zeros first when smaller, then ``round``), ToTensor, Normalize."""
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
               "lanczos": Image.LANCZOS}
    scale = math.floor(size / crop_pct)
    w, h = im.size
    if w <= h:
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_h, new_w = scale, int(scale * w / h)
    im = im.resize((new_w, new_h), filters[interpolation])
    # per side: torchvision pads (size - n) // 2 zeros before when smaller (the crop then
    # starts at the padding), else starts the crop at round((n - size) / 2)
    left = -((size - new_w) // 2) if size > new_w else int(round((new_w - size) / 2.0))
    top = -((size - new_h) // 2) if size > new_h else int(round((new_h - size) / 2.0))
    box = (left, top, left + size, top + size)
    pixels = np.asarray(im.crop(box), dtype=np.float32) / np.float32(255)  # PIL pads with 0
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((pixels - m) / s).transpose(2, 0, 1)


@pytest.mark.parametrize("size, crop_pct, interpolation", [
    (224, 0.875, "bicubic"), (224, 0.9, "bilinear"), (224, 1.0, "bicubic"),
    (384, 1.0, "bicubic"), (64, 0.95, "lanczos"), (224, 1.25, "nearest")])
def test_timm_eval_transform_matches_an_independent_computation(size, crop_pct, interpolation):
    cfg = {"input_size": [3, size, size], "crop_pct": crop_pct, "interpolation": interpolation,
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    prep = from_timm_cfg(cfg)
    assert prep.crop == (size, size) and prep.resize == math.floor(size / crop_pct)
    for im in pictures():
        ref = timm_eval_reference(im, size, crop_pct, interpolation, cfg["mean"], cfg["std"])
        np.testing.assert_allclose(pixel_values(im, prep).numpy(), ref, atol=1e-6, rtol=0,
                                   err_msg=f"{im.size}")


def test_timm_defaults_squash_and_unsupported_modes():
    prep = from_timm_cfg({"input_size": [3, 224, 224]})
    assert (prep.resize, prep.crop, prep.interpolation) == (256, (224, 224), "bicubic")
    assert prep.mean == (0.485, 0.456, 0.406) and prep.crop_rounding == "round"
    squash = from_timm_cfg({"input_size": [3, 224, 224], "crop_mode": "squash"})
    assert squash.resize == (256, 256)
    with pytest.warns(UserWarning, match="border"):
        border = from_timm_cfg({"input_size": [3, 224, 224], "crop_mode": "border"})
    assert border.resize == (256, 256)
    for bad in ({"input_size": [3, 224, 224], "crop_pct": -1}, {"input_size": [224, 224]},
                {"input_size": [3, 224, 224], "interpolation": "random"}):
        with pytest.raises(ValueError, match="pretrained_cfg"):
            from_timm_cfg(bad)


def test_timm_folder_carries_its_eval_transform_and_label_names(tmp_path):
    import tests.test_hf as th  # the timm state-dict helpers

    sd = th.random_timm_sd(classes=3)
    (tmp_path / "m").mkdir()
    save_file(sd, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch4_16", "num_classes": 3, "model_args": {"num_heads": 4},
        "label_names": ["n01440764", "n01443537", "n09999999"],
        "label_descriptions": {"n09999999": "something else"},
        "pretrained_cfg": {"input_size": [3, 16, 16], "crop_pct": 0.8,
                           "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}}))
    model = load_model(tmp_path / "m")
    prep = preprocessing_of(model)
    assert (prep.resize, prep.crop, prep.interpolation, prep.source) == \
        (20, (16, 16), "bilinear", "timm pretrained_cfg")
    assert model.labels == ("tench, Tinca tinca", "goldfish, Carassius auratus", "something else")
    assert model.wnids == ("n01440764", "n01443537", "n09999999")


# ---------------------------------------------------------------------------- labels, top-k

def test_id2label_names_and_imagenet_ids_reach_the_model(tmp_path):
    names = {i: f"thing {i}" for i in range(4)}
    hf_model("ViTForImageClassification", id2label=names).save_pretrained(tmp_path / "a")
    assert load_model(tmp_path / "a").labels == ("thing 0", "thing 1", "thing 2", "thing 3")
    assert load_model(tmp_path / "a").wnids is None
    imagenet = {i: n for i, (_, n) in enumerate(imagenet_classes())}
    hf_model("ViTForImageClassification", id2label=imagenet).save_pretrained(tmp_path / "b")
    model = load_model(tmp_path / "b")
    assert model.labels[0] == "tench, Tinca tinca" and model.wnids[0] == "n01440764"
    assert len(model.labels) == len(model.wnids) == 1000


def test_label_readers():
    # placeholders of a 1000-class model are ImageNet-1k's (timm infers the same from the count)
    names, wnids = labels_from_hf({str(i): f"LABEL_{i}" for i in range(1000)}, 1000)
    assert names[1] == "goldfish, Carassius auratus" and wnids[999] == "n15075141"
    assert labels_from_timm(None, None, 1000)[1][0] == "n01440764"
    assert labels_from_hf(None, 7) == (None, None)
    assert labels_from_hf({str(i): f"LABEL_{i}" for i in range(7)}, 7) == (None, None)
    long = labels_from_hf({"0": "x" * 5000, "1": "y"}, 2)[0]
    assert len(long[0]) == 200 and long[0].endswith("…")
    with pytest.raises(ValueError, match="keys 0 to 2"):
        labels_from_hf({"0": "a", "1": "b", "7": "c"}, 3)
    with pytest.raises(ValueError, match="text"):
        labels_from_hf({"0": "a", "1": 3}, 2)
    with pytest.raises(ValueError, match="one text per output"):
        labels_from_timm(["a"], None, 2)


def test_top_k_names_and_softmax_probabilities():
    model = build_model("vit-tiny", num_classes=4)
    model.labels = ("cat", "dog", "fish", "bird")
    logits = torch.tensor([1.0, 3.0, 0.0, 2.0])
    p = np.exp([1.0, 3.0, 0.0, 2.0]) / np.exp([1.0, 3.0, 0.0, 2.0]).sum()
    got = top_k(model, logits, k=3)
    assert [n for n, _ in got] == ["dog", "bird", "cat"]
    np.testing.assert_allclose([q for _, q in got], p[[1, 3, 0]], rtol=1e-6)
    assert len(top_k(model, logits[None], k=10)) == 4  # k above C: all of them
    batch = top_k(model, torch.stack([logits, -logits]), k=1)
    assert batch == [[("dog", pytest.approx(p[1]))], [("fish", pytest.approx(p[1]))]]
    model.labels = None
    assert top_k(model, logits, k=1)[0][0] == "class 1"


# ---------------------------------------------------------------------------- defaults, input

def test_models_without_a_processor_resize_as_before():
    model = build_model("vit-tiny", num_classes=3)
    prep = preprocessing_of(model)
    assert prep.resize == tuple(model.input_shape[1:]) and prep.crop is None
    for im in pictures([(50, 70), (8, 8)]):
        assert torch.equal(to_model_input(im, prep), to_tensor(im, prep.resize))


def test_exif_orientation_and_sixteen_bit_grey():
    prep = Preprocessing(resize=8, crop=(8, 8))
    im = pictures([(10, 20)])[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    import io
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    with Image.open(buf) as rotated:
        assert to_model_input(rotated, Preprocessing(resize=None)).shape[1:] == (20, 10)
    grey = Image.fromarray(np.full((12, 12), 65535, dtype=np.uint16))
    out = to_model_input(grey, prep)
    assert out.shape == (3, 8, 8) and torch.allclose(out, torch.ones(3, 8, 8))


def test_a_strip_that_would_resize_huge_is_refused_before_allocation():
    prep = Preprocessing(resize=256, crop=(224, 224))
    strip = Image.new("RGB", (20000, 10))
    with pytest.raises(ImageTooLargeError, match="resizing a 20000x10 picture"):
        to_model_input(strip, prep, max_pixels=1_000_000)


def test_uploads_decode_through_the_models_preprocessing_with_decode_images_checks():
    from core.data.images import ImageError, decode_image
    from core.data.preprocess import decode_for_model

    import io
    buf = io.BytesIO()
    pictures([(40, 30)])[0].save(buf, "PNG")
    prep = Preprocessing(resize=20, crop=(16, 16))
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert torch.equal(decode_for_model(buf.getvalue(), prep), to_model_input(im, prep))
    default = preprocessing_of(build_model("vit-tiny", num_classes=3))  # 32x32, no processor
    assert torch.equal(decode_for_model(buf.getvalue(), default),
                       decode_image(buf.getvalue(), size=(32, 32)))
    for junk, why in ((b"hello", "not an image Pillow can read"), (b"", "empty file")):
        with pytest.raises(ImageError, match=why):
            decode_for_model(junk, prep)
    with pytest.raises(ImageTooLargeError):
        decode_for_model(buf.getvalue(), prep, max_pixels=100)


def test_shipped_photos_are_the_default_for_224_pixel_models():
    photos = default_photos()
    assert sorted(photos) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    for im in photos.values():
        assert im.mode == "RGB" and max(im.size) <= 300
    assert photos_are_default((224, 224)) and not photos_are_default((32, 32))


# ---------------------------------------------------------------------------- dashboard

def test_photos_are_the_first_image_of_224_pixel_models_only():
    from types import SimpleNamespace

    from dashboard.state.ui import IMAGE_SOURCES, default_image, default_image_source

    big, small = (SimpleNamespace(data=SimpleNamespace(image_size=s)) for s in ((224, 224),
                                                                                (32, 32)))
    assert IMAGE_SOURCES[default_image_source(big)] == "photo"
    assert default_image(big).photo == "chelsea.jpg"
    assert IMAGE_SOURCES[default_image_source(small)] == "validation sample"
    assert default_image(small).index == 0 and not default_image(small).photo


@pytest.mark.slow
def test_rollout_and_attention_pages_show_top5_for_the_image_shown(runs_dir):
    """And the shipped photos are a source on the pages that pick an image."""
    from test_dashboard import errors, make_app, ok

    at = make_app(prune_pruners=["magnitude"], att_criteria=["magnitude"]).run()
    at.switch_page("pages/rollout.py").run()
    ok(at)
    assert at.radio(key="ro_image_source").value == "validation sample"  # a 32-pixel model
    at.radio(key="ro_image_source").set_value("photo").run()
    ok(at)
    assert not errors(at) and at.selectbox(key="ro_photo").value == "chelsea.jpg"
    tops = [c.value for c in at.caption if c.value.startswith("Top 5")]
    # dense and pruned, 5 named classes each with a confidence
    assert len(tops) == 1 and len(re.findall(r"\*\*[^*]+\*\* \d+%", tops[0])) == 10
    assert "Top 5, dense: **" in tops[0] and "Top 5, magnitude at 50%: **" in tops[0]
    assert {m.label: m.value for m in at.metric}["True class"] == "unknown (chelsea.jpg)"
    at.switch_page("pages/attention.py").run()
    ok(at)
    assert not errors(at)
    tops = [c.value for c in at.caption if c.value.startswith("Top 5, dense model: ")]
    assert len(tops) == 1 and len(re.findall(r"\*\*[^*]+\*\* \d+%", tops[0])) == 5
    # the Token merging page shares Rollout's image picker, photos included
    at.switch_page("pages/tokens.py").run()
    at.radio(key="tok_image_source").set_value("photo").run()
    ok(at)
    assert not errors(at) and at.selectbox(key="tok_photo").value == "chelsea.jpg"
