"""The dashboard's side of hardening and bring-your-own-ViT: what a browser user can reach on
the server (data roots), per-session uploads and their cleanup, image decoding, models from
server folders and the hub cache, exports in three formats, one-line errors.

AppTest with widgets by key; the real-browser parts (a scan cancelled with its button, a
deferred download) are in tests/test_browser.py.
"""
from __future__ import annotations

import gc
import io
import json
import os
import pickle
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from core.data.roots import REFUSAL
from core.models import (BlockConfig, VisionTransformer, ViTConfig, build_model, load_model,
                         save_model)
from core.models.checkpoint import _plain_state_dict

from test_dashboard import errors, make_app, metrics, ok, shown

# ---------------------------------------------------------------------------- fixtures


def images(folder: Path, classes=("a", "b"), per_class: int = 6, side: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / c / f"{i}.png")
    return folder


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A data root with a dataset, an empty folder and a symlink leading to /etc."""
    data = tmp_path / "data"
    images(data / "plants")
    (data / "empty").mkdir()
    (data / "escape").symlink_to("/etc")
    monkeypatch.setenv("PRUNELENS_DATA_ROOTS", str(data))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # empty unless a test fills it
    return data


def tiny_vit(seed: int = 0, **kw) -> VisionTransformer:
    """24×24 input, 8×8 patches, width 32, 2 blocks of 4 heads, 2 classes."""
    torch.manual_seed(seed)
    args = dict(img_size=(24, 24), patch_size=8, num_classes=2, embed_dim=32,
                blocks=(BlockConfig(4, 8, 8, 48),) * 2, mean=(0.4, 0.5, 0.6),
                std=(0.2, 0.3, 0.25))
    args.update(kw)
    return VisionTransformer(ViTConfig(**args)).eval()


def timm_folder(path: Path, model: VisionTransformer, **model_args) -> Path:
    """A timm-layout folder of ``model`` (PruneLens' ViT keys are timm's)."""
    path.mkdir(parents=True)
    save_file(_plain_state_dict(model), str(path / "model.safetensors"))
    H, W = model.config.img_size
    (path / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch8_24", "num_classes": model.config.num_classes,
        "model_args": {"num_heads": 4, **model_args},
        "pretrained_cfg": {"input_size": [3, H, W], "mean": list(model.config.mean),
                           "std": list(model.config.std)}}))
    return path


def png(width: int = 40, height: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid black PNG of a few hundred KB whose pixels would take width·height·3 bytes."""
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(b"\0" * (1 + 3 * width)) for _ in range(height))
    body += packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def folder_app(folder: str | None = None, **session) -> AppTest:
    at = make_app(prune_dataset="folder", prune_pruners=["magnitude"], prune_val=16,
                  prune_calib=8, **session)
    if folder is not None:
        at.session_state["prune_folder"] = folder
    return at


# ---------------------------------------------------------------------------- 1. folders

def test_folder_choices_are_the_data_folders_only(runs_dir, roots):
    at = ok(folder_app().run())
    box = at.selectbox(key="prune_folder")
    # folders with class sub-folders: not escape → /etc, not the classes, not the empty one
    assert box.options == ["data", "data/plants"]
    assert any("folder" in i.value.lower() for i in at.info)


@pytest.mark.slow  # several page runs (CI runs it)
def test_paths_outside_the_roots_get_one_answer_that_reveals_nothing(runs_dir, roots):
    answers = set()
    for text in ("/etc", "/root", "/nonexistent", "../..", "escape", str(roots / "escape"),
                 "/proc/self", "/dev", str(roots / ".." / ".."), "plants/../../.."):
        at = ok(folder_app(text).run())  # typed: a new option of the box
        shown = errors(at)
        assert len(shown) == 1, (text, shown)
        answers.add(shown[0])
    assert answers == {REFUSAL}
    assert not at.get("plotly_chart")


def test_a_folder_inside_the_roots_is_scanned_and_used(runs_dir, roots):
    at = ok(folder_app(str(roots / "plants")).run())
    assert not errors(at)
    assert len(metrics(at)["Accuracy"]) == 2  # dense + magnitude
    assert any("folder (2 classes)" in c.value for c in at.caption)
    # typed, relative to the first root: the same dataset
    at = ok(folder_app("plants").run())
    assert not errors(at)


