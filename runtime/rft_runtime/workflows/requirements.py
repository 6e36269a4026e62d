"""What each workflow Trinity-RFT 0.6 registers needs beyond this runtime, read by `rft validate` and checked
again before a job's first step.

Most need nothing: this runtime has its own implementation of them (facts from Trinity, code of its own).
Some need a pip package (gymnasium for FrozenLake), an auxiliary model (a judge, a teacher, a reward
model: `explorer.auxiliary_models[0]`), or a vision-language base model. Those bound to an external
environment (ALFWorld, ScienceWorld, WebShop, InterCode, the AgentScope agents) run as Trinity's own class,
so trinity-rft and the environment's package must both be installed. Importing this module imports
nothing heavy: packages are looked up with importlib.util.find_spec, never imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from rft_runtime.workflows.trinity_compat import real_trinity_root

# the pip requirement that installs trinity-rft as this runtime uses it (see pyproject's trinity extra)
TRINITY_PIP = "rft-platform[trinity]"


@dataclass(frozen=True)
class Needs:
    """A workflow's requirements: packages (pip requirement, import name), Trinity's own class, a model."""

    packages: tuple[tuple[str, str], ...] = ()
    trinity: bool = False
    # what explorer.auxiliary_models[0] is to the workflow ("a judge model"), when it must be set
    auxiliary: str | None = None
    vision: bool = False
    note: str = ""


_GYM = (("gymnasium", "gymnasium"),)
_AS = (("agentscope", "agentscope"),)
_ALF = (("alfworld", "alfworld"), ("textworld", "textworld"))

WORKFLOW_NEEDS: dict[str, Needs] = {
    "math_rm_workflow": Needs(auxiliary="a reward model that grades each reply"),
    "async_math_rm_workflow": Needs(auxiliary="a reward model that grades each reply"),
    "math_ruler_workflow": Needs(auxiliary="a judge model (RULER) that scores the group of replies"),
    "async_math_ruler_workflow": Needs(auxiliary="a judge model (RULER) that scores the group of replies"),
    "rubric_judge_workflow": Needs(auxiliary="a judge model that rates each reply against the row's rubric"),
    "on_policy_distill_workflow": Needs(auxiliary="the teacher model"),
    "on_policy_distill_math_workflow": Needs(auxiliary="the teacher model"),
    "frozen_lake_workflow": Needs(packages=_GYM),
    "simple_mm_workflow": Needs(vision=True),
    "async_simple_mm_workflow": Needs(vision=True),
    "agentscope_workflow_adapter": Needs(packages=(("agentscope>=1.0.7,<=1.0.11", "agentscope"),), trinity=True),
    "agentscope_workflow_adapter_v1": Needs(packages=(("agentscope>=1.0.12", "agentscope"),), trinity=True),
    "agentscope_react_workflow": Needs(packages=_AS, trinity=True),
    "as_react_workflow": Needs(packages=_AS, trinity=True),
    "agentscope_react_math_workflow": Needs(packages=_AS, trinity=True),
    "agentscopev0_react_math_workflow": Needs(packages=(("agentscope<1", "agentscope"),), trinity=True),
    "agentscope_v1_react_search_workflow": Needs(packages=_AS, trinity=True),
    "email_search_workflow": Needs(packages=_AS, trinity=True),
    "alfworld_workflow": Needs(packages=_ALF, trinity=True),
    "RAFT_alfworld_workflow": Needs(packages=_ALF, trinity=True),
    "RAFT_reflect_alfworld_workflow": Needs(packages=_ALF, trinity=True),
    "step_wise_alfworld_workflow": Needs(packages=_ALF, trinity=True),
    "sciworld_workflow": Needs(packages=(("scienceworld", "scienceworld"),), trinity=True),
    "webshop_workflow": Needs(packages=(("gym", "gym"), ("web_agent_site (WebShop, from its repository)",
                                                         "web_agent_site")), trinity=True),
    "intercode_sql_workflow": Needs(packages=(("intercode-bench", "intercode"),), trinity=True),
}


def needs(name: str) -> Needs:
    """What the workflow registered as `name` needs (nothing, for names not listed)."""
    return WORKFLOW_NEEDS.get(name, Needs())


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(name: str) -> list[str]:
    """The pip requirements of the workflow that are not installed here (trinity-rft first when needed)."""
    n = needs(name)
    out = [TRINITY_PIP] if n.trinity and real_trinity_root() is None else []
    return out + [pip for pip, module in n.packages if not _importable(module)]


def install_hint(name: str, missing: list[str]) -> str:
    """One sentence: what the workflow is bound to and the install line that makes it run."""
    pip = [f"'{p}'" if any(c in p for c in "[]<>=,") else p for p in missing if " " not in p]
    other = [p for p in missing if " " in p]  # not on PyPI: the text says where it comes from
    what = "runs as Trinity-RFT's own class, bound to its environment, and" if needs(name).trinity else ""
    steps = ([f"pip install {' '.join(pip)}"] if pip else []) + other
    return f"workflow {name!r} {what} needs {', '.join(missing)}: {'; then '.join(steps)}".replace("  ", " ")
