"""Hub ids: ``load_model("org/name")`` through the real ``huggingface_hub`` client, against a
mirror this file serves on 127.0.0.1 (``hub_mirror.py``), never the internet.

Oracles: transformers' own models on the folder the repository was made from (ViT, DeiT,
DeiT with teacher), and for a timm repository both transformers (the same weights renamed to
timm's keys, written independently in test_hf.py) and the project's timm folder reader on the
local folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")

from hub_mirror import hub_mirror  # noqa: E402,F401  (the fixture)
from test_hf import hf_logits, hf_model, hf_to_timm, images, timm_folder  # noqa: E402

from core.models import CheckpointError, load_model  # noqa: E402
from core.models.hub import download  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HF_CLASSES = ["ViTForImageClassification", "DeiTForImageClassification",
              "DeiTForImageClassificationWithTeacher"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def hf_folder(path: Path, cls_name: str = "ViTForImageClassification", seed: int = 0,
              preprocessor: bool = False, **overrides) -> tuple[Path, torch.nn.Module]:
    """A ``save_pretrained`` folder of a tiny random transformers classifier, and the model."""
    hf = hf_model(cls_name, seed, **overrides)
    hf.save_pretrained(path)
    if preprocessor:
        transformers.ViTImageProcessor(image_mean=list(MEAN), image_std=list(STD),
                                       size={"height": 16, "width": 16}).save_pretrained(path)
    return path, hf


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def fetched(mirror) -> list[str]:
    """Names of the files the client downloaded (GET), in order."""
    return [p.rsplit("/", 1)[-1] for p in mirror.fetched("GET")]


def same_logits(model: torch.nn.Module, want: torch.Tensor, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-4, rtol=0)


def fails(pattern: str | None = None, **kwargs) -> str:
    """``load_model(**kwargs)``'s one-line CheckpointError message."""
    repo = kwargs.pop("repo")
    with pytest.raises(CheckpointError) as err:
        load_model(repo, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    if pattern is not None:
        assert pattern in msg, msg
    return msg


# ---------------------------------------------------------------------------- downloads

@pytest.mark.parametrize("cls_name", HF_CLASSES)
def test_hub_id_matches_transformers_and_fetches_only_what_is_read(tmp_path, hub_mirror,
                                                                   cls_name):
    folder, hf = hf_folder(tmp_path / "src", cls_name, preprocessor=True)
    extra = {"README.md": b"# a model card", "pytorch_model.bin": b"\0" * 4096,
             "onnx/model.onnx": b"\1" * 8192, "tf_model.h5": b"\2" * 4096}
    sha = hub_mirror.add("org/tiny", files(folder) | extra)
    seen: list[tuple[int, int]] = []
    ours = load_model("org/tiny", progress=lambda done, total: seen.append((done, total)))
    x = images()
    same_logits(ours, hf_logits(hf, x, MEAN, STD), x)
    assert not ours.training
    # config first, checked before the weights; nothing the reader does not need
    assert fetched(hub_mirror) == ["config.json", "preprocessor_config.json",
                                   "model.safetensors"]
    # huggingface_hub's cache layout, its refs recording what main pointed to
    repo = hub_mirror.cache / "models--org--tiny"
    assert (repo / "refs" / "main").read_text() == sha
    assert sorted(p.name for p in (repo / "snapshots" / sha).iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    # progress: bytes done of the three files, never backwards, ending at the total
    total = sum(len((folder / n).read_bytes()) for n in ("config.json", "model.safetensors",
                                                         "preprocessor_config.json"))
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    # loaded again: the files are not downloaded a second time
    before = len(hub_mirror.fetched("GET"))
    same_logits(load_model("org/tiny"), hf_logits(hf, x, MEAN, STD), x)
    assert len(hub_mirror.fetched("GET")) == before


def test_timm_repo_matches_transformers_and_the_timm_folder_reader(tmp_path, hub_mirror):
    folder, hf = hf_folder(tmp_path / "hf", "DeiTForImageClassificationWithTeacher",
                           layer_norm_eps=1e-6)  # timm's eps
    # the file's tensors (the hub's names; transformers 5 renames its modules in memory)
    sd = hf_to_timm(load_file(folder / "model.safetensors"), depth=2)
    local = timm_folder(tmp_path / "timm", sd, "deit_tiny_distilled_patch4_16", 5, 16,
                        num_heads=4)
    torch.save(sd, local / "pytorch_model.bin")  # timm's hub repos carry both files
    hub_mirror.add("timm/deit_tiny_distilled_patch4_16.fb_in1k", local)
    ours = load_model("timm/deit_tiny_distilled_patch4_16.fb_in1k")
    x = images()
    same_logits(ours, hf_logits(hf, x), x)
    with torch.no_grad():
        same_logits(ours, load_model(local)(x), x)
    assert fetched(hub_mirror) == ["config.json", "model.safetensors"]


def test_bin_only_repo_is_read_weights_only(tmp_path, hub_mirror):
    folder, hf = hf_folder(tmp_path / "src", seed=2)
    # the same tensors as a torch file (transformers 5 no longer writes .bin)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    hub_mirror.add("org/bin", folder)
    x = images()
    same_logits(load_model("org/bin"), hf_logits(hf, x), x)
    assert fetched(hub_mirror) == ["config.json", "pytorch_model.bin"]


def test_revisions_branch_tag_commit_online_and_offline(tmp_path, hub_mirror, monkeypatch):
    _, a = hf_folder(tmp_path / "a", seed=0)
    _, b = hf_folder(tmp_path / "b", seed=1)
    sha_a = hub_mirror.add("org/m", tmp_path / "a")
    hub_mirror.add("org/m", tmp_path / "b", revision="v2")
    x = images()
    want_a, want_b = hf_logits(a, x), hf_logits(b, x)
    same_logits(load_model("org/m"), want_a, x)
    same_logits(load_model("org/m", revision="v2"), want_b, x)
    same_logits(load_model("org/m", revision=sha_a), want_a, x)
    # offline, the cache's refs resolve the same names, and nothing is asked of the mirror
    asked = len(hub_mirror.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same_logits(load_model("org/m", revision="v2"), want_b, x)
    same_logits(load_model("org/m"), want_a, x)
    same_logits(load_model("org/m", revision=sha_a), want_a, x)
    msg = fails("at revision 'v3' is not a local path and not in the local Hugging Face cache",
                repo="org/m", revision="v3")
    assert "HF_HUB_OFFLINE is set" in msg and "hf download org/m --revision v3" in msg
    assert len(hub_mirror.log) == asked


def test_offline_and_downloads_off_read_the_cache_only(tmp_path, hub_mirror, monkeypatch):
    _, hf = hf_folder(tmp_path / "src")
    hub_mirror.add("org/m", tmp_path / "src")
    for name, value, reason in (("HF_HUB_OFFLINE", "1", "HF_HUB_OFFLINE is set"),
                                ("PRUNELENS_HUB_DOWNLOADS", "0", "downloads are turned off")):
        monkeypatch.setenv(name, value)
        msg = fails("not in the local Hugging Face cache", repo="org/m")
        assert reason in msg and "hf download org/m" in msg
        monkeypatch.delenv(name)
    fails("downloads are turned off", repo="org/m", allow_download=False)
    assert hub_mirror.log == []
    monkeypatch.setenv("PRUNELENS_HUB_DOWNLOADS", "0")  # allow_download overrides the default
    x = images()
    same_logits(load_model("org/m", allow_download=True), hf_logits(hf, x), x)
    asked = len(hub_mirror.log)
    same_logits(load_model("org/m"), hf_logits(hf, x), x)  # from the cache now
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline wins over allow_download
    same_logits(load_model("org/m", allow_download=True), hf_logits(hf, x), x)
    assert len(hub_mirror.log) == asked


def test_hf_home_and_hf_hub_cache_say_where_the_cache_is(tmp_path, hub_mirror, monkeypatch):
    hf_folder(tmp_path / "src")
    hub_mirror.add("org/m", tmp_path / "src")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert download("org/m").is_relative_to(tmp_path / "home" / "hub" / "models--org--m")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other"))  # wins over HF_HOME
    assert download("org/m").is_relative_to(tmp_path / "other" / "models--org--m")
    assert not hub_mirror.cache.exists()


def test_private_repo_needs_hf_token_which_is_sent(tmp_path, hub_mirror, monkeypatch):
    _, hf = hf_folder(tmp_path / "src")
    hub_mirror.add("org/private", tmp_path / "src", private=True, token="hf_right")
    fails("(if it is private, set HF_TOKEN to an access token that can read it)",
          repo="org/private")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    fails("that the token in HF_TOKEN can read", repo="org/private")
    monkeypatch.setenv("HF_TOKEN", "hf_right")
    asked = len(hub_mirror.log)
    x = images()
    same_logits(load_model("org/private"), hf_logits(hf, x), x)
    assert {r.authorization for r in hub_mirror.log[asked:]} == {"Bearer hf_right"}
    assert fetched(hub_mirror) == ["config.json", "model.safetensors"]


def test_gated_repo_without_token_names_hf_token(tmp_path, hub_mirror, monkeypatch):
    _, hf = hf_folder(tmp_path / "src")
    hub_mirror.add("org/gated", tmp_path / "src", gated=True, token="hf_granted")
    msg = fails("org/gated is a gated repository", repo="org/gated")
    assert "set HF_TOKEN" in msg and f"{hub_mirror.url}/org/gated" in msg
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    fails("the token in HF_TOKEN has not been granted access", repo="org/gated")
    assert fetched(hub_mirror) == []
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    x = images()
    same_logits(load_model("org/gated"), hf_logits(hf, x), x)


# ---------------------------------------------------------------------------- bad input

def test_unknown_repo_revision_and_bad_names(tmp_path, hub_mirror):
    hf_folder(tmp_path / "src")
    hub_mirror.add("org/m", tmp_path / "src")
    fails(f"'org/missing' is not a local path, and {hub_mirror.url} has no model repository "
          "of that name", repo="org/missing")
    fails("org/m has no revision 'nope'", repo="org/m", revision="nope")
    asked = len(hub_mirror.log)
    for revision in ("../../etc", "/abs", "a b", "x" * 200):
        fails("is not a revision name", repo="org/m", revision=revision)
    for repo_id in ("not-a-hub-id", "org/a--b", "org/a..b", "-org/m", "org/m.", "a/b/c",
                    "org/" + "x" * 97):
        with pytest.raises(CheckpointError, match="is not a Hugging Face hub id"):
            download(repo_id)
    with pytest.raises(ValueError, match="revision= is for Hugging Face hub ids"):
        load_model(tmp_path / "src", revision="main")
    assert len(hub_mirror.log) == asked
    assert fetched(hub_mirror) == []


@pytest.mark.parametrize("config, named", [
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "'bert' (BertForMaskedLM)"),
    ({"model_type": "vit", "architectures": ["ViTModel"], "hidden_size": 32}, "'ViTModel'"),
    ({"model_type": "swin", "architectures": ["SwinForImageClassification"]}, "'swin'"),
    ({"architecture": "resnet50", "num_classes": 10}, "timm 'resnet50'"),
])
def test_not_a_vit_classifier_is_refused_before_the_weights(hub_mirror, config, named):
    hub_mirror.add("org/other", {"config.json": json.dumps(config).encode(),
                                 "model.safetensors": b"\0" * 1024})
    msg = fails("unsupported architecture", repo="org/other")
    assert named in msg, msg
    assert "ViTForImageClassification, DeiTForImageClassification" in msg  # what is read
    assert "timm vit_*/deit_*/deit3_*" in msg
    assert fetched(hub_mirror) == ["config.json"]


def test_repos_without_a_model_folder_layout(hub_mirror):
    hub_mirror.add("org/gguf", {"README.md": b"#", "model.gguf": b"\0" * 64})
    fails("org/gguf has no config.json, so it is no Hugging Face or timm model (it holds "
          "README.md, model.gguf)", repo="org/gguf")
    hub_mirror.add("org/sharded", {"config.json": b"{}", "model.safetensors.index.json": b"{}",
                                   "model-00001-of-00002.safetensors": b"\0"})
    fails("org/sharded holds a sharded checkpoint", repo="org/sharded")
    hub_mirror.add("org/noweights", {"config.json": b"{}", "flax_model.msgpack": b"\0"})
    fails("org/noweights holds no model.safetensors or pytorch_model.bin", repo="org/noweights")
    assert fetched(hub_mirror) == []


def test_too_large_is_refused_before_anything_is_downloaded(tmp_path, hub_mirror,
                                                            monkeypatch):
    _, hf = hf_folder(tmp_path / "src")
    hub_mirror.add("org/big", tmp_path / "src")
    size = sum(len(b) for b in files(tmp_path / "src").values())
    monkeypatch.setenv("PRUNELENS_HUB_MAX_MB", f"{size / 2 / 2**20:.6f}")
    fails("org/big is too large: model.safetensors and its configuration are 0 MB, over the "
          "limit of 0 MB (PRUNELENS_HUB_MAX_MB); nothing was downloaded", repo="org/big")
    assert hub_mirror.fetched("GET") == hub_mirror.fetched("HEAD") == []
    assert not (hub_mirror.cache / "models--org--big").exists()
    monkeypatch.setenv("PRUNELENS_HUB_MAX_MB", f"{size * 2 / 2**20:.6f}")
    x = images()
    same_logits(load_model("org/big"), hf_logits(hf, x), x)
    monkeypatch.setenv("PRUNELENS_HUB_MAX_MB", "lots")
    fails("PRUNELENS_HUB_MAX_MB must be a positive number of MB", repo="org/other")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_at_once_and_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    msg = fails("cannot reach the Hugging Face hub at http://127.0.0.1:", repo="org/m")
    assert "connection refused" in msg
    assert "work offline: HF_HUB_OFFLINE=1 with the model already in the Hugging Face cache" \
        in msg


def test_a_hub_that_hangs_up_is_asked_once(tmp_path, monkeypatch):
    """Fails at the first dropped connection, no retries (so no wait) before saying so."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # the server socket was closed: the test is over
                return
            accepted.append(conn.recv(65536))
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        fails("cannot reach the Hugging Face hub", repo="org/m")
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() up
        server.close()
        thread.join(5)
    assert len(accepted) == 1 and accepted[0].startswith(b"GET /api/models/org/m")


def test_interrupted_download_resumes_or_restarts_cleanly(tmp_path, hub_mirror):
    """The connection drops half-way through the weights: huggingface_hub < 1 gives up (one
    line; the snapshot holds no weights, the partial file waits beside the blobs) and the next
    call resumes from what arrived; later versions retry within the call. Either way the file
    ends up whole and nothing half-written is ever in the snapshot."""
    _, hf = hf_folder(tmp_path / "src")
    sha = hub_mirror.add("org/m", tmp_path / "src")
    weights = (tmp_path / "src" / "model.safetensors").read_bytes()
    hub_mirror.drop_once("org/m", "model.safetensors")
    repo = hub_mirror.cache / "models--org--m"
    x = images()
    try:
        model = load_model("org/m")
    except CheckpointError as e:
        msg = str(e)
        assert "\n" not in msg and "the download of model.safetensors of org/m from" in msg
        assert "run the same command again to resume it" in msg
        assert sorted(p.name for p in (repo / "snapshots" / sha).iterdir()) == ["config.json"]
        (partial,) = (repo / "blobs").glob("*.incomplete")
        assert partial.stat().st_size < len(weights)
        with pytest.raises(CheckpointError, match="the cached org/m has no weights"):
            download("org/m", allow_download=False)
        model = load_model("org/m")
    same_logits(model, hf_logits(hf, x), x)
    gets = [r for r in hub_mirror.log if r.method == "GET" and r.path.endswith("safetensors")]
    assert len(gets) == 2  # the dropped one, then one that resumed (Range) or restarted
    assert gets[1].range is None or gets[1].range.startswith("bytes=")
    blob = (repo / "snapshots" / sha / "model.safetensors").resolve()
    assert hashlib.sha256(blob.read_bytes()).digest() == hashlib.sha256(weights).digest()
    assert not list((repo / "blobs").glob("*.incomplete"))


def test_a_link_planted_in_the_cache_is_not_followed_online(tmp_path, hub_mirror):
    hf_folder(tmp_path / "src")
    sha = hub_mirror.add("org/m", tmp_path / "src")
    download("org/m")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((tmp_path / "src" / "model.safetensors").read_bytes())
    planted = hub_mirror.cache / "models--org--m" / "snapshots" / sha / "model.safetensors"
    planted.unlink()
    planted.symlink_to(outside)  # huggingface_hub returns a commit's cached file as it is
    fails("the cached 'org/m' has files linking out of its cache folder", repo="org/m")


# ---------------------------------------------------------------------------- CLI

@pytest.mark.slow  # a fresh interpreter running a sweep
def test_cli_sweep_takes_a_hub_id(tmp_path, hub_mirror):
    hf_folder(tmp_path / "src", num_labels=6)  # shapes has 6 classes; 16×16 images
    hub_mirror.add("org/shapes-vit", tmp_path / "src")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "core", "sweep", "--model", "org/shapes-vit", "--data",
           "shapes", "--data-opt", "num_train=30", "--data-opt", "num_val=12", "--criteria",
           "magnitude", "--sparsities", "0", "0.5", "--val", "8", "--calib", "4",
           "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((out / "sweep.csv").read_text().splitlines()) == 1 + 2
    assert "org/shapes-vit" in (out / "report.html").read_text()
    bad = subprocess.run(cmd[:5] + ["org/missing"] + cmd[6:-1] + [str(tmp_path / "out2")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "has no model repository of that name" in bad.stderr.strip().splitlines()[-1]


def test_cli_train_fine_tunes_a_hub_model(tmp_path, hub_mirror, capsys):
    from core.__main__ import main

    hf_folder(tmp_path / "src", num_labels=6)
    hub_mirror.add("org/shapes-vit", tmp_path / "src", revision="v1")
    common = ["train", "--data", "shapes", "--data-opt", "num_train=12", "--data-opt",
              "num_val=6", "--epochs", "1", "--batch-size", "6", "--max-steps", "1",
              "--no-progress", "--runs-dir", str(tmp_path / "runs")]
    assert main([*common, "--model", "org/shapes-vit", "--revision", "v1",
                 "--out", str(tmp_path / "tuned.safetensors")]) == 0
    assert "finished after 1 steps" in capsys.readouterr().out
    assert load_model(tmp_path / "tuned.safetensors").num_classes == 6
    assert main([*common, "--model", "org/shapes-vit", "--image-size", "32"]) == 2
    assert "--image-size is for presets" in capsys.readouterr().err
    assert main([*common, "--model", "vit-tiny", "--revision", "v1"]) == 2
    assert "--revision is for hub ids" in capsys.readouterr().err


# ---------------------------------------------------------------------------- dashboard

def test_dashboard_hub_source_downloads_with_progress_where_allowed(tmp_path, hub_mirror,
                                                                    monkeypatch, runs_dir):
    from test_dashboard import errors, make_app, ok, shown

    # AppTest leaves server.address unset (every interface): downloads off, no hub source
    at = ok(make_app().run())
    assert "Hugging Face hub" not in at.radio(key="prune_source").options
    monkeypatch.setenv("PRUNELENS_HUB_DOWNLOADS", "1")
    _, hf = hf_folder(tmp_path / "src", num_labels=6)  # shapes: 6 classes; 16×16 images
    hub_mirror.add("org/tiny", tmp_path / "src")
    session = dict(prune_source="hub", prune_pruners=["magnitude"], prune_val=16,
                   prune_calib=8)
    at = ok(make_app(**session, prune_hub_id="org/tiny").run())
    assert "Hugging Face hub" in at.radio(key="prune_source").options
    assert not errors(at)
    assert fetched(hub_mirror) == ["config.json", "model.safetensors"]
    captions = [shown(c.value) for c in [*at.caption, *at.markdown]]
    assert any("org/tiny (Hugging Face hub)" in c for c in captions), captions
    assert not any(str(hub_mirror.cache) in c for c in captions)  # no server path
    asked = len(hub_mirror.log)
    at.run()  # a rerun reads the cache: the hub is not asked again
    ok(at)
    assert len(hub_mirror.log) == asked
    for text, message in (("org/missing", "has no model repository of that name"),
                          ("../../etc/passwd", "is not a Hugging Face hub id"),
                          ("org/tiny@../x", "is not a revision name")):
        at.text_input(key="prune_hub_id").set_value(text).run()
        ok(at)
        (shown_error,) = errors(at)
        assert message in shown_error and "\n" not in shown_error
    # downloads off: the state layer itself refuses (a page may run with the source set
    # before the radio drops it); what is in the cache still loads, without a request
    from dashboard.state import folders

    monkeypatch.setenv("PRUNELENS_HUB_DOWNLOADS", "0")
    asked = len(hub_mirror.log)
    assert folders.hub_model("org/tiny").parents[1].name == "models--org--tiny"
    with pytest.raises(CheckpointError, match="downloads are off here") as err:
        folders.hub_model("org/other")
    assert str(hub_mirror.cache) not in str(err.value)
    assert len(hub_mirror.log) == asked
    at = ok(make_app(**session, prune_hub_id="org/tiny").run())
    assert "Hugging Face hub" not in at.radio(key="prune_source").options


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.1.1", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), (None, False)])
def test_dashboard_downloads_default_off_beyond_loopback(monkeypatch, address, loopback):
    from streamlit import config

    from dashboard.state import folders

    monkeypatch.delenv("PRUNELENS_HUB_DOWNLOADS", raising=False)
    previous = config.get_option("server.address")
    config.set_option("server.address", address)
    try:
        assert folders.listens_on_loopback() is loopback
        assert folders.downloads_allowed() is loopback
        assert ("hub" in folders.model_sources()) is loopback
        for value, allowed in (("1", True), ("0", False), ("maybe", False)):
            monkeypatch.setenv("PRUNELENS_HUB_DOWNLOADS", value)
            assert folders.downloads_allowed() is allowed
    finally:
        config.set_option("server.address", previous)


def test_sweep_command_names_the_revision():
    from core import report

    line = report.sweep_command("org/m", "shapes", ["magnitude"], [0.5], [0], 8, 4, "global",
                                revision="v1")
    assert "--model org/m --revision v1 --data shapes" in line
