"""Studies over many runs: benchmarking a step, sweeps of configs, the sweeps' base experiment,
and the scaling laws fitted to their results."""
