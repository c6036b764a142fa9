"""The order test files are handed to make test's two pytest-xdist workers (`--dist loadfile`).

With `--no-loadscope-reorder` (the Makefile passes it; by default xdist reorders the files by
their number of tests and ignores this order) xdist gives each idle worker the next file in
collection order, so a long file collected last keeps one worker busy while the other waits.
The longest files go first (measured with `--durations=0`), a load-test file (which waits on
real servers) alternating with a simulation file (which computes), so that the two workers
rarely both wait or both compute. The order of the tests inside a file does not change.
"""

from __future__ import annotations

#: the longest files, about in this order: load tests and simulations alternating
FIRST = (
    "test_loadtest_command.py", "test_fast.py",
    "test_calibrate.py", "test_fast_p2p.py",
    "test_chain_real.py", "test_story_skype.py",
    "test_locust_devices.py", "test_theory.py",
    "test_calibrate_real.py", "test_lab_protections.py", "test_story_microsoft.py",
    "test_misconfigured.py", "test_sweep.py",
    "test_loadtest_limiters.py", "test_story_failover.py",
    "test_lab.py", "test_story_protections.py", "test_cli_hardening.py",
    "test_hosts.py", "test_fuzz.py",
    "test_real_servers.py", "test_fast_limiters.py",
    "test_protections.py", "test_fast_protections.py",
)


def pytest_collection_modifyitems(session, config, items) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: same order within a file
