"""``thunderdlm bench SUITE``: the fair benchmark of DESIGN.md §4.

Every method of a suite trains on the same data with the same budget (wall-clock minutes, tokens or
steps) and is measured the same way: validation NLL bound ± standard error, samples at several step
counts (sample metrics, judge NLL, sampling speed), training speed. Results go to
``<out>/results.json`` (with a manifest), ``results.md`` and PNG plots.

    from thunderdlm.bench import load_suite, plan_suite, run_suite, load_results
    suite, path = load_suite("tiny", ["data.dir=data/shakespeare_char"])
    results = run_suite(plan_suite(suite, path))

Files: ``suite.py`` (the typed suite config), ``plan.py`` (resolve and check before training),
``runner.py`` (train / reuse / resume, then measure), ``measure.py`` (one run's measurements),
``results.py`` (JSON on disk), ``manifest.py`` (what produced the numbers), ``report.py``
(markdown and plots).
"""
from thunderdlm.bench.manifest import Manifest, collect_manifest
from thunderdlm.bench.plan import SuitePlan, plan_suite
from thunderdlm.bench.results import BenchResults, load_results
from thunderdlm.bench.runner import run_suite
from thunderdlm.bench.suite import Suite, SuiteError, load_suite, suite_names

__all__ = ["Suite", "SuiteError", "load_suite", "suite_names", "SuitePlan", "plan_suite", "run_suite",
           "BenchResults", "load_results", "Manifest", "collect_manifest"]
