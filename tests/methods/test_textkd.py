"""Text-KD student method: KD term variants against hand formulas, missing teachers, the baseline,
feature alignment, and that the student only reads stored predictions."""

import pytest
import torch
import torch.nn.functional as F

from xmodal.config import config_from_data, from_dict
from xmodal.data.bundle import DataInfo
from xmodal.errors import ConfigError
from xmodal.methods.textkd import KDConfig, TextKD, TextKDConfig, kd_term

C, T_FRAMES, D = 24, 6, 8


def hand_kl(s, t, temp):
    """Per-sample T² Σ p_t (log p_t − log p_s) written out."""
    pt, ps = (t / temp).softmax(-1), (s / temp).softmax(-1)
    return temp**2 * (pt * (pt.log() - ps.log())).sum(-1)


def make(kd: dict | None = None, **kw) -> TextKD:
    cfg = from_dict(TextKDConfig, {
        "model": {"name": "avt", "num_classes": 0, "backbone": "none", "feat_dim": D, "width": 16, "layers": 1,
                  "heads": 2, "max_positions": 8, "dropout": 0.0, "gpt_dropout": 0.0},
        "input_key": "frame_features", "kd": kd or {}, **kw})  # fmt: skip
    info = DataInfo(num_classes=C, extra={"action_verb": [a % 4 for a in range(C)], "action_noun": [a % 10 for a in range(C)]})
    torch.manual_seed(0)
    return TextKD(cfg, info)


def batch(b=4, with_teacher=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"frame_features": torch.randn(b, T_FRAMES, D, generator=g), "label": torch.randint(C, (b,), generator=g),
           "past_labels": torch.randint(-1, C, (b, T_FRAMES), generator=g), "uid": [f"u{i}" for i in range(b)]}
    if with_teacher:
        out["teacher.logits"] = 3 * torch.randn(b, C, generator=g)
        out["teacher.feature"] = torch.randn(b, D, generator=g)
    return out


def test_defaults_are_the_egtea_published_settings():
    kd = KDConfig()
    assert (kd.weight, kd.temperature, kd.variant, kd.reduction, kd.missing_teacher) == (150.0, 10.0, "full", "elements_mean", "skip")
    tc = TextKDConfig()
    assert (tc.loss.cls, tc.loss.feat, tc.loss.past_cls) == (1.0, 1.0, 0.1)


def test_full_and_topk_terms_equal_hand_formulas():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, C, generator=g), 4 * torch.randn(4, C, generator=g)
    present = torch.ones(4, dtype=torch.bool)
    full = kd_term(s, t, present, KDConfig(temperature=10.0))
    assert full.item() == pytest.approx(hand_kl(s, t, 10.0).sum().item() / (4 * C), rel=1e-5)
    batchmean = kd_term(s, t, present, KDConfig(temperature=10.0, reduction="batchmean"))
    assert batchmean.item() == pytest.approx(hand_kl(s, t, 10.0).mean().item(), rel=1e-5)
    k = 5
    idx = t.topk(k, 1).indices
    top = kd_term(s, t, present, KDConfig(temperature=5.0, variant="top_k", k=k))
    assert top.item() == pytest.approx(hand_kl(s.gather(1, idx), t.gather(1, idx), 5.0).sum().item() / (4 * k), rel=1e-5)
    assert kd_term(s, t, present, KDConfig(variant="top_k", k=C + 3)).item() == pytest.approx(full.item(), rel=1e-6)


def test_missing_teachers_skip_or_uniform():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, C, generator=g), torch.randn(4, C, generator=g)
    present = torch.tensor([True, False, True, False])
    skip = kd_term(s, t, present, KDConfig(temperature=2.0))
    keep = hand_kl(s, t, 2.0)[present].sum() / (2 * C)
    assert skip.item() == pytest.approx(keep.item(), rel=1e-5)
    uni = kd_term(s, t, present, KDConfig(temperature=2.0, missing_teacher="uniform"))
    t_uni = torch.where(present[:, None], t, torch.full_like(t, -1.0))
    assert uni.item() == pytest.approx(hand_kl(s, t_uni, 2.0).sum().item() / (4 * C), rel=1e-5)
    assert kd_term(s, t, torch.zeros(4, dtype=torch.bool), KDConfig()).item() == 0.0


