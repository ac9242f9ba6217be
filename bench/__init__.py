"""The benchmark harness's entry point: `python -m bench` (the code is `bpfjit.benchmark`)."""
