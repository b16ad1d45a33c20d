"""Reading wrk's report (benchmark (c)): throughput, latency in any unit, and every kind of failure."""

from __future__ import annotations

import math

import pytest

from bench.pipeline import parse_wrk, wrk_command

REPORT = """Running 8s test @ http://127.0.0.1:4000
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    49.00ms    9.23ms 145.92ms   77.86%
    Req/Sec   327.43     33.02   401.00     74.21%
  Latency Distribution
     50%  850.00us
     75%   53.37ms
     90%   59.26ms
     99%    1.20s
  5238 requests in 8.06s, 1.09MB read
{errors}Requests/sec:    649.94
Transfer/sec:    138.37KB
"""


def test_figures_and_latency_units() -> None:
    rps, lat = parse_wrk(REPORT.format(errors=""))
    assert rps == 649.94
    assert lat["count"] == 5238 and lat["errors"] == 0 and lat["error_kinds"] == {} and lat["load"] == "wrk"
    assert lat["p50"] == pytest.approx(0.85) and lat["p90"] == pytest.approx(59.26) and lat["p99"] == 1200.0


def test_non_2xx_and_socket_errors_count_as_failures() -> None:
    errors = "  Socket errors: connect 0, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 7\n"
    _, lat = parse_wrk(REPORT.format(errors=errors))
    assert lat["errors"] == 12
    assert lat["error_kinds"] == {"read": 2, "timeout": 3, "non_2xx": 7}  # which kind, for the run's notes


def test_a_missing_percentile_is_nan_and_garbage_is_an_error() -> None:
    _, lat = parse_wrk(REPORT.format(errors="").replace("     90%   59.26ms\n", ""))
    assert math.isnan(lat["p90"])
    with pytest.raises(RuntimeError, match="unexpected wrk output"):
        parse_wrk("wrk: command failed\n")


def test_the_command_runs_the_script_with_the_run_id() -> None:
    cmd = wrk_command("http://127.0.0.1:4000", 32, 8, "r1")
    assert cmd[:5] == ["wrk", "-t2", "-c32", "-d8s", "--latency"]
    assert cmd[-3:] == ["http://127.0.0.1:4000", "--", "r1"] and cmd[cmd.index("-s") + 1].endswith("bench/single.lua")
