"""Every size knob of the demo, full and --quick, in one table.

Stages read their row with `ctx.settings[...]`; the row is stored in results.json and a stage's
runs are redone when its row changes. Full: the recipes' own settings where they fit the 10-minute
budget on 2 CPU cores; quick: fewer steps and smaller pools, still enough for the claims to hold
(the CI test runs quick). Recipes are referenced by path so improved versions drop in. Numbers in
the comments were measured with one thread per command (the demo runs two commands at once on 2 cores).
"""

from __future__ import annotations

import copy
from typing import Any

SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "media": {  # avdigits mp4 files -> xmodal prep store
        "full": {"n_train_per_class": 5, "n_pool": 200, "n_test_per_class": 20, "workers": 2},
        "quick": {"n_train_per_class": 2, "n_pool": 60, "n_test_per_class": 8, "workers": 2},
    },
    # quick: 150 steps gave a->v R@1 22 % (chance 10), too close to the claim's margin; 200 steps 40 %.
    # full: the recipe's 450 steps (one thread, 300 steps gave 38 %; the recipe measured 66-70 % at 450)
    "gdt": {  # recipes/gdt/avdigits.yaml + retrieval + linear probe (trained vs random encoder)
        "full": {"recipe": "recipes/gdt/avdigits.yaml", "max_steps": 450, "n_pool": 3000},
        "quick": {"recipe": "recipes/gdt/avdigits.yaml", "max_steps": 200, "n_pool": 1500},
    },
    "textkd": {  # corpus -> MLM -> text teacher -> stored predictions -> students with / without KD
        "full": {"corpus_lines": 4000, "mlm_steps": 300, "teacher_epochs": 10, "teacher_batch": 16, "student_epochs": 10,
                 "num_sequences": 400, "seeds": [0]},
        # quick (one thread): teacher 9.6 s instead of 27, top-5 73.9 %; students 6 epochs: KD +9.1 top-5,
        # +11.4 class-mean recall (full: +7.7 / +10.2). MLM at 150 steps left only +4.0 / +6.0.
        "quick": {"corpus_lines": 4000, "mlm_steps": 300, "teacher_epochs": 5, "teacher_batch": 32, "student_epochs": 6,
                  "num_sequences": 400, "seeds": [0]},
    },
    "cavmae": {  # pretrain -> retrieval -> finetune (vs from scratch) -> inpainting; 0 = the recipe's own length
        "full": {"pretrain": "recipes/cavmae/avdigits-pretrain.yaml", "finetune": "recipes/cavmae/avdigits-finetune.yaml",
                 "scratch": "recipes/cavmae/avdigits-finetune-scratch.yaml", "pretrain_steps": 0, "finetune_epochs": 0,
                 "checked_retrieval": True, "checked_finetune": True},
        # quick: 200 pretraining steps (one thread: 38 s instead of 57): R@1 46.5 / 41.0 %, fine-tuning 64.5 % vs 32.5
        "quick": {"pretrain": "recipes/cavmae/avdigits-pretrain.yaml", "finetune": "recipes/cavmae/avdigits-finetune.yaml",
                  "scratch": "recipes/cavmae/avdigits-finetune-scratch.yaml", "pretrain_steps": 200, "finetune_epochs": 0,
                  "checked_retrieval": True, "checked_finetune": True},
    },
    "mfh": {  # xmodal mfh diagnose on the avdigits KD setting (branch mfh-cli)
        "full": {"recipes": "recipes/mfh/avdigits*.yaml", "sets": []},
        "quick": {"recipes": "recipes/mfh/avdigits*.yaml", "sets": []},
    },
    "ccl": {  # audio / image teachers -> KD and CCL students vs the no-KD baseline (branch ccl)
        "full": {"teachers": "recipes/supervised/avdigits-*-teacher.yaml", "baseline": "recipes/kd/avdigits-baseline.yaml",
                 "students": ["recipes/kd/avdigits-audio.yaml", "recipes/ccl/avdigits-audio.yaml",
                              "recipes/ccl/avdigits-image.yaml", "recipes/ccl/avdigits-audio-image.yaml"],
                 "gap_hurts": 0.8, "sets": [], "student_sets": []},
        # quick: the audio teacher only (the image teacher costs ~47 s and only the CCL(I)/(AI) students use it);
        # students 150 steps instead of 300: no-KD 15.6, KD 32.6, CCL(A) 27.6, KD at gap 0.8 13.4 %
        "quick": {"teachers": "recipes/supervised/avdigits-audio-teacher.yaml", "baseline": "recipes/kd/avdigits-baseline.yaml",
                  "students": ["recipes/kd/avdigits-audio.yaml", "recipes/ccl/avdigits-audio.yaml"],
                  "gap_hurts": 0.8, "sets": [], "student_sets": ["train.max_steps=150"]},
    },
}


def stage_settings(name: str, quick: bool) -> dict[str, Any]:
    """The row of `name` for the mode (a copy; {} for a stage without a row)."""
    row = SETTINGS.get(name, {})
    return copy.deepcopy(row.get("quick" if quick else "full", {}))
