"""Hugging Face transformers ViTMAE and ViT directories load through the one loading path into an encoder that
computes what transformers computes (LayerNorm epsilon carried from config.json); semmae -> format=hf -> semmae is
bit-identical and transformers' from_pretrained loads the export; bad directories are refused in one line. The
fixtures are written by transformers itself (save_pretrained) or in its on-disk layouts; nothing is downloaded."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from semmae.errors import CheckpointError, ConfigError
from semmae.models.export import export_hf
from semmae.models.hf_format import from_timm, to_timm
from semmae.models.loading import load_encoder
from semmae.models.mae import MaskedAutoencoder
from tests.conftest import REPO

transformers = pytest.importorskip("transformers")

GEOMETRY = dict(
    image_size=32,
    patch_size=4,
    num_channels=1,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
)
MAE = dict(GEOMETRY, decoder_hidden_size=32, decoder_num_hidden_layers=1)
N = 64  # patches of a 32 px image in 4 px patches


def quiet_transformers():
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random LayerNorm affines and biases on top of transformers' initialisation (which sets them to 1 and 0), so
    that a mix-up of any of them shows; the ViTMAE position embedding stays its fixed sin-cos."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ("layernorm" in name and name.endswith(".weight")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_features(model, x: torch.Tensor) -> torch.Tensor:
    """ViTMAEModel with mask_ratio 0 and noise 0..N-1 keeps every patch in its order; ViTModel keeps them anyway."""
    with torch.no_grad():
        if isinstance(model, transformers.ViTMAEModel):
            return model(x, noise=torch.arange(N, dtype=torch.float32).expand(x.shape[0], N)).last_hidden_state
        return model(x).last_hidden_state


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def to_4x(name: str) -> str:
    """A transformers 5.x module name -> the name transformers 4.x files use (the layout of most Hub files)."""
    name = name.replace("layers.", "encoder.layer.")
    for new, old in (
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ):
        name = name.replace(new, old)
    return name


def write_dir(directory: Path, config, state: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config.to_json_file(str(directory / "config.json"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="module")
def vitmae(tmp_path_factory):
    """A random tiny ViTMAEModel and the same weights in every on-disk layout semmae reads."""
    quiet_transformers()
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(**MAE, mask_ratio=0.0)
    model = perturbed(transformers.ViTMAEModel(config), seed=1)
    root = tmp_path_factory.mktemp("vitmae")
    model.save_pretrained(str(root / "save_pretrained"))
    state = model.state_dict()  # 5.x module names
    assert any(".q_proj." in k for k in state) or any(".query." in k for k in state)
    write_dir(root / "layout_5x", config, state)
    write_dir(root / "layout_4x", config, {to_4x(k): v for k, v in state.items()})
    pretraining = transformers.ViTMAEForPreTraining(config)  # vit.* beside decoder.*
    pretraining.vit.load_state_dict(state)
    pretraining.save_pretrained(str(root / "for_pretraining"))
    (root / "pytorch_bin").mkdir()
    config.to_json_file(str(root / "pytorch_bin" / "config.json"))
    torch.save({to_4x(k): v for k, v in state.items()}, root / "pytorch_bin" / "pytorch_model.bin")
    return model, root


LAYOUTS = ["save_pretrained", "layout_5x", "layout_4x", "for_pretraining", "pytorch_bin"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_vitmae_directory_gives_the_features_transformers_gives(vitmae, layout):
    model, root = vitmae
    enc = load_encoder(f"hf:{root / layout}").eval()
    assert enc.config["norm_eps"] == 1e-12 and all(
        m.eps == 1e-12 for m in enc.modules() if isinstance(m, torch.nn.LayerNorm)
    )
    assert (enc.embed_dim, len(enc.blocks), enc.blocks[0].attn.num_heads, enc.grid_size) == (64, 4, 4, (8, 8))
    assert torch.equal(enc.pos_embed, model.embeddings.position_embeddings)  # kept as stored
    x = images()
    diff = (enc.forward_features(x) - hf_features(model, x)).abs().max().item()
    print(f"\n{layout}: max |semmae - transformers ViTMAEModel| = {diff:.3g}")
    assert diff <= 1e-5


def test_a_plain_directory_is_read_as_hugging_face(vitmae):
    from semmae.models.loading import build_encoder

    model, root = vitmae
    enc = build_encoder(str(root / "layout_4x")).eval()
    assert enc.source == f"hf:{root / 'layout_4x'}"
    x = images()
    assert (enc.forward_features(x) - hf_features(model, x)).abs().max() <= 1e-5


def test_the_layer_norm_epsilon_of_the_config_matters_and_is_carried(tmp_path):
    """Hugging Face configs say 1e-12 where MAE says 1e-6. A ViTMAEModel as transformers initialises it (small
    activations: its linears are N(0, 0.02)) shows the difference: assuming 1e-6 changes the features far beyond
    the 1e-5 the loader is held to."""
    from semmae.models.encoder import ViTEncoder
    from semmae.models.hf_format import read_hf
    from semmae.models.loading import load_state

    quiet_transformers()
    torch.manual_seed(0)
    model = transformers.ViTMAEModel(transformers.ViTMAEConfig(**MAE, mask_ratio=0.0)).eval()
    model.save_pretrained(str(tmp_path / "hf"))
    x = images()
    carried = load_encoder(f"hf:{tmp_path / 'hf'}").eval()
    assert (carried.forward_features(x) - hf_features(model, x)).abs().max() <= 1e-5
    with pytest.raises(CheckpointError, match="norm_eps=1e-12, not 1e-06"):
        load_encoder(f"hf:{tmp_path / 'hf'}", norm_eps=1e-6)
    config, state, origin = read_hf(tmp_path / "hf")
    assumed = load_state(ViTEncoder(**{**config, "norm_eps": 1e-6}), state, origin).eval()
    gap = (assumed.forward_features(x) - hf_features(model, x)).abs().max().item()
    print(f"\nwith MAE's 1e-6 instead of the config's 1e-12: max difference {gap:.3g}")
    assert gap > 1e-3


@pytest.mark.parametrize("with_head", [False, True])
def test_a_vit_directory_gives_the_features_and_logits_transformers_gives(tmp_path, with_head):
    quiet_transformers()
    torch.manual_seed(2)
    config = transformers.ViTConfig(**GEOMETRY, num_labels=5, layer_norm_eps=1e-12)
    cls = transformers.ViTForImageClassification if with_head else transformers.ViTModel
    model = perturbed(cls(config), seed=3)
    with torch.no_grad():  # a learned-looking position embedding
        vit = model.vit if with_head else model
        vit.embeddings.position_embeddings.normal_(0, 0.1)
        vit.embeddings.cls_token.normal_(0, 0.1)
    model.save_pretrained(str(tmp_path / "vit"))
    enc = load_encoder(f"hf:{tmp_path / 'vit'}").eval()
    x = images()
    with torch.no_grad():
        if with_head:
            assert enc.num_classes == 5
            logits = model(x).logits
            assert (enc(x) - logits).abs().max() <= 1e-5
        assert (enc.forward_features(x) - hf_features(vit, x)).abs().max() <= 1e-5


def semmae_encoder(seed: int = 4):
    torch.manual_seed(seed)
    mae = MaskedAutoencoder(
        embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
    )
    return perturbed(mae.encoder, seed).eval()


def test_semmae_to_hf_to_semmae_is_bit_identical_and_transformers_loads_it(tmp_path):
    quiet_transformers()
    enc = semmae_encoder()
    out = export_hf(enc, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "vit_mae" and config["layer_norm_eps"] == 1e-6 and config["num_attention_heads"] == 4
    back = load_encoder(f"hf:{out}").eval()
    assert back.state_dict().keys() == enc.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in enc.state_dict().items())
    x = images()
    assert torch.equal(back.forward_features(x), enc.forward_features(x))
    model, info = transformers.ViTMAEModel.from_pretrained(str(out), mask_ratio=0.0, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    diff = (hf_features(model.eval(), x) - enc.forward_features(x)).abs().max().item()
    print(f"\nsemmae export in transformers: max difference {diff:.3g}")
    assert diff <= 1e-5
    again = export_hf(back, out)  # replacing an earlier export of the same directory
    assert load_file(str(again / "model.safetensors")).keys() == load_file(str(out / "model.safetensors")).keys()


def test_a_hugging_face_encoder_exported_for_timm_keeps_its_epsilon(vitmae, tmp_path):
    """The printed timm line carries the config's 1e-12 (timm's default is 1e-6) and rebuilds the same features."""
    from semmae.models.export import export_encoder, timm_load_line

    model, root = vitmae
    enc = load_encoder(f"hf:{root / 'layout_4x'}").eval()
    out = export_encoder(enc, tmp_path / "encoder.pth")
    line = timm_load_line(enc, out)
    assert "eps=1e-12" in line
    import timm

    scope = {"timm": timm, "torch": torch}
    exec(line, scope)  # as a user would paste it
    x = images()
    with torch.no_grad():
        assert (scope["model"].eval().forward_features(x) - hf_features(model, x)).abs().max() <= 1e-5
    assert load_encoder(out).config["norm_eps"] == 1e-12  # and back in semmae, from the record


def test_the_name_maps_are_inverse_and_join_qkv_in_order():
    enc = semmae_encoder()
    state = enc.state_dict()
    hf = from_timm(state)
    w = state["blocks.1.attn.qkv.weight"]
    assert torch.equal(hf["encoder.layer.1.attention.attention.query.weight"], w[:64])
    assert torch.equal(hf["encoder.layer.1.attention.attention.key.weight"], w[64:128])
    assert torch.equal(hf["encoder.layer.1.attention.attention.value.weight"], w[128:])
    back = to_timm({f"vit.{k}": v for k, v in hf.items()}, "test")
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())


@settings(max_examples=25, deadline=None)
@given(
    depth=st.integers(1, 3),
    heads=st.sampled_from([1, 2, 4]),
    qkv_bias=st.booleans(),
    prefix=st.booleans(),
    modules_5x=st.booleans(),
)
def test_any_vit_geometry_maps_to_timm_names_and_back(depth, heads, qkv_bias, prefix, modules_5x):
    """from_timm then to_timm is the identity on a ViTEncoder's state dict, whatever the depth, heads or qkv bias, with
    or without the vit. prefix, from 4.x names or from 5.x module names."""
    from semmae.models.encoder import ViTEncoder

    enc = ViTEncoder(
        img_size=16,
        patch_size=4,
        in_chans=1,
        embed_dim=8,
        depth=depth,
        num_heads=heads,
        qkv_bias=qkv_bias,
        mlp_ratio=2.0,
    )
    state = enc.state_dict()
    hf = from_timm(state)
    if modules_5x:
        hf = {to_5x(k): v for k, v in hf.items()}
    back = to_timm({("vit." if prefix else "") + k: v for k, v in hf.items()}, "property")
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())


def to_5x(name: str) -> str:
    name = name.replace("encoder.layer.", "layers.")
    for old, new in (
        ("attention.attention.query", "attention.q_proj"),
        ("attention.attention.key", "attention.k_proj"),
        ("attention.attention.value", "attention.v_proj"),
        ("attention.output.dense", "attention.o_proj"),
        ("intermediate.dense", "mlp.fc1"),
        ("output.dense", "mlp.fc2"),
    ):
        name = name.replace(old, new)
    return name


def test_export_refuses_what_vitmae_cannot_hold(tmp_path):
    torch.manual_seed(0)
    gated = MaskedAutoencoder(
        embed_dim=64,
        depth=1,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        attn_gate=True,
        reg_tokens=2,
    ).encoder
    with pytest.raises(CheckpointError) as err:
        export_hf(gated, tmp_path / "hf")
    assert "gated attention" in str(err.value) and "2 register tokens" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "hf").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds other things"):
        export_hf(semmae_encoder(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --- bad input, one line each ---------------------------------------------------------------------------------------
def bad_dirs(root: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """{case: (directory, text the one-line error must contain)}."""
    cases = {}
    no_config = root / "no_config"
    no_config.mkdir()
    shutil.copy(good / "model.safetensors", no_config / "model.safetensors")
    cases["no config.json"] = (no_config, "config.json")
    swin = root / "swin"
    shutil.copytree(good, swin)
    (swin / "config.json").write_text(json.dumps({"model_type": "swin", "embed_dim": 96}))
    cases["swin"] = (swin, "'swin'")
    shapes = root / "shapes"
    shutil.copytree(good, shapes)
    config = json.loads((good / "config.json").read_text())
    (shapes / "config.json").write_text(json.dumps({**config, "hidden_size": 128, "intermediate_size": 512}))
    cases["shapes"] = (shapes, "does not fit")
    grid = root / "grid"
    shutil.copytree(good, grid)
    (grid / "config.json").write_text(json.dumps({**config, "image_size": 64}))
    cases["grid"] = (grid, "position_embeddings holds 8x8 + 1")
    depth = root / "depth"
    shutil.copytree(good, depth)
    (depth / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 5}))
    cases["depth"] = (depth, "missing: blocks.4")
    act = root / "act"
    shutil.copytree(good, act)
    (act / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    cases["activation"] = (act, "hidden_act='gelu_new'")
    half = root / "half"
    shutil.copytree(good, half)
    state = load_file(str(good / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".key." not in k}, str(half / "model.safetensors"))
    cases["qkv"] = (half, "query, key and value")
    return cases


def test_bad_directories_are_refused_in_one_line(vitmae, tmp_path):
    _, root = vitmae
    for case, (directory, expected) in bad_dirs(tmp_path, root / "layout_4x").items():
        with pytest.raises(CheckpointError) as err:
            load_encoder(f"hf:{directory}")
        msg = str(err.value)
        assert expected in msg and "\n" not in msg, (case, msg)
    with pytest.raises(CheckpointError, match="without config.json"):
        load_encoder(str(tmp_path / "no_config"))  # a plain directory
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(f"hf:{tmp_path / 'nowhere'}")


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pytorch_model_bin_is_read_weights_only(vitmae, tmp_path):
    _, root = vitmae
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(root / "pytorch_bin" / "config.json", evil / "config.json")
    marker = tmp_path / "PWNED"
    state = torch.load(root / "pytorch_bin" / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "extra": Payload(marker)}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="trust_checkpoint=true"):
        load_encoder(f"hf:{evil}")
    assert not marker.exists()


def test_sharded_safetensors_are_read_through_their_index(vitmae, tmp_path):
    model, root = vitmae
    state = load_file(str(root / "layout_4x" / "model.safetensors"))
    names = sorted(state)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(root / "layout_4x" / "config.json", sharded / "config.json")
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(sharded / shard))
        weight_map.update({k: shard for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    enc = load_encoder(f"hf:{sharded}").eval()
    x = images()
    assert (enc.forward_features(x) - hf_features(model, x)).abs().max() <= 1e-5


# --- the entry points -------------------------------------------------------------------------------------------------
def test_semmae_export_format_hf_and_analyze_hf_dir(compose_cfg, fmnist_root, tmp_path):
    from semmae.cli.analyze import run as analyze
    from semmae.cli.export import run as export

    torch.manual_seed(5)
    mae = MaskedAutoencoder(
        embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
    )
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "semmae": {"kind": "pretrain", "model": dict(mae.config), "encoder_prefix": "mae.encoder."},
            "state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()},
        },
        ckpt,
    )
    out = tmp_path / "vit_mae_hf"
    export(compose_cfg("export", [f"ckpt={ckpt}", "format=hf", f"out={out}"], tmp_path / "export"))
    results = json.loads((tmp_path / "export" / "results.json").read_text())
    assert results["format"] == "hf" and "ViTMAEModel.from_pretrained" in results["load"]
    assert transformers.ViTMAEModel.from_pretrained(str(out)).config.num_hidden_layers == 2
    with pytest.raises(ConfigError, match="names a file"):
        export(compose_cfg("export", [f"ckpt={ckpt}", "format=hf", f"out={tmp_path / 'x.pth'}"], tmp_path / "e2"))
    with pytest.raises(ConfigError, match="exists: choose another directory"):
        export(compose_cfg("export", [f"ckpt={ckpt}", "format=hf", f"out={out}"], tmp_path / "e3"))
    export(compose_cfg("export", [f"ckpt={ckpt}", "format=hf", f"out={out}", "overwrite=true"], tmp_path / "e4"))
    cfg = compose_cfg(
        "analyze",
        [f"ckpt=hf:{out}", f"dataset.root={fmnist_root}", "num_images=8", "batch_size=8", "figure_images=2"],
        tmp_path / "analyze",
    )
    metrics = analyze(cfg)
    report = json.loads((tmp_path / "analyze" / "artifacts.json").read_text())
    assert report["num_images"] == 8 and len(report["blocks"]) == 2 and "attn/block_02/sink_ratio" in metrics


@pytest.mark.parametrize(
    "case",
    ["swin", pytest.param("no config.json", marks=pytest.mark.slow), pytest.param("shapes", marks=pytest.mark.slow)],
)
def test_the_cli_says_one_line_and_exits_2(vitmae, tmp_path, case):
    _, root = vitmae
    directory, expected = bad_dirs(tmp_path, root / "layout_4x")[case]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semmae.export",
            f"ckpt=hf:{directory}",
            "format=hf",
            f"out={tmp_path / 'out'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