def test_scan_errors_are_readable_and_a_new_scan_is_offered(runs_dir, roots, monkeypatch):
    from dashboard.state import folders

    at = ok(folder_app(str(roots / "empty")).run())
    assert any("no class sub-folders" in e for e in errors(at))
    at = ok(folder_app(str(roots / "missing")).run())
    assert any("does not exist" in e for e in errors(at))

    images(roots / "slow", per_class=3)
    monkeypatch.setattr(folders, "SCAN_SECONDS", 1e-6)  # every scan runs out of time
    at = ok(folder_app(str(roots / "slow")).run())
    assert any("max_seconds" in e for e in errors(at)), errors(at)
    ok(at.run())  # remembered, not scanned again on a rerun
    assert any("max_seconds" in e for e in errors(at))
    monkeypatch.setattr(folders, "SCAN_SECONDS", 60.0)
    at.button(key="scan_again").click().run()
    ok(at)
    assert not errors(at) and metrics(at)["Accuracy"]


def test_a_cancelled_scan_stops_and_says_so(roots):
    from core.data import DataPathError
    from dashboard.state import folders, job
    from dashboard.state.keys import DataKey

    key = DataKey("folder", str(roots / "plants"), (24, 24))

    def cancelled_scan(j):
        j.cancel()  # before the scan looks at its first file
        folders._scan(j, key, folders._datasets())

    scan = job.start(folders.SCAN, cancelled_scan, session="test-cancelled-scan")
    assert scan.join(60) and scan.status == "cancelled"
    assert key not in folders._datasets()[0]
    # the scan itself keeps symlinks and the root inside the data roots
    with pytest.raises(DataPathError):
        folders._load(DataKey("folder", "/etc", (24, 24)), threading.Event())


# ---------------------------------------------------------------------------- 2. uploads

def test_session_uploads_are_private_capped_and_swept(tmp_path):
    from dashboard.state.uploads import (GONE_AFTER_S, IMAGES_PER_SESSION, SessionUploads,
                                         UploadGoneError, UploadsFullError)

    now = [1000.0]
    alive = {"rt-a": True, "rt-b": True}
    store = SessionUploads(tmp_path / "up", cap_bytes=10_000, idle_s=3600,
                           alive=lambda rid: alive[rid], clock=lambda: now[0])
    store.open("a", "rt-a")
    store.open("b", "rt-b")
    pa = store.save("a", "model", "../../etc/mine.safetensors", b"x" * 3000)
    assert pa.parent.parent.parent.name == "a" and pa.name == "mine.safetensors"
    assert store.path("a", "model", pa.parent.name) == pa
    with pytest.raises(UploadGoneError, match="upload it again"):
        store.path("b", "model", pa.parent.name)  # the same digest, another session
    with pytest.raises(UploadGoneError):
        store.path("a", "model", "../b")

    # one checkpoint per session: a new one replaces the old
    pa2 = store.save("a", "model", "other.pt", b"y" * 3000)
    assert not pa.exists() and pa2.exists()
    # the cap counts every session's files
    store.save("b", "model", "b.safetensors", b"z" * 6000)
    assert store.total_bytes() == 9000
    with pytest.raises(UploadsFullError, match=r"full \(9 MB|full"):
        store.save("b", "image", "big.png", b"w" * 2000)
    assert store.total_bytes() == 9000
    # pictures: the last IMAGES_PER_SESSION kept
    store.drop("b")
    kept = [store.save("b", "image", f"{i}.png", bytes([i]) * 10) for i in range(12)]
    now[0] += 1  # mtimes are whole seconds on some filesystems; order by save is enough
    assert sum(p.exists() for p in kept) == IMAGES_PER_SESSION and kept[-1].exists()
    # the same picture again under another name: stored under the new name, not an error
    again = store.save("b", "image", "renamed.png", bytes([11]) * 10)
    assert again.parent == kept[-1].parent and again.exists() and not kept[-1].exists()
    assert sum(p.exists() for p in kept) == IMAGES_PER_SESSION - 1

    # a session Streamlit no longer lists: gone after the reconnect window
    alive["rt-a"] = False
    now[0] += 10
    assert store.sweep() == []
    now[0] += GONE_AFTER_S
    assert store.sweep() == ["a"]
    assert not (tmp_path / "up" / "a").exists() and pa2.exists() is False
    # an idle session: gone after idle_s
    now[0] += 3601
    assert store.sweep() == ["b"]
    assert store.total_bytes() == 0 and list((tmp_path / "up").iterdir()) == []


def upload_model(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="prune_upload_file").set_value(
        (name, data, "application/octet-stream")).run()
    return ok(at)


