"""Hostile model folders and bare timm state dicts: every problem is a one-line CheckpointError
naming the file and the field, found at once (configuration checked before anything is read
or built), never a raw Python exception; a model folder's files may not lead out of the data
roots; messages name a folder by its name, not by its path on the server.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from _noblock import no_blocking_special_opens
from core.data.roots import REFUSAL, DataPathError, check_files_under_roots
from core.models import BlockConfig, CheckpointError, VisionTransformer, ViTConfig, load_model
from core.models.checkpoint import _plain_state_dict, read_json
from core.models.hf import to_hf_state_dict
from core.models.timm_format import load_timm_state_dict

# ---------------------------------------------------------------------------- fixtures


def tiny_sd(embed_dim: int = 32, mlp: int = 37) -> tuple[ViTConfig, dict]:
    """16×16 images, 8×8 patches, 2 blocks (4 heads at width 32, 3 at timm's width 192),
    2 classes: the config and its timm-named tensors."""
    heads = 4 if embed_dim == 32 else 3
    d = embed_dim // heads
    cfg = ViTConfig(img_size=(16, 16), patch_size=8, num_classes=2, embed_dim=embed_dim,
                    blocks=(BlockConfig(heads, d, d, mlp),) * 2, norm_eps=1e-12)
    torch.manual_seed(0)
    return cfg, _plain_state_dict(VisionTransformer(cfg))


HF_CONFIG = {"model_type": "vit", "architectures": ["ViTForImageClassification"],
             "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 37, "image_size": 16, "patch_size": 8, "num_channels": 3,
             "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True,
             "id2label": {"0": "a", "1": "b"}}


def hf_folder(path: Path, config_text: str | bytes | None = None, pre: object = None,
              **changes) -> Path:
    """A transformers-layout ViT folder (written without transformers): ``config.json`` with
    ``changes``, or ``config_text`` as it is; ``pre``: ``preprocessor_config.json``."""
    cfg, sd = tiny_sd()
    path.mkdir(parents=True)
    hf = to_hf_state_dict(sd, cfg, "ViTForImageClassification")
    save_file({k: v.contiguous() for k, v in hf.items()}, str(path / "model.safetensors"))
    text = json.dumps({**HF_CONFIG, **changes}) if config_text is None else config_text
    (path / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    if pre is not None:
        (path / "preprocessor_config.json").write_text(pre if isinstance(pre, str)
                                                       else json.dumps(pre))
    return path


def timm_folder(path: Path, model_args: object = None, pretrained_cfg: object = None,
                **changes) -> Path:
    cfg, sd = tiny_sd(mlp=48)
    path.mkdir(parents=True)
    save_file(sd, str(path / "model.safetensors"))
    conf = {"architecture": "vit_tiny_patch8_16", "num_classes": 2,
            "model_args": {"num_heads": 4} if model_args is None else model_args,
            "pretrained_cfg": {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3}
            if pretrained_cfg is None else pretrained_cfg, **changes}
    (path / "config.json").write_text(json.dumps(conf))
    return path


@contextmanager
def counting_work():
    """The expensive steps of a load, counted while the block runs: ``reads`` (a model
    folder's weight file read) and ``builds`` (a VisionTransformer constructed, on the meta
    device or not)."""
    import core.models.hf as hf
    import core.models.timm_format as tf

    work = {"reads": 0, "builds": 0}
    real_read, real_init = hf.read_weights, VisionTransformer.__init__

    def read_weights(folder):
        work["reads"] += 1
        return real_read(folder)

    def init(self, *args, **kwargs):
        work["builds"] += 1
        real_init(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf, "read_weights", read_weights)
        mp.setattr(tf, "read_weights", read_weights)
        mp.setattr(VisionTransformer, "__init__", init)
        yield work


def one_line_error(path: Path, *fields: str, loader=load_model,
                   work: dict | None = None) -> str:
    """The CheckpointError loading ``path`` gives: one line, naming every one of ``fields``
    and the file's name, never the server path around it. ``work``: the counts of
    :func:`counting_work` the refusal may cost at most (``{"reads": 0, "builds": 0}``: found
    from the configuration alone, before any weight is read or any model built)."""
    with counting_work() as done, pytest.raises(CheckpointError) as err:
        loader(path)
    msg = str(err.value)
    assert type(err.value) is CheckpointError, repr(err.value)
    assert "\n" not in msg and len(msg) <= 600, msg
    for field in fields:
        assert field in msg, (field, msg)
    assert path.name in msg, msg
    assert str(path.parent) not in msg, msg  # no server path
    for step, most in (work or {}).items():
        assert done[step] <= most, (step, done, msg)
    return msg


BEFORE_READING = {"reads": 0, "builds": 0}


# ---------------------------------------------------------------------------- HF folders

HOSTILE_HF = {  # name → (hf_folder arguments, what the message must name)
    "heads_zero": (dict(num_attention_heads=0), ["config.json", "num_attention_heads", "0"]),
    "heads_str": (dict(num_attention_heads="4"), ["num_attention_heads", "'4'"]),
    "heads_bool": (dict(num_attention_heads=True), ["num_attention_heads", "True"]),
    "heads_float": (dict(num_attention_heads=4.0), ["num_attention_heads", "4.0"]),
    "heads_indivisible": (dict(num_attention_heads=5), ["num_attention_heads", "divisible"]),
    "hidden_inf": (dict(config_text=json.dumps(HF_CONFIG).replace('"hidden_size": 32',
                                                                   '"hidden_size": Infinity')),
                   ["hidden_size", "inf"]),
    "hidden_nan": (dict(config_text=json.dumps(HF_CONFIG).replace('"hidden_size": 32',
                                                                   '"hidden_size": NaN')),
                   ["hidden_size", "nan"]),
    "hidden_huge_int": (dict(config_text=json.dumps(HF_CONFIG).replace(
        '"hidden_size": 32', '"hidden_size": ' + "9" * 5000)), ["config.json", "hf"]),
    "layers_negative": (dict(num_hidden_layers=-1), ["num_hidden_layers", "-1"]),
    "layers_huge": (dict(num_hidden_layers=10**8), ["num_hidden_layers", "256"]),
    "intermediate_list": (dict(intermediate_size=[37]), ["intermediate_size"]),
    "channels_zero": (dict(num_channels=0), ["num_channels"]),
    "image_size_str": (dict(image_size="16"), ["image_size"]),
    "image_size_huge": (dict(image_size=10**6), ["image_size", "1024"]),
    "patch_zero": (dict(patch_size=0), ["patch_size"]),
    "patch_triple": (dict(patch_size=[8, 8, 8]), ["patch_size"]),
    "eps_str": (dict(layer_norm_eps="1e-6"), ["layer_norm_eps"]),
    "eps_zero": (dict(layer_norm_eps=0), ["layer_norm_eps"]),
    "qkv_bias_str": (dict(qkv_bias="yes"), ["qkv_bias"]),
    "labels_list": (dict(id2label=["a", "b"]), ["id2label"]),
    "num_labels_str": (dict(id2label=None, num_labels="2"), ["num_labels"]),
    "act_list": (dict(hidden_act=["gelu"]), ["hidden_act"]),
    "arch_dict": (dict(architectures={"x": 1}), ["architectures"]),
    "arch_nested_list": (dict(architectures=[["ViTForImageClassification"]]),
                         ["architectures"]),
    "arch_str": (dict(architectures="ViTForImageClassification"), ["architectures"]),
    "model_type_list": (dict(model_type=["vit"]), ["model_type"]),
    "pruned_heads_int": (dict(pruned_heads={"0": 5}), ["pruned_heads"]),
    "pruned_heads_list": (dict(pruned_heads=[0]), ["pruned_heads"]),
    "pruned_heads_layer": (dict(pruned_heads={"x": [0]}), ["pruned_heads", "'x'"]),
    "pruned_heads_all": (dict(pruned_heads={"0": [0, 1, 2, 3]}), ["pruned_heads", "all 4"]),
    "config_nested": (dict(config_text='{"a":' * 100000 + "1" + "}" * 100000),
                      ["config.json", "recursion"]),
    "config_array": (dict(config_text="[1, 2]"), ["config.json", "not a JSON object"]),
    "config_not_utf8": (dict(config_text=b'{"a": "\xff\xfe"}'), ["config.json", "utf-8"]),
    "pre_mean_str": (dict(pre={"image_mean": "abc"}), ["preprocessor_config.json",
                                                        "image_mean", "'abc'"]),
    "pre_mean_short": (dict(pre={"image_mean": [0.5, 0.5]}), ["image_mean", "3 values"]),
    "pre_std_zero": (dict(pre={"image_std": [0.5, 0, 0.5]}), ["image_std"]),
    "pre_rescale_zero": (dict(pre={"rescale_factor": 0}), ["preprocessor_config.json",
                                                           "rescale_factor"]),
    "pre_rescale_tiny": (dict(pre={"rescale_factor": 1e-320}), ["rescale_factor"]),
    "pre_normalize_str": (dict(pre={"do_normalize": "no"}), ["do_normalize"]),
    "pre_not_json": (dict(pre="{nope"), ["preprocessor_config.json"]),
    "pre_array": (dict(pre="[]"), ["preprocessor_config.json", "not a JSON object"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_HF))
def test_hostile_hf_configs_are_one_line_errors_naming_the_field(tmp_path, case):
    kwargs, fields = HOSTILE_HF[case]
    one_line_error(hf_folder(tmp_path / "hf", **kwargs), *fields, work=BEFORE_READING)


def test_a_huge_layer_count_is_refused_before_anything_is_built_or_read(tmp_path,
                                                                         monkeypatch):
    import core.models.hf as hf

    def never(*args, **kwargs):
        raise AssertionError("built or read before the config was checked")

    folder = hf_folder(tmp_path / "hf", num_hidden_layers=10**8)
    monkeypatch.setattr(hf, "BlockConfig", never)
    monkeypatch.setattr(hf, "read_weights", never)
    one_line_error(folder, "config.json in hf", "num_hidden_layers", "100000000",
                   work=BEFORE_READING)


def test_a_good_hf_folder_still_loads_with_its_preprocessing(tmp_path):
    folder = hf_folder(tmp_path / "hf", pre={"image_mean": [0.4, 0.5, 0.6],
                                             "image_std": 0.25, "rescale_factor": 1 / 255})
    model = load_model(folder)
    assert model.config.depth == 2 and model.config.mean == pytest.approx((0.4, 0.5, 0.6))
    assert model.config.std == pytest.approx((0.25,) * 3)


# ---------------------------------------------------------------------------- timm folders

HOSTILE_TIMM = {
    "heads_zero": (dict(model_args={"num_heads": 0}), ["model_args.num_heads", "0"]),
    "heads_str": (dict(model_args={"num_heads": "4"}), ["model_args.num_heads", "'4'"]),
    "heads_inf": (dict(model_args={"num_heads": 1e308 * 10}), ["model_args.num_heads"]),
    "args_str": (dict(model_args="num_heads=4"), ["model_args", "JSON object"]),
    "pretrained_list": (dict(pretrained_cfg=[1, 2]), ["pretrained_cfg", "JSON object"]),
    "mean_int": (dict(pretrained_cfg={"input_size": [3, 16, 16], "mean": 5}),
                 ["pretrained_cfg.mean"]),
    "mean_str": (dict(pretrained_cfg={"input_size": [3, 16, 16], "mean": ["a", 0, 0]}),
                 ["pretrained_cfg.mean", "'a'"]),
    "std_negative": (dict(pretrained_cfg={"input_size": [3, 16, 16], "std": [-1, 1, 1]}),
                     ["pretrained_cfg.std"]),
    "input_size_int": (dict(pretrained_cfg={"input_size": 16}), ["pretrained_cfg.input_size"]),
    "input_size_huge": (dict(pretrained_cfg={"input_size": [3, 10**6, 10**6]}),
                        ["pretrained_cfg.input_size", "1024"]),
    "img_size_str": (dict(model_args={"num_heads": 4, "img_size": "16"}),
                     ["model_args.img_size"]),
    "num_classes_str": (dict(num_classes="2"), ["num_classes"]),
    "architecture_list": (dict(architecture=["vit_tiny"]), ["architecture"]),
    "pool_list": (dict(model_args={"num_heads": 4, "global_pool": ["avg"]}), ["global_pool"]),
    "no_embed_class_str": (dict(model_args={"num_heads": 4, "no_embed_class": "no"}),
                           ["no_embed_class"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_TIMM))
def test_hostile_timm_configs_are_one_line_errors_naming_the_field(tmp_path, case):
    kwargs, fields = HOSTILE_TIMM[case]
    one_line_error(timm_folder(tmp_path / "timm", **kwargs), "config.json in timm", *fields,
                   work=BEFORE_READING)


# ---------------------------------------------------------------------------- bare timm files

HOSTILE_TENSORS = {  # key → replacement tensor; the message names the key
    "pos_embed": torch.zeros(5),
    "reg_token": torch.zeros(5),
    "cls_token": torch.zeros(5),
    "blocks.0.ls1.gamma": torch.zeros(0),
    "patch_embed.proj.weight": torch.zeros(5),
    "blocks.0.attn.qkv.weight": torch.zeros(0),
    "blocks.1.mlp.fc1.weight": torch.zeros(3),
    "head.weight": torch.zeros(2),
}


@pytest.mark.parametrize("key", list(HOSTILE_TENSORS))
def test_hostile_timm_state_dicts_are_one_line_errors_naming_the_tensor(tmp_path, key):
    _, sd = tiny_sd(embed_dim=192, mlp=64)  # 192: a timm width, heads from timm's table
    sd[key] = HOSTILE_TENSORS[key]
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no preprocessing: ImageNet's mean/std"
        # at most the (meta-device) skeleton the tensors are checked against
        one_line_error(path, key, work={"builds": 1})
        one_line_error(path, key, loader=load_timm_state_dict, work={"builds": 1})


@pytest.mark.parametrize("bad", [{"num_heads": 0}, {"num_heads": "3"},
                                 {"img_size": (0, 16)}, {"img_size": "16"}])
def test_bad_options_of_the_bare_reader_name_the_option(tmp_path, bad):
    _, sd = tiny_sd(embed_dim=192, mlp=64)
    with pytest.raises(CheckpointError, match=next(iter(bad))) as err:
        load_timm_state_dict(sd, source="w.safetensors", **bad)
    assert "\n" not in str(err.value)


def test_too_many_blocks_are_refused_by_their_index(tmp_path):
    _, sd = tiny_sd(embed_dim=192, mlp=64)
    sd["blocks.99999999999.norm1.weight"] = torch.ones(192)
    with pytest.raises(CheckpointError, match="at most 256 blocks"):
        load_timm_state_dict(sd, source="w")


# ---------------------------------------------------------------------------- the safety net

@pytest.mark.parametrize("error", [ZeroDivisionError("division by zero"), KeyError("k"),
                                   IndexError("tuple index out of range"),
                                   AttributeError("'str' object has no attribute 'get'"),
                                   TypeError("unhashable"), OverflowError("inf"),
                                   RecursionError("deep"), ValueError("bad")])
def test_a_missed_check_still_gives_a_checkpoint_error_naming_the_type(tmp_path, monkeypatch,
                                                                         error):
    import core.models.hf as hf
    import core.models.timm_format as tf

    def boom(*args, **kwargs):
        raise error

    name = type(error).__name__
    monkeypatch.setattr(hf, "state_dict_mismatch", boom)
    msg = one_line_error(hf_folder(tmp_path / "hf"), name)
    assert msg.startswith("hf: ") and "cannot be read as a model" in msg
    monkeypatch.setattr(tf, "_build", boom)
    one_line_error(timm_folder(tmp_path / "timm"), name)
    _, sd = tiny_sd(embed_dim=192, mlp=64)
    with pytest.raises(CheckpointError, match=f"w.safetensors: .*{name}") as err:
        load_timm_state_dict(sd, source="w.safetensors", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert err.value.__cause__ is error  # kept for the log / debugger


def test_messages_name_the_folder_not_its_server_path(tmp_path):
    folder = hf_folder(tmp_path / "deep" / "inside" / "hf")
    (folder / "model.safetensors").unlink()
    msg = one_line_error(folder, "no model.safetensors")
    assert str(tmp_path) not in msg
    (folder / "model.safetensors").write_bytes(b"not safetensors at all")
    assert str(tmp_path) not in one_line_error(folder, "model.safetensors")


# ---------------------------------------------------------------------------- read_json

def test_read_json_is_bounded_and_never_blocks(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"a": "' + "x" * (5 * 2**20) + '"}')
    with pytest.raises(CheckpointError, match="big.json in .*larger than 4 MB"):
        read_json(big)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"), \
            no_blocking_special_opens():  # a blocking open would wait for a writer for good
        read_json(fifo)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match="deep.json"):
        read_json(deep)
    huge_int = tmp_path / "int.json"
    huge_int.write_text('{"a": ' + "7" * 10000 + "}")
    with pytest.raises(CheckpointError, match="int.json"):
        read_json(huge_int)
    with pytest.raises(CheckpointError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    bom = tmp_path / "bom.json"
    bom.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert read_json(bom) == {"a": 1}


# ---------------------------------------------------------------------------- data roots

@pytest.fixture
def roots(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("PRUNELENS_DATA_ROOTS", str(data))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return data


def test_model_folder_files_leading_out_of_the_roots_are_refused(tmp_path, roots):
    from dashboard.state import folders

    good = hf_folder(roots / "good")
    assert folders.resolve_model("good") == good.resolve()
    # config.json and the weights are links to files outside the roots
    leak = hf_folder(roots / "leak")
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("config.json", "model.safetensors"):
        (leak / name).rename(outside / name)
        (leak / name).symlink_to(outside / name)
    assert load_model(leak) is not None  # the Python API reads what it is given
    for text in ("leak", str(leak)):
        with pytest.raises(DataPathError) as err:
            folders.resolve_model(text)
        assert str(err.value) == REFUSAL
    # a link that stays inside the roots is fine; any other link out is refused as well
    inner = hf_folder(roots / "inner")
    (inner / "model.safetensors").rename(roots / "weights.safetensors")
    (inner / "model.safetensors").symlink_to(roots / "weights.safetensors")
    assert folders.resolve_model("inner") == inner.resolve()
    (inner / "notes.txt").symlink_to("/etc/passwd")
    with pytest.raises(DataPathError):
        folders.resolve_model("inner")
    with pytest.raises(DataPathError):
        check_files_under_roots(inner, [roots])
    (inner / "notes.txt").unlink()
    check_files_under_roots(inner, [roots])
    # a dangling link pointing out is refused too (it could be made to point anywhere)
    (good / "preprocessor_config.json").symlink_to(outside / "nothing.json")
    with pytest.raises(DataPathError):
        folders.resolve_model("good")


def test_the_dashboard_shows_the_refusal_for_a_leaking_model_folder(runs_dir, roots, tmp_path):
    from test_dashboard import errors, make_app, ok

    leak = hf_folder(roots / "leak")
    outside = tmp_path / "outside"
    outside.mkdir()
    (leak / "config.json").rename(outside / "secret.json")
    (leak / "config.json").symlink_to(outside / "secret.json")
    at = make_app(prune_source="folder", prune_pruners=["magnitude"], prune_val=16,
                  prune_calib=8)
    at.session_state["prune_model_folder"] = str(leak)
    at = ok(at.run())
    assert errors(at) == [REFUSAL]


def test_a_pruned_model_without_its_metadata_is_not_guessed_as_timm(tmp_path):
    """Bare tensors of a model whose heads were pruned (2 heads × 48 where deit-tiny has 3 × 64)
    would fit timm's width → heads table as 3 heads of 32, silently wrong: refused, while the
    same tensors load with num_heads given and a dense timm state dict loads as before."""
    from dataclasses import replace

    import torch
    from safetensors.torch import save_file

    from core.models import CheckpointError, build_model, load_model
    from core.models.checkpoint import _plain_state_dict
    from core.models.timm_format import load_timm_state_dict
    from core.models.vit import BlockConfig, VisionTransformer

    dense = build_model("deit-tiny", 10)
    blocks = tuple(BlockConfig(2, 48, 48, 768) for _ in dense.config.blocks)
    pruned = VisionTransformer(replace(dense.config, blocks=blocks)).eval()
    sd = _plain_state_dict(pruned)
    save_file(sd, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match=r"qkv has 288 rows where a timm ViT of width 192"):
        load_model(tmp_path / "bare.safetensors")
    x = torch.rand(1, 3, 224, 224)
    with pytest.warns(UserWarning, match="no preprocessing"):
        back = load_timm_state_dict(tmp_path / "bare.safetensors", num_heads=2)
    with torch.no_grad():
        assert (back.eval()(x) - pruned(x)).abs().max() < 1e-5
    save_file(_plain_state_dict(dense), str(tmp_path / "dense.safetensors"))
    with pytest.warns(UserWarning, match="no preprocessing"):
        assert load_model(tmp_path / "dense.safetensors").config.blocks[0].num_heads == 3
