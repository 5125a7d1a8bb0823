"""`xmodal demo`: the cross-modal story on embedded data, end to end, with one HTML report.

core.py     stage registry, typed results, results.json, resumable runner
settings.py every full / --quick size knob in one table
stages/     one module per stage (media, gdt, textkd, cavmae, mfh, ccl)
report.py   report.html (self-contained, PNG plots) from results.json and the run folders
"""

from xmodal.demo.core import Bars, Claim, StageContext, StageResult, register_stage, run_demo

__all__ = ["Bars", "Claim", "StageContext", "StageResult", "register_stage", "run_demo"]
