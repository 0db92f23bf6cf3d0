"""The benchmark suites: every fused op timed against its eager pure-PyTorch reference and
torch.compile of it (and the attacks and the training loop against their peers), after a
correctness check. `fastrobust bench SUITE ...` or `python -m fastrobust.bench SUITE ...`;
harness.py builds, checks and times their cases, results.py runs a suite and writes its record
(benchmarks/README.md describes the method)."""

# suite name -> module of this package defining build_suite(device, dtypes, quick) ->
# harness.Suite (or run(device, dtypes, options) for a suite that runs itself). A new suite is
# one module and one line here. Read by the CLI's help without importing the suites.
SUITES = {
    "sparta": "sparta",
    "pgd": "pgd",
    "cifs": "cifs",
    "nlm": "nlm",
    "train": "train",
    "attacks": "attacks",
    "ode": "ode",
}