def test_training_step_adds_weighted_kd_to_avt_losses_and_only_the_student_learns():
    m = make({"weight": 150.0})
    b = batch()
    b["teacher.logits"].requires_grad_(True)
    out = m.training_step(b)
    base = make({"weight": 0.0}).training_step(batch(with_teacher=False))
    # same init (seed) and same inputs: the only difference is the KD term
    assert out.total.item() == pytest.approx(base.total.item() + 150.0 * out.terms["kd"].item(), rel=1e-5)
    out.total.backward()
    assert b["teacher.logits"].grad is None
    assert all(p.grad is not None for p in m.model.classifier.parameters())
    assert set(base.terms) == {"cls", "feat", "past_cls"}


def test_zero_rows_count_as_missing_without_a_present_key():
    m = make({"weight": 1.0, "temperature": 1.0})
    b = batch()
    b["teacher.logits"][1:] = 0.0
    out = m.training_step(b)
    assert out.terms["teacher_present"].item() == pytest.approx(0.25)
    with torch.no_grad():
        s = m.model(b["frame_features"]).logits
    assert out.terms["kd"].item() == pytest.approx(hand_kl(s[:1], b["teacher.logits"][:1], 1.0).item() / C, rel=1e-4)
    b["teacher.present"] = torch.tensor([True, True, False, False])
    assert m.training_step(b).terms["teacher_present"].item() == pytest.approx(0.5)


def test_no_store_is_a_clear_error_unless_kd_is_off():
    with pytest.raises(ConfigError, match="teacher.logits.*data.features"):
        make().training_step(batch(with_teacher=False))
    assert "kd" not in make({"weight": 0.0}).training_step(batch(with_teacher=False)).terms


def test_feature_alignment_terms():
    m = make({"weight": 0.0, "feature_cosine": 1.0, "feature_mse": 2.0})
    b = batch()
    out = m.training_step(b)
    with torch.no_grad():
        f = m.model(b["frame_features"]).future_feature
    cos = (1 - F.cosine_similarity(f, b["teacher.feature"], dim=-1)).mean()
    mse = (F.normalize(f, dim=-1) - F.normalize(b["teacher.feature"], dim=-1)).pow(2).mean()
    assert out.terms["feat_cos"].item() == pytest.approx(cos.item(), rel=1e-5)
    assert out.terms["feat_mse"].item() == pytest.approx(mse.item(), rel=1e-5)
    b["teacher.feature"] = torch.randn(4, D + 1)
    with pytest.raises(ConfigError, match="must match"):
        m.training_step(b)


def test_eval_reports_anticipation_metrics_with_verbs_and_nouns():
    m = make().eval()
    b = batch(b=12)
    out = m.eval_step(b)
    assert out["uid"] == b["uid"] and out["logits"].shape == (12, C)
    metrics = m.eval_metrics(out)
    assert {"top1", "top5", "mean_class_acc", "cm_recall5", "verb_top1", "noun_top5"} <= set(metrics)
    assert metrics["top1"] <= metrics["top5"]


def test_recipe_section_validation():
    with pytest.raises(ConfigError, match="variant"):
        config_from_data({"method": {"name": "textkd", "kd": {"variant": "topk"}}, "data": {"name": "gauss"}})
    with pytest.raises(ConfigError, match="temperature"):
        from_dict(KDConfig, {"temperature": 0.0})


@pytest.mark.parametrize("name", ["egtea-teacher", "egtea-student-kd", "egtea-student-avt", "ek55-teacher",
                                  "ek55-student-kd", "ek55-student-avt", "avdigits-teacher", "avdigits-student",
                                  "avdigits-student-kd"])
def test_recipes_load_with_the_published_kd_settings(name):
    from pathlib import Path

    from xmodal.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes" / "textkd" / f"{name}.yaml")
    m = cfg.method
    if name.startswith("egtea-student-kd") or name == "avdigits-student-kd":
        assert (m.kd.weight, m.kd.temperature, m.kd.variant, m.kd.reduction) == (150.0, 10.0, "full", "elements_mean")
        assert "teacher" in cfg.data.features
    elif name == "ek55-student-kd":
        assert (m.kd.weight, m.kd.temperature, m.kd.variant, m.kd.k) == (20.0, 5.0, "top_k", 50)
    elif name.endswith(("-avt", "-student")):
        assert m.kd.weight == 0.0 and "teacher" not in cfg.data.features
    else:
        assert m.name == "text_teacher" and m.hist_len == {"egtea": 15, "ek55": 5, "avdigits": 5}[name.split("-")[0]]
        assert m.class_weights == ("balanced" if name.startswith("egtea") else "none")
