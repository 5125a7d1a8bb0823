"""CAV-MAE learns on avdigits: the shipped embedded recipes chained by `run_avdigits_chain`
(pretrain -> retrieval -> finetune from it and from scratch -> inpainting), then missing-modality
inference of the finetuned run. One module-scoped run of the whole chain: 70 s of CPU on one thread
(3-5 min wall on a loaded, shared 2-core machine)."""

from __future__ import annotations

import json

import pytest
import torch

from xmodal.eval.cavmae_demo import run_avdigits_chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    torch.manual_seed(0)
    return run_avdigits_chain(tmp_path_factory.mktemp("cavmae-chain"))


@pytest.mark.slow
def test_pretraining_lowers_both_reconstruction_losses(chain):
    before, after = chain.before, chain.pretrain
    # normalised-pixel targets: 1.0 is "predict the patch mean"; audio falls far below it, frames
    # (per-pixel noise on a grey texture around the digit) less so
    assert after["loss_mae_a"] < 0.5 * before["loss_mae_a"], (before, after)
    assert after["loss_mae_v"] < 0.85 * before["loss_mae_v"], (before, after)


@pytest.mark.slow
def test_pretraining_aligns_audio_and_frames(chain):
    before, after = chain.before, chain.pretrain
    # eval batches of 128 and 72 clips: chance c_acc ~1/100; untrained ~chance, nce ~ln(batch)
    assert before["c_acc"] < 0.03 and after["c_acc"] > 0.05, (before["c_acc"], after["c_acc"])
    assert after["nce"] < before["nce"] - 0.5, (before["nce"], after["nce"])
    # class-level R@1 (a hit = same digit; chance 10 %): the training metric and the retrieval command
    for m in (after, chain.retrieval):
        assert m["class_a2v_R@1"] > 40.0 and m["class_v2a_R@1"] > 40.0, m
    assert before["class_a2v_R@1"] < 25.0 and before["class_v2a_R@1"] < 25.0, before
    assert chain.retrieval["class_a2v_R@1"] == pytest.approx(after["class_a2v_R@1"])


@pytest.mark.slow
def test_finetuning_from_pretrained_beats_scratch_at_equal_steps(chain):
    pre, scratch = chain.finetune["top1"], chain.scratch["top1"]
    assert pre > scratch + 20.0 and pre > 55.0, (pre, scratch)


@pytest.mark.slow
def test_inpainting_writes_pngs(chain):
    out = chain.runs["pretrain"].parent / "inpaint"
    summary = json.loads((out / "inpaint.json").read_text())
    assert summary == chain.inpaint and len(summary["pngs"]) == 8  # 4 clips x (audio, frame)
    for name in summary["pngs"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["mse_audio"] > 0 and summary["mse_image"] > 0


@pytest.mark.slow
def test_missing_modality_inference_of_the_finetuned_run(chain):
    """A multimodally finetuned run tested with one modality: the other batch key is absent
    (docs/cavmae.md, "Missing modality")."""
    from xmodal.engine.runs import load_run

    loaded = load_run(chain.runs["finetune"])
    test = loaded.data.test
    batch = test.__getitems__(list(range(len(test))))
    method = loaded.method.eval()
    probs = {"multimodal": method.predict_probs(batch)}
    for mode, drop in (("missingaudioonly", "video"), ("missingvideoonly", "fbank")):
        probs[mode] = method.predict_probs({k: v for k, v in batch.items() if k != drop}, mode=mode)
        assert torch.allclose(probs[mode].sum(1), torch.ones(len(test)), atol=1e-5)
        assert not torch.allclose(probs[mode], probs["multimodal"], atol=1e-3)
    top1 = {k: float((p.argmax(1) == batch["label"]).float().mean()) * 100 for k, p in probs.items()}
    assert top1["multimodal"] == pytest.approx(chain.finetune["top1"], abs=0.01)
    assert min(top1.values()) > 20.0, top1  # one modality alone still classifies (chance 10 %)
    # the recipe route: eval_mode makes the method's own eval use one modality
    one = load_run(chain.runs["finetune"], overrides=["method.eval_mode=missingaudioonly"], data=loaded.data).method.eval()
    assert torch.allclose(one.eval_step({k: v for k, v in batch.items() if k != "video"})["probs"], probs["missingaudioonly"])