def model_bytes(tmp_path: Path, seed: int = 1, classes: int = 6) -> bytes:
    torch.manual_seed(seed)
    return save_model(build_model("vit-tiny", num_classes=classes),
                      tmp_path / f"m{seed}.safetensors").read_bytes()


def session_files(at: AppTest) -> list[Path]:
    from dashboard.state import uploads

    token = at.session_state["_prunelens_upload_session"].token
    return sorted(p for p in (uploads.store().root / token).rglob("*") if p.is_file())


def test_two_sessions_never_see_each_others_uploads(runs_dir, tmp_path):
    a = make_app(prune_source="upload", prune_pruners=["magnitude"]).run()
    upload_model(a, "a.safetensors", model_bytes(tmp_path, 1))
    assert not errors(a)
    digest = a.session_state["upload_digest"]
    files = session_files(a)
    assert [f.name for f in files] == ["a.safetensors"]

    # B pretends to hold A's upload: the lookup is B's own folder, where it is not
    b = make_app(prune_source="upload", prune_pruners=["magnitude"])
    b.session_state["upload_digest"] = digest
    ok(b.run())
    assert any("no longer on the server" in e and "upload it again" in e for e in errors(b))
    assert not metrics(b)
    assert files[0].exists()  # A's file is untouched


def test_a_sessions_uploads_are_deleted_when_it_goes(runs_dir, tmp_path, monkeypatch):
    at = make_app(prune_source="upload", prune_pruners=["magnitude"]).run()
    upload_model(at, "gone.safetensors", model_bytes(tmp_path, 2))
    files = session_files(at)
    assert files and all(f.exists() for f in files)
    del at
    gc.collect()
    # the server's sweep: a session the runtime no longer knows is dropped after GONE_AFTER_S
    # (a worker thread may still hold the closed session's state, so the finalizer alone is
    # not relied on)
    from dashboard.state import uploads

    store = uploads.store()
    later = store.clock() + uploads.GONE_AFTER_S + 1
    monkeypatch.setattr(store, "alive", lambda _runtime_id: False)
    monkeypatch.setattr(store, "clock", lambda: later)
    store.sweep()
    assert not any(f.exists() for f in files)


def test_uploads_over_the_cap_are_refused(runs_dir, tmp_path, monkeypatch):
    from dashboard.state import uploads

    monkeypatch.setattr(uploads.store(), "cap_bytes", uploads.store().total_bytes() + 1000)
    at = make_app(prune_source="upload", prune_pruners=["magnitude"]).run()
    upload_model(at, "big.safetensors", model_bytes(tmp_path, 3))
    assert any(e.startswith("Upload rejected: the server's space for uploads is full")
               for e in errors(at)), errors(at)
    assert "upload_digest" not in at.session_state


