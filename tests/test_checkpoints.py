"""Hostile and broken checkpoint files: a clear CheckpointError naming the problem, before any
large allocation, and nothing executed (issue: hardening)."""
from __future__ import annotations

import io
import json
import os
import pickle
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from core.models import CheckpointError, build_model, load_model, load_weights, save_model
from core.models.checkpoint import _read_state_dict, checkpoint_info
from core.models.registry import _plain_state_dict


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("ckpt") / "vit.safetensors"
    save_model(build_model("vit-tiny", 3), path)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return path, meta


def _forge(tmp_path: Path, sd: dict, meta: dict, name: str = "forged.safetensors") -> Path:
    path = tmp_path / name
    save_file(sd, str(path), metadata=meta)
    return path


def test_forged_architecture_is_refused_before_allocating(tmp_path, saved):
    """A tiny file declaring mlp_hidden=2,000,000 once made the server allocate ~1.35 GB."""
    _, meta = saved
    cfg = json.loads(meta["prunelens_config"])
    cfg["blocks"][0]["mlp_hidden"] = 2_000_000
    path = _forge(tmp_path, {"x": torch.zeros(1)}, {**meta, "prunelens_config": json.dumps(cfg)})
    assert path.stat().st_size < 2000
    with pytest.raises(CheckpointError, match=r"mlp_hidden must be in \[1, 65536\]"):
        load_model(path)
    cfg["blocks"][0]["mlp_hidden"] = 60_000       # within bounds: the header shapes decide
    path = _forge(tmp_path, {"x": torch.zeros(1)}, {**meta, "prunelens_config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys: x"):
        load_model(path)


@pytest.mark.slow  # a fresh interpreter
def test_forged_architecture_costs_no_memory_in_a_fresh_process(tmp_path, saved):
    _, meta = saved
    cfg = json.loads(meta["prunelens_config"])
    cfg["embed_dim"], cfg["blocks"] = 60_000, [dict(b, mlp_hidden=60_000) for b in cfg["blocks"]]
    path = _forge(tmp_path, {"x": torch.zeros(1)}, {**meta, "prunelens_config": json.dumps(cfg)})
    code = textwrap.dedent(f"""
        import resource, torch
        from core.models import load_model, CheckpointError
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_model({str(path)!r})
        except CheckpointError:
            pass
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) < 100, out.stdout   # MiB over the imports


@pytest.mark.parametrize("field, value, message", [
    ("prunelens_config", "{not json", "prunelens_config is not valid JSON"),
    ("prunelens_config", "[1, 2]", "must be a JSON object"),
    ("prunelens_family", "swin", "prunelens_family: unknown model family 'swin'"),
])
def test_forged_metadata_fields(tmp_path, saved, field, value, message):
    path, meta = saved
    sd = _plain_state_dict(load_model(path))
    with pytest.raises(CheckpointError, match=message):
        load_model(_forge(tmp_path, sd, {**meta, field: value}))


def test_config_missing_or_wrong_fields_are_named(tmp_path, saved):
    path, meta = saved
    sd = _plain_state_dict(load_model(path))
    cfg = json.loads(meta["prunelens_config"])
    lin = {**meta, "prunelens_family": "linformer-vit"}
    with pytest.raises(CheckpointError, match="lacks the field 'layers'"):
        load_model(_forge(tmp_path, sd, {**lin, "prunelens_config": json.dumps(
            {k: v for k, v in cfg.items() if k != "blocks"})}))
    with pytest.raises(CheckpointError, match="patch_size must be in"):
        load_model(_forge(tmp_path, sd, {**meta, "prunelens_config": json.dumps(
            {**cfg, "patch_size": 0})}))
    with pytest.raises(CheckpointError, match="unknown ViT config fields: depthh"):
        load_model(_forge(tmp_path, sd, {**meta, "prunelens_config": json.dumps(
            {**cfg, "depthh": 3})}))


def test_integer_and_nan_weights_are_refused(tmp_path, saved):
    path, meta = saved
    sd = _plain_state_dict(load_model(path))
    q = dict(sd, **{"head.weight": sd["head.weight"].to(torch.int8)})
    with pytest.raises(CheckpointError, match=r"not: head.weight \(int8\)"):
        load_model(_forge(tmp_path, q, meta))
    n = dict(sd, **{"blocks.0.mlp.fc1.weight": torch.full_like(sd["blocks.0.mlp.fc1.weight"],
                                                                float("nan"))})
    with pytest.raises(CheckpointError, match="NaN or infinite values: blocks.0.mlp.fc1.weight"):
        load_model(_forge(tmp_path, n, meta))
    torch.save(n, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        load_weights(build_model("vit-tiny", 3), tmp_path / "nan.pth")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + str(Path(__file__).parent / "PWNED"),))


def test_pickled_code_is_refused_in_one_plain_line(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"w": torch.zeros(1), "x": _Evil()}, f)
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model("vit-tiny", 3), path)
    msg = str(info.value)
    assert "\x1b" not in msg and "\n" not in msg and "never pickled code" in msg
    assert not (Path(__file__).parent / "PWNED").exists()


def test_model_options_and_inputs_give_clear_errors():
    with pytest.raises(ValueError, match=r"patch_size must be in \[1"):
        build_model("vit-tiny", 3, patch_size=0)
    with pytest.raises(ValueError, match=r"img_size must be an int or \(height, width\), got '32'"):
        build_model("vit-tiny", 3, img_size="32")
    with pytest.raises(ValueError, match="do not fit this model, which takes .B, 3, 32, 32.; "
                                         "resize them to 32x32"):
        build_model("vit-tiny", 3)(torch.rand(2, 3, 30, 30))
    with pytest.raises(ValueError, match="resize them to 32x32"):
        build_model("linformer-vit-tiny", 3)(torch.rand(2, 3, 30, 30))


# ---------------------------------------------------------------------------- properties

_KEYS = ["cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight", "x"]
_meta_values = st.one_of(
    st.text(max_size=40),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(
        ["img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "blocks",
         "layers", "dim", "k", "mean", "std", "qkv_bias", "norm_eps"]),
        st.one_of(st.integers(-3, 1 << 40), st.floats(allow_nan=True), st.text(max_size=5),
                  st.lists(st.integers(-2, 300), max_size=3),
                  st.lists(st.dictionaries(st.sampled_from(
                      ["num_heads", "qk_dim", "v_dim", "mlp_hidden", "heads", "dim_head",
                       "ff_hidden", "scale"]), st.integers(-2, 1 << 33)), max_size=3)),
        max_size=8)))


# property scans: slow (CI runs them); no deadline, a fixed number of examples bounds the work
@pytest.mark.slow
@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(family=st.sampled_from(["vit", "linformer-vit", "", "x"]), config=_meta_values,
       shapes=st.dictionaries(st.sampled_from(_KEYS), st.lists(st.integers(0, 6), max_size=3),
                              max_size=4),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.int8]))
def test_reader_gives_a_checkpoint_error_or_a_model(tmp_path, family, config, shapes, dtype):
    sd = {k: torch.zeros(s, dtype=dtype) for k, s in shapes.items()} or {"x": torch.zeros(1)}
    path = tmp_path / "h.safetensors"
    save_file(sd, str(path), metadata={"prunelens_family": family, "prunelens_config": config})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        model = load_model(path)
    except CheckpointError:
        pass
    else:  # only a file whose header matches its declared architecture loads
        assert set(_plain_state_dict(model)) == set(sd)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200


@pytest.mark.slow
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_reader_of_random_bytes(tmp_path, data):
    for suffix in (".safetensors", ".pth"):
        path = tmp_path / f"r{suffix}"
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_model(path)


# ---------------------------------------------------------------------------- save / load edges

def _masked_vit(sparsity: float = 0.5):
    from core.pruning import prune
    torch.manual_seed(0)
    model = build_model("vit-tiny", 4).eval()
    return prune(model, "magnitude", sparsity).model


def test_masks_survive_the_round_trip(tmp_path):
    """The file lists the masked parameters; restore_masks puts the masks back, so training
    the loaded model keeps the pruned weights at zero (without it they move)."""
    from core.pruning import get_masks, restore_masks
    masked = _masked_vit()
    before = get_masks(masked)
    back = load_model(save_model(masked, tmp_path / "m.safetensors"))
    assert back.masked_params == tuple(sorted(before)) and not get_masks(back)
    assert not back.training  # eval mode, as transformers' from_pretrained
    restore_masks(back)
    after = get_masks(back)
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (back(x) - masked(x)).abs().max() < 1e-6
    opt = torch.optim.SGD(back.parameters(), lr=0.1)
    back.train()
    back(x).square().sum().backward()
    opt.step()
    plain = _plain_state_dict(back)
    assert all(int(plain[k][~before[k]].count_nonzero()) == 0 for k in before)
    # a dense model's file lists nothing, and restore_masks leaves it alone
    dense = load_model(save_model(build_model("vit-tiny", 4), tmp_path / "d.safetensors"))
    assert dense.masked_params == () and not get_masks(restore_masks(dense))


def test_forged_masked_list_is_refused(tmp_path):
    sd = _plain_state_dict(build_model("vit-tiny", 4))
    path = save_model(build_model("vit-tiny", 4), tmp_path / "ok.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    for value, message in ((json.dumps(["head.weight", "nope.weight"]), "nope.weight"),
                           ("[1, 2]", "list of tensor names"), ("{", "not valid JSON")):
        forged = _forge(tmp_path, sd, {**meta, "prunelens_masked": value})
        with pytest.raises(CheckpointError, match=message):
            load_model(forged)


def test_weights_pruned_with_torch_tools_are_baked_in(tmp_path):
    """torch.nn.utils.prune (weight_orig × weight_mask) and multi-input parametrizations
    (weight_norm: original0/original1) save as plain weights with the same outputs."""
    from torch.nn.utils import prune as torch_prune
    torch.manual_seed(0)
    a = build_model("vit-tiny", 4).eval()
    torch_prune.l1_unstructured(a.blocks[0].mlp.fc1, "weight", amount=0.5)
    b = build_model("vit-tiny", 4).eval()
    torch.nn.utils.parametrizations.weight_norm(b.head)
    x = torch.rand(2, 3, 32, 32)
    for name, model in (("prune", a), ("norm", b)):
        back = load_model(save_model(model, tmp_path / f"{name}.safetensors"))
        with torch.no_grad():
            assert (back(x) - model(x)).abs().max() < 1e-5, name
    fc1 = load_model(tmp_path / "prune.safetensors")
    assert fc1.masked_params == ("blocks.0.mlp.fc1.weight",)
    assert int((fc1.blocks[0].mlp.fc1.weight == 0).sum()) == fc1.blocks[0].mlp.fc1.weight.numel() // 2


def test_files_are_told_apart_by_content_not_name(tmp_path):
    model = build_model("vit-tiny", 4).eval()
    x = torch.rand(1, 3, 32, 32)
    for name in ("m.pt", "m.bin", "m", "m.SAFETENSORS"):  # safetensors under any name
        with torch.no_grad():
            back = load_model(save_model(model, tmp_path / name))(x)
            assert (back - model(x)).abs().max() < 1e-6, name
    with pytest.raises(ValueError, match="format='onnx'"):  # the forgotten format=
        save_model(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    onnx_file = save_model(model, tmp_path / "real.onnx", format="onnx")
    with pytest.raises(CheckpointError, match="ONNX file"):
        load_model(onnx_file)


def test_save_refuses_wrong_targets_and_leaves_nothing(tmp_path):
    model = build_model("vit-tiny", 4)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    for fmt in ("prunelens", "onnx"):
        with pytest.raises(CheckpointError, match="is a folder"):
            save_model(model, folder, format=fmt)
    file = save_model(model, tmp_path / "f.safetensors")
    with pytest.raises(CheckpointError, match="is a file"):
        save_model(model, file, format="hf")
    with pytest.raises(ValueError, match="prunelens_config"):
        save_model(model, tmp_path / "e.safetensors", extra={"prunelens_config": "{}"})
    with pytest.raises(ValueError, match="strings to strings"):
        save_model(model, tmp_path / "e.safetensors", extra={"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "f.safetensors"]
    assert not any(folder.iterdir())


def test_load_weights_into_a_masked_model_keeps_its_mask(tmp_path):
    """The file's values go under the mask: a re-masked model takes new weights and stays
    pruned where it was."""
    from core.pruning import get_masks
    masked = _masked_vit()
    masks = get_masks(masked)
    other = build_model("vit-tiny", 4)
    torch.nn.init.normal_(other.head.weight)
    load_weights(masked, save_model(other, tmp_path / "o.safetensors"))
    plain = _plain_state_dict(masked)
    assert torch.equal(plain["head.weight"], other.head.weight.detach() * masks["head.weight"])
    assert torch.equal(plain["pos_embed"], other.pos_embed.detach())  # not masked: as in file
    assert all(torch.equal(get_masks(masked)[k], masks[k]) for k in masks)


# ---------------------------------------------------------------------------- small files, big costs

def test_broadcast_views_are_refused_before_anything_reads_them(tmp_path):
    """A 1-element storage saved as a 60000 × 60000 expand (stride 0) is ~1 kB of file that
    would be 14 GB as weights: refused from the storage size, before any check walks it."""
    path = tmp_path / "s.pt"
    torch.save({"head.weight": torch.zeros(1).expand(60000, 60000)}, path)
    assert path.stat().st_size < 4096
    with pytest.raises(CheckpointError, match=r"broadcast views.*head\.weight \(60000, 60000\)"):
        checkpoint_info(path)
    with pytest.raises(CheckpointError, match="broadcast views"):
        load_weights(build_model("vit-tiny", 3), path)
    ok = tmp_path / "slices.pt"  # views that own their bytes (slices of one storage) load
    w = torch.randn(8, 4)
    torch.save({"a": w[:4], "b": w[4:]}, ok)
    assert set(_read_state_dict(ok)[0]) == {"a", "b"}


def test_compressed_torch_zip_is_refused_unread(tmp_path):
    """torch.save stores tensors uncompressed; a DEFLATE record that unpacks far beyond the
    file (here 64 MB of zeros from ~64 kB) is a decompression bomb."""
    import zipfile
    plain = tmp_path / "plain.pt"
    torch.save({"head.weight": torch.zeros(4)}, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data/0"):
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(zi, "w", force_zip64=True) as w:
                    for _ in range(8):
                        w.write(b"\0" * (16 * 2**20))
            else:
                zout.writestr(info, data)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"unpacks to 128 MB.*refused unread"):
        checkpoint_info(bomb)
    assert checkpoint_info(plain) == {}  # an ordinary torch file still reads


def test_oversized_safetensors_header_is_refused_before_parsing(tmp_path):
    """The header length is read first: 18 MB of header (320k empty tensors) is refused
    without parsing it; so is a header naming more tensors than any ViT has."""
    import struct

    from core.models import checkpoint
    n = 320_000
    header = b"{" + b",".join(b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i
                              for i in range(n)) + b"}"
    big = tmp_path / "big.safetensors"
    big.write_bytes(struct.pack("<Q", len(header)) + header)
    assert len(header) > checkpoint.MAX_HEADER_BYTES
    with pytest.raises(CheckpointError, match="declares a safetensors header of 18 MB"):
        load_model(big)
    many = tmp_path / "many.safetensors"
    save_file({f"t{i}": torch.zeros(0) for i in range(checkpoint.MAX_TENSORS + 1)}, str(many))
    with pytest.raises(CheckpointError, match=f"holds {checkpoint.MAX_TENSORS + 1} tensors"):
        load_model(many)


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "recursion"),
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "recursion"),
])
def test_deeply_nested_metadata_is_one_clear_error(tmp_path, saved, text, message):
    path, meta = saved
    sd, _ = _read_state_dict(path)
    for field in ("prunelens_config", "prunelens_masked"):
        forged = _forge(tmp_path, sd, {**meta, field: text})
        with pytest.raises(CheckpointError, match=f"{field} is not a readable.*{message}"):
            load_model(forged)
