"""`xmodal convert`: the converter registry and the two CAV-MAE converters, through the CLI."""

from __future__ import annotations

import re

import torch

from xmodal.cli import main
from xmodal.commands import convert as convert_cmd
from xmodal.engine.checkpoint import load_state_file, save_atomic
from xmodal.models.cavmae import CAVMAE, CAVMAEFT, cavmae_config, load_cavmae_checkpoint

TINY = cavmae_config("tiny")


def test_official_checkpoint_converts_to_safetensors_that_load_strictly(tmp_path, capsys):
    torch.manual_seed(0)
    for model, name in ((CAVMAE(TINY), "pre"), (CAVMAEFT(TINY, label_dim=7), "ft")):
        save_atomic({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / f"{name}.pth")
        out = tmp_path / f"{name}.safetensors"
        assert main(["convert", "cavmae", str(tmp_path / f"{name}.pth"), str(out), "--opt", "size=tiny"]) == 0
        state = load_state_file(out)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        fresh = type(model)(TINY) if name == "pre" else CAVMAEFT(TINY, label_dim=7)
        assert load_cavmae_checkpoint(fresh, out, strict=True).missing == []
    assert "CAV-MAE finetune" in capsys.readouterr().out
    # a file of another layout is refused with one line
    save_atomic({"module.x": torch.zeros(1)}, tmp_path / "bad.pth")
    assert main(["convert", "cavmae", str(tmp_path / "bad.pth"), str(tmp_path / "bad.safetensors")]) == 2
    assert "not a CAV-MAE checkpoint" in capsys.readouterr().err


def test_imagenet_mae_converts_to_a_pretraining_init(tmp_path):
    torch.manual_seed(0)
    src = CAVMAE(TINY).state_dict()  # borrow tiny-sized tensors for an MAE-layout file
    mae = {"patch_embed.proj.weight": src["patch_embed_v.proj.weight"], "patch_embed.proj.bias": src["patch_embed_v.proj.bias"],
           "norm.weight": src["norm.weight"] + 1, "norm.bias": src["norm.bias"], "mask_token": src["mask_token"],
           "decoder_pred.weight": src["decoder_pred_v.weight"], "decoder_pred.bias": src["decoder_pred_v.bias"]}
    mae.update({k: v for k, v in src.items() if k.startswith(("decoder_embed", "decoder_norm"))})
    block_keys = [k[len("blocks_a.0."):] for k in src if k.startswith("blocks_a.0.") and not re.search(r"norm\d_[av]\.", k)]
    for i in range(3):
        for k in block_keys:
            mae[f"blocks.{i}.{k}"] = torch.randn_like(src[f"blocks_a.0.{k}"])
    for k in block_keys:
        mae[f"decoder_blocks.0.{k}"] = src[f"decoder_blocks.0.{k}"]
    save_atomic({"model": mae}, tmp_path / "mae.pth")
    out = tmp_path / "init.safetensors"
    assert main(["convert", "cavmae-imagenet", str(tmp_path / "mae.pth"), str(out), "--opt", "size=tiny"]) == 0
    model = CAVMAE(TINY)
    load_cavmae_checkpoint(model, out, strict=True)
    assert torch.equal(model.blocks_v[1].attn.qkv.weight, mae["blocks.1.attn.qkv.weight"])
    assert torch.equal(model.blocks_u[0].mlp.fc1.weight, mae["blocks.2.mlp.fc1.weight"])
    assert torch.equal(model.norm_v.weight, mae["norm.weight"])
    assert torch.allclose(model.patch_embed_a.proj.weight, mae["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert main(["convert", "cavmae-imagenet", str(tmp_path / "mae.pth"), str(out), "--opt", "colour=1"]) == 2


def test_registry_takes_a_new_converter_in_one_line(tmp_path, monkeypatch, capsys):
    def copy(in_path, out_path, args):
        from pathlib import Path

        Path(out_path).write_bytes(Path(in_path).read_bytes() * args.options["times"])
        return "copied"

    monkeypatch.setitem(convert_cmd.CONVERTERS, "copy", convert_cmd.Converter("test", copy))
    (tmp_path / "a").write_bytes(b"xy")
    assert main(["convert", "copy", str(tmp_path / "a"), str(tmp_path / "b"), "--opt", "times=2"]) == 0
    assert (tmp_path / "b").read_bytes() == b"xyxy" and "copied" in capsys.readouterr().out
    assert main(["convert", "cavmea", "x", "y"]) == 2
    assert "did you mean 'cavmae'" in capsys.readouterr().err
    assert main(["convert", "copy", "x", "y", "--opt", "novalue"]) == 2
