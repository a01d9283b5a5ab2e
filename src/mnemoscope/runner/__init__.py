"""Where work executes: a plan of stages run in-process or on Ray, with the same results."""

from mnemoscope.runner.demo import demo_config
from mnemoscope.runner.progress import Reporter
from mnemoscope.runner.study import StageOutcome, Study, StudyResult, resolve_device, run_study

__all__ = [
    "Reporter",
    "StageOutcome",
    "Study",
    "StudyResult",
    "demo_config",
    "resolve_device",
    "run_study",
]
