"""Results tables and figures from run directories (`sparsetrain report`, `make vis`).

    from sparsetrain.report import collect_runs, group_runs
    runs, n_found, n_skipped = collect_runs(["outputs"], warn=print)
    for g in group_runs(runs):
        print(g.label, g.density, g.test_acc())   # (mean, sample std) in percent

Modules: `runs` (find and read run directories), `aggregate` (groups, mean ± std, results.csv),
`tables` (results.md, results.tex, inference_stats.md), `plots` (PNG figures), `cli` (`main`).
"""

from sparsetrain.report.aggregate import Group, group_runs, mean_std, method_label, write_csv
from sparsetrain.report.runs import Run, RunError, collect_runs, find_run_dirs, load_run

__all__ = [
    "Group",
    "Run",
    "RunError",
    "collect_runs",
    "find_run_dirs",
    "group_runs",
    "load_run",
    "mean_std",
    "method_label",
    "write_csv",
]
