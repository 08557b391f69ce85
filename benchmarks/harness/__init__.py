"""The benchmarks' shared harness: one of each measuring helper, the machine, the matched peers.

* :mod:`.measure`: ``sync`` (device sync), ``time_calls`` (the timing loop), ``matmul_peak``,
  ``count_flops``, ``rss_mib`` / ``reset_peak_memory`` / ``peak_memory_mib`` (memory);
* :mod:`.machine`: ``machine()``, the CPU model and flags, torch, threads, GPU of a result;
* :mod:`.peers`: the settings (``mnist``, ``cifar``, ``cifar_small``) and the diffusers /
  denoising-diffusion-pytorch networks matched to ddpmlab's (``plan_setting``,
  ``build_peer_net``);
* :mod:`.output`: ``REPO``, ``RESULTS`` (``benchmarks/results/``), ``result_path``, ``log``,
  ``write_json``, ``write_text``, ``module_command`` (a script as ``python -m benchmarks.X``).
"""

from .machine import machine
from .measure import count_flops, matmul_peak, peak_memory_mib, reset_peak_memory, rss_mib, sync, time_calls
from .output import REPO, RESULTS, log, module_command, result_path, write_json, write_text
from .peers import (
    LIBS,
    SETTINGS,
    build_peer_net,
    ddpmlab_config,
    ddpmlab_model,
    ddpmlab_net,
    diffusers_kwargs,
    lucidrains_kwargs,
    peer_params,
    plan_setting,
    run_size,
)

__all__ = [
    "LIBS", "REPO", "RESULTS", "SETTINGS", "build_peer_net", "count_flops", "ddpmlab_config",
    "ddpmlab_model", "ddpmlab_net", "diffusers_kwargs", "log", "lucidrains_kwargs", "machine",
    "matmul_peak", "module_command", "peak_memory_mib", "peer_params", "plan_setting",
    "reset_peak_memory", "result_path", "rss_mib", "run_size", "sync", "time_calls",
    "write_json", "write_text",
]
