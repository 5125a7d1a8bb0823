"""Render the spoken-digit bank shipped in `xmodal/data/embedded/assets/voices/` (dev-only).

Needs the Debian `espeak-ng` program (GPL-3; never a runtime dependency of xmodal: only its audio
output is shipped, as data) plus numpy, scipy and soundfile. Run from anywhere:

    apt-get install -y espeak-ng
    python scripts/render_digit_voices.py [--out DIR]

40 speakers = 8 English espeak-ng voices x 5 voice variants each (every speaker has its own
variant, so a speaker held out for testing brings an unseen timbre), each with its own speed
(120-200 wpm) and pitch (20-80), all drawn from a fixed seed; each speaker says "zero" .. "nine".
Every render is resampled 22.05 -> 16 kHz (polyphase, scipy), trimmed of leading/trailing
silence, peak-normalised to 0.9 and stored as 16-bit FLAC, plus `index.json`. Output is
identical run to run for one espeak-ng build.

espeak-ng quirks met here: the mbrola voices it lists need the separate mbrola binary and are
left out; an unknown `+variant` silently falls back to the default voice (so the variants below
are names that `espeak-ng --voices=variant` lists); `--stdout` writes a WAV header with wrong size
fields, so renders go through `-w file.wav` instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# 40 distinct variant files (15 female, 25 male), 5 per voice in this order.
VARIANTS = (
    "f1", "m1", "Alicia", "m2", "klatt",
    "f2", "m3", "Andrea", "m4", "klatt2",
    "f3", "m5", "Annie", "m6", "klatt3",
    "f4", "m7", "aunty", "m8", "adam",
    "f5", "Alex", "belinda", "Andy", "boris",
    "linda", "caleb", "steph", "david", "edward",
    "steph2", "Gene", "anika", "gustave", "iven",
    "grandma", "john", "max", "Michael", "travis",
)  # fmt: skip
SPEED = (120, 200)  # words per minute
PITCH = (20, 80)
SR_IN, SR_OUT = 22050, 16000
TRIM_DB = 35.0  # frames quieter than peak frame RMS - 35 dB count as silence
MARGIN_S = 0.02


def trim_silence(x: np.ndarray, sr: int) -> np.ndarray:
    hop = sr // 100  # 10 ms frames
    n = len(x) // hop
    rms = np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(1) + 1e-12)
    active = np.flatnonzero(rms > rms.max() * 10 ** (-TRIM_DB / 20))
    margin = int(MARGIN_S * sr)
    lo = max(0, active[0] * hop - margin)
    hi = min(len(x), (active[-1] + 1) * hop + margin)
    return x[lo:hi]


def render(word: str, voice: str, variant: str, speed: int, pitch: int, tmp: Path) -> np.ndarray:
    wav = tmp / "r.wav"
    cmd = ["espeak-ng", "-v", f"{voice}+{variant}", "-s", str(speed), "-p", str(pitch), "-w", str(wav), word]
    subprocess.run(cmd, check=True, capture_output=True)
    x, sr = sf.read(wav, dtype="float64")
    assert sr == SR_IN and x.ndim == 1, (sr, x.shape)
    y = resample_poly(x, 320, 441)  # 22050 * 320 / 441 = 16000
    y = trim_silence(y, SR_OUT)
    return 0.9 * y / np.abs(y).max()


def main() -> None:
    default_out = Path(__file__).resolve().parents[1] / "src/xmodal/data/embedded/assets/voices"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_out)
    args = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install -y espeak-ng")
    assert len(VARIANTS) == 5 * len(VOICES) == len(set(VARIANTS))
    rng = np.random.default_rng(0)
    n = len(VARIANTS)
    # stratified speeds/pitches: every speaker gets its own, spread evenly over the range
    speeds = rng.permutation(np.round(np.linspace(*SPEED, n)).astype(int))
    pitches = rng.permutation(np.round(np.linspace(*PITCH, n)).astype(int))
    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    with tempfile.TemporaryDirectory() as tmp:
        for s, variant in enumerate(VARIANTS):
            voice = VOICES[s // 5]
            for d, word in enumerate(WORDS):
                y = render(word, voice, variant, int(speeds[s]), int(pitches[s]), Path(tmp))
                name = f"s{s:02d}_{d}.flac"
                sf.write(args.out / name, y, SR_OUT, subtype="PCM_16", format="FLAC")
                index.append(
                    {"digit": d, "word": word, "speaker": s, "voice": voice, "variant": variant,
                     "speed": int(speeds[s]), "pitch": int(pitches[s]), "samples": len(y), "file": name}
                )  # fmt: skip
    meta = {"sample_rate": SR_OUT, "espeak_ng": _espeak_version(), "renders": index}
    # one render per line: small, diffable
    head = json.dumps({k: v for k, v in meta.items() if k != "renders"})[:-1]
    lines = ",\n  ".join(json.dumps(r) for r in index)
    (args.out / "index.json").write_text(f'{head}, "renders": [\n  {lines}\n]}}\n')
    total = sum(f.stat().st_size for f in args.out.glob("*.flac"))
    print(f"{len(index)} renders, {total / 1e6:.2f} MB -> {args.out}")


def _espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True).stdout
    return " ".join(out.split()[:4])


if __name__ == "__main__":
    main()
