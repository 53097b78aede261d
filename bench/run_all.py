"""Run every benchmark and print the tables for docs/PERFORMANCE.md (make bench)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_alerts  # noqa: E402
import bench_crash  # noqa: E402
import bench_flood  # noqa: E402
import bench_http  # noqa: E402
import bench_lock  # noqa: E402
import bench_memory  # noqa: E402
import bench_storm  # noqa: E402
import bench_udp  # noqa: E402
import bench_unix  # noqa: E402
import bench_watch  # noqa: E402
from common import machine  # noqa: E402


def main() -> None:
    print(f"Machine: {machine()}")
    bench_http.main(["--seconds", "10", "--rounds", "3"])
    bench_unix.main([])
    bench_crash.main([])
    bench_memory.main([])
    bench_flood.main([])
    bench_lock.main([])
    bench_storm.main(["--rounds", "3"])
    bench_watch.main([])
    bench_alerts.main([])
    bench_udp.main([])


if __name__ == "__main__":
    main()
