import time
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="session")
def avdigits_bundles():
    """The avdigits data of recipes/{gdt,stica}/avdigits.yaml, generated once per session:
    (pretraining bundle: train = the unlabelled pool, probe bundle: train = 5 labelled clips/class)."""
    from xmodal.config import load_config
    from xmodal.data.bundle import DataBundle
    from xmodal.registry import DATASETS

    gdt = load_config(RECIPES / "gdt" / "avdigits.yaml", ["data.train_split=train"])
    stica = load_config(RECIPES / "stica" / "avdigits.yaml", ["data.train_split=train"])
    assert gdt.data == stica.data, "the embedded GDT and STiCA recipes are meant to share their data"
    probe = DATASETS.build(gdt.data)
    return DataBundle(train=probe.extra["pool"], test=probe.test, info=probe.info), probe


@pytest.fixture(scope="session")
def distill_runs(tmp_path_factory):
    """Embedded KD / CCL runs (recipes/kd, recipes/ccl): the audio teacher trained once, its cache
    written once per gap, student test accuracies memoised per (recipe, gap, seed). The teacher
    network is patched to fail: every student reads the cache."""
    from xmodal.commands.distill import write_teacher_cache
    from xmodal.config import load_config
    from xmodal.engine.trainer import train
    from xmodal.methods.kd import run_kd
    from xmodal.models.tiny_audio import TinyAudio
    from xmodal.registry import DATASETS

    root = tmp_path_factory.mktemp("distill")
    teacher = root / "teacher"
    tres = train(load_config(RECIPES / "supervised" / "avdigits-audio-teacher.yaml"), out_dir=teacher)
    assert tres.metrics["test"]["top1"] > 60, tres.metrics  # unseen voices; chance 10 %
    bundles, results = {}, {}
    kd_recipe = RECIPES / "kd" / "avdigits-audio.yaml"

    def features(gap: float) -> list[str]:
        cache = root / f"cache-{gap}.safetensors"
        return [f"data.features.teacher={cache}", f"data.features.audio_teacher={cache}"]

    def bundle(gap: float):
        if gap not in bundles:
            over = [f"data.gap={gap}"]
            write_teacher_cache(teacher, root / f"cache-{gap}.safetensors", data_recipe=str(kd_recipe), overrides=over)
            bundles[gap] = DATASETS.build(load_config(kd_recipe, over + features(gap)).data)
        return bundles[gap]

    def run(recipe: str, gap: float, seed: int) -> float:
        key = (recipe, gap, seed)
        if key not in results:
            data = bundle(gap)
            over = [f"data.gap={gap}", f"train.seed={seed}", f"train.out_dir={root / 'runs'}", *features(gap)]
            over.append(f"method.teacher.run={teacher}" if recipe.startswith("kd/") else f"method.audio_teacher.run={teacher}")
            if recipe.startswith("ccl/"):
                over.append("method.image_teacher.run=null")
            t0 = time.perf_counter()
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(TinyAudio, "forward", lambda *a, **k: pytest.fail("teacher forward with a cache"))
                res = run_kd(RECIPES / recipe, over, data=data)
            assert res.method.teacher_forwards == 0
            results[key] = res.acc
            print(f"\n{recipe} gap={gap} seed={seed}: test acc {res.acc:.1f} % ({time.perf_counter() - t0:.1f} s)")
        return results[key]

    run.teacher = teacher
    run.results = results
    return run
