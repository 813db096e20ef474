"""The reproduction layer: experiments, executors, run_all, tables, plots, ablations and claims."""
