"""The RFT loop on the Tinker backend: explorer, trainer and synchronizer of `rft run`.

    from rft_runtime.loop.job import run_job
    result = run_job(cfg, metrics_port=None, progress=False)
"""