def test_pickled_code_and_bad_checkpoints_are_one_line(runs_dir, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    at = make_app(prune_source="upload").run()
    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    upload_model(at, "evil.pt", (tmp_path / "evil.pt").read_bytes())
    (shown,) = [e for e in errors(at) if e.startswith("Upload rejected")]
    assert shown == ("Upload rejected: cannot read evil.pt as a weights-only torch checkpoint "
                     "(only tensors are accepted, never pickled code): refused before anything "
                     "in it ran: it asks for the Python object posix.system")
    upload_model(at, "evil2.pt", pickle.dumps({"w": Evil()}, protocol=4))
    (shown,) = [e for e in errors(at) if e.startswith("Upload rejected")]
    assert shown.endswith("refused before anything in it ran: it holds pickle instructions a "
                          "weights-only load refuses (opcode 149)")
    assert not (tmp_path / "pwned").exists()
    # plain weights that do not fit the preset: one line naming the user's file
    save_file(_plain_state_dict(tiny_vit()), str(tmp_path / "t.safetensors"))
    upload_model(at, "wrong.safetensors", (tmp_path / "t.safetensors").read_bytes())
    (shown,) = errors(at)
    assert shown.startswith("wrong.safetensors does not fit") and "\n" not in shown


def test_page_errors_are_one_line_without_colour_codes():
    from dashboard.state.ui import _reason
    from core.models import CheckpointError

    torch_refusal = RuntimeError(
        "\x1b[1mWeights only load failed.\x1b[0m This file can still be loaded...\n"
        "Unsupported global: GLOBAL posix.system was not an allowed global by default.")
    assert _reason(torch_refusal) == ("refused before anything in it ran: it asks for the "
                                      "Python object posix.system")
    assert _reason(CheckpointError("first line\nsecond")) == "first line"
    assert _reason(ValueError("\x1b[31mred\x1b[0m")) == "red"


def test_page_errors_name_no_server_path(tmp_path, monkeypatch):
    """Errors about files under a data root or in a session's upload folder show the root's
    name and the file's name, not the server's paths (the upload folder holds the session's
    private token)."""
    from dashboard.state.ui import _reason

    root = tmp_path / "srv" / "datasets"
    root.mkdir(parents=True)
    monkeypatch.setenv("PRUNELENS_DATA_ROOTS", str(root))
    msg = _reason(ValueError(f"the validation split of {str(root / 'flowers')!r} is empty"))
    assert msg == "the validation split of 'datasets/flowers' is empty"
    assert str(tmp_path) not in msg
    upload = "/tmp/prunelens-uploads-k3j2/0f9e8d7c6b5a/image/1234abcd/cat (1).png"
    msg = _reason(FileExistsError(f"[Errno 17] File exists: '{upload}'"))
    assert msg == "[Errno 17] File exists: 'cat (1).png'"


# ---------------------------------------------------------------------------- 3. images

def attention_upload(name: str, data: bytes, **session) -> AppTest:
    at = make_app(att_criteria=["magnitude"], **session).run()
    at.switch_page("pages/attention.py").run()
    at.radio(key="att_image_source").set_value("upload").run()
    at.file_uploader(key="att_upload").set_value((name, data, "image/png")).run()
    return ok(at)


@pytest.mark.slow  # several page runs (CI runs it)
def test_image_uploads_are_decoded_safely(runs_dir):
    at = attention_upload("notes.png", b"%PDF-1.4\n" + bytes(3000))
    assert errors(at) == ["notes.png: not an image Pillow can read (PNG, JPEG, BMP, GIF, "
                          "TIFF, WebP, ...)"]
    at.file_uploader(key="att_upload").set_value(
        ("bomb.png", huge_png(13000, 13000), "image/png")).run()
    ok(at)
    (shown,) = errors(at)
    assert shown.startswith("bomb.png: 13000x13000 pixels (169.0 megapixels) is over the limit")
    at.file_uploader(key="att_upload").set_value(("ok.png", png(), "image/png")).run()
    ok(at)
    assert not errors(at)
    assert [f.name for f in session_files(at)] == ["ok.png"]  # refused files are not kept


# ---------------------------------------------------------------------------- 4. model folders

def model_app(choice: str | None, **session) -> AppTest:
    at = make_app(prune_source="folder", prune_dataset="folder", prune_pruners=["magnitude"],
                  prune_val=16, prune_calib=8, **session)
    at.session_state["prune_folder"] = "plants"
    if choice is not None:
        at.session_state["prune_model_folder"] = choice
    return at


def note(at: AppTest) -> str:
    return next(c.value for c in at.sidebar.caption if "tokens:" in c.value)


def test_hf_folder_model_is_loaded_and_described(runs_dir, roots):
    model = tiny_vit(distilled=True)
    save_model(model, roots / "models" / "deit", format="hf")
    at = ok(model_app(None).run())
    assert at.selectbox(key="prune_model_folder").options == ["data/models/deit"]
    at.selectbox(key="prune_model_folder").set_value(str(roots / "models" / "deit")).run()
    ok(at)
    assert not errors(at)
    text = note(at)
    params = sum(p.numel() for p in model.parameters())
    # MACs by hand: patch embedding + per block qkv, q·kᵀ, attn·v, proj, fc1, fc2 + 2 heads
    N, C, P = 9 + 2, 32, 9
    macs = P * C * 3 * 64 + 2 * (N * C * 3 * C + 2 * N * N * C + N * C * C + 2 * N * C * 48) \
        + 2 * C * 2
    assert "vit · tokens: class, distillation · input 3×24×24" in text
    assert "mean (0.4, 0.5, 0.6), std (0.2, 0.3, 0.25)" in text
    assert f"{params / 1e6:.2f} M parameters" in text and f"{macs / 1e6:.1f} M MACs" in text
    assert any("model folder" in c.value for c in at.caption)
    assert len(metrics(at)["Accuracy"]) == 2
    # the dataset was resized to the model's input: 24×24, not the preset's 32×32
    from dashboard.state import folders
    keys = [k for k in folders._datasets()[0] if k.root == str(roots / "plants")]
    assert {k.image_size for k in keys} == {(24, 24)}


def test_timm_folder_without_class_token_says_maps_are_means(runs_dir, roots):
    model = tiny_vit(class_token=False, global_pool="avg", fc_norm=True, num_reg_tokens=2)
    timm_folder(roots / "gap", model, class_token=False, global_pool="avg", fc_norm=True,
                reg_tokens=2)
    at = ok(model_app(str(roots / "gap")).run())
    assert not errors(at)
    text = note(at)
    assert "tokens: 2 register" in text and "mean attention over all patch queries" in text
    at.session_state["att_criteria"] = ["magnitude"]
    at.switch_page("pages/attention.py").run()
    ok(at)
    assert not errors(at)
    assert any("mean attention over all patch queries" in c.value for c in at.caption)


def test_model_folders_outside_the_roots_and_hub_ids(runs_dir, roots, tmp_path):
    outside = save_model(tiny_vit(), tmp_path / "outside", format="hf")
    (roots / "link").symlink_to(outside)
    answers = set()
    for text in (str(outside), "../outside", "link", "/etc", "hub:google/vit-base"):
        at = ok(model_app(text).run())
        answers.update(errors(at))
    assert answers == {REFUSAL}

    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc"
    save_model(tiny_vit(seed=3), snap, format="hf")
    at = ok(model_app(None).run())
    assert at.selectbox(key="prune_model_folder").options == ["org/tiny (Hugging Face cache)"]
    at.selectbox(key="prune_model_folder").set_value("hub:org/tiny").run()
    ok(at)
    assert not errors(at) and "input 3×24×24" in note(at)


def test_a_broken_model_folder_is_one_line(runs_dir, roots):
    (roots / "broken").mkdir()
    (roots / "broken" / "config.json").write_text('{"model_type": "swin"}')
    at = ok(model_app(str(roots / "broken")).run())
    (shown,) = errors(at)
    assert "\n" not in shown and "swin" in shown.lower()


# ---------------------------------------------------------------------------- 5. exports

def test_export_bytes_in_three_formats_match_the_model(tmp_path):
    import onnxruntime as ort

    from dashboard.state.exports import export_bytes, export_problems

    model = tiny_vit(seed=4)
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
    assert export_problems(model) == {"prunelens": None, "hf": None, "onnx": None}

    (tmp_path / "m.safetensors").write_bytes(export_bytes(model, "prunelens"))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "m.safetensors")(x), want)
    with zipfile.ZipFile(io.BytesIO(export_bytes(model, "hf"))) as zf:
        assert sorted(zf.namelist()) == ["model/config.json", "model/model.safetensors",
                                         "model/preprocessor_config.json"]
        zf.extractall(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "hf" / "model")(x), want, atol=1e-5,
                                   rtol=0)
    sess = ort.InferenceSession(export_bytes(model, "onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


def test_formats_a_model_cannot_take_give_the_reason(tmp_path):
    from core.pruning import prune
    from dashboard.state.exports import export_problems

    from tests._tiny import random_vit

    torch.manual_seed(0)
    model = build_model("vit-tiny", 5).eval()
    # SNP shrinks every block of this model alike: transformers 5's head_dim says so
    shrunk = prune(model, "snp", 0.3, images=torch.rand(4, 3, 32, 32)).model.eval()
    assert export_problems(shrunk) == {"prunelens": None, "hf": None, "onnx": None}
    problems = export_problems(random_vit())  # blocks of 3 and 2 heads
    assert problems["prunelens"] is None and problems["onnx"] is None
    assert "cannot express" in problems["hf"] and "per-block head counts" in problems["hf"]
    assert problems["hf"].endswith("use ONNX or PruneLens")
    assert "transformers has no linformer" in export_problems(
        build_model("linformer-vit-tiny", 5))["hf"]


def test_prune_page_offers_downloads_next_to_the_pruned_models(runs_dir):
    at = ok(make_app(prune_pruners=["magnitude"]).run())
    labels = {b.key: b.label for b in at.get("download_button")}
    assert labels == {"prune_export_prunelens": "PruneLens (.safetensors)",
                      "prune_export_hf": "Hugging Face (.zip)",
                      "prune_export_onnx": "ONNX (.onnx)"}
    # a family transformers has no class for: the reason instead of the button
    at.selectbox(key="prune_model").set_value("linformer-vit-tiny").run()
    ok(at)
    assert {b.key for b in at.get("download_button")} == {"prune_export_prunelens",
                                                          "prune_export_onnx"}
    assert any("**Hugging Face (.zip)** not available: transformers has no linformer-vit "
               "model; use ONNX or PruneLens" in shown(c.value) for c in at.caption)
