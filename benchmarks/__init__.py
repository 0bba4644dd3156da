"""Generation benchmarks (issue 8): ``python -m benchmarks.run [--quick]``; see the README, section Speed."""
