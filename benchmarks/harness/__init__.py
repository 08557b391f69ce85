"""The benchmarks' shared harness: one of each measuring helper, the machine, the matched peers.

* :mod:`.measure`: ``sync`` (device sync), ``time_calls`` (the timing loop), ``matmul_peak``,
  ``count_flops``, ``rss_mib`` / ``reset_peak_memory`` / ``peak_memory_mib`` (memory);
* :mod:`.machine`: ``machine()``, the CPU model and flags, torch, threads, GPU of a result;
* :mod:`.peers`: the settings (``mnist``, ``cifar``, ``cifar_small``) and the diffusers /
  denoising-diffusion-pytorch networks matched to ddpmlab's (``plan_setting``,
  ``build_peer_net``);
* :mod:`.output`: ``REPO``, ``RESULTS`` (``benchmarks/results/``, one folder per script),
  ``result_path(script, name)``, ``log``, ``write_json``, ``write_text``, ``module_command`` (a
  script as ``python -m benchmarks.X``);
* :mod:`.scoring`: the sample and score steps (``sample_ddpmlab``, ``sample_peer``,
  ``snapshots_of``, ``nhwc_uint8``, ``save_samples``, ``npz_images``, ``evaluate_mnist``,
  ``score_arrays``, ``summary``, ``write_table``, ``fid_plot``, ``sample_and_score_parsers``).
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
from .scoring import (
    evaluate_mnist,
    fid_plot,
    nhwc_uint8,
    npz_images,
    sample_and_score_parsers,
    sample_ddpmlab,
    sample_peer,
    save_samples,
    score_arrays,
    snapshots_of,
    summary,
    write_table,
)

__all__ = [
    "LIBS", "REPO", "RESULTS", "SETTINGS", "build_peer_net", "count_flops", "ddpmlab_config",
    "ddpmlab_model", "ddpmlab_net", "diffusers_kwargs", "evaluate_mnist", "fid_plot", "log",
    "lucidrains_kwargs", "machine", "matmul_peak", "module_command", "nhwc_uint8", "npz_images",
    "peak_memory_mib", "peer_params", "plan_setting", "reset_peak_memory", "result_path",
    "rss_mib", "run_size", "sample_and_score_parsers", "sample_ddpmlab", "sample_peer",
    "save_samples", "score_arrays", "snapshots_of", "summary", "sync", "time_calls",
    "write_json", "write_table", "write_text",
]
