#!/usr/bin/env python3
"""Generates the stallwatch Grafana dashboards (dashboards/*.json) from one description.

    python3 dashboards/generate.py          # (re)write the JSON files next to this script
    python3 dashboards/generate.py --check  # exit 1 if a checked-in file differs from the output

Why a generator: three dashboards share the same variables, datasource references, panel
boilerplate and grid layout. Written by hand, ids, grid positions and the `${datasource}`
reference drift as panels are added; here each panel is one line of PromQL plus a title, and
the layout is computed (rows of panels, left to right, wrapping at 24 columns), so positions
never overlap and ids are unique by construction. The JSON is checked in so that it can be
imported without running anything; the e2e test (crates/agent/tests/e2e/dashboards/) fails
when the files are stale. Standard library only.
"""

import json
import os
import sys

import ebs
import fleet
from panels import NODE, dashboard, node_vars, rate, stat, t, thresholds, ts, var_query


def overview():
    S = NODE
    io_some = f'stallwatch_pressure_avg10_ratio{{{S}, resource="io", kind="some"}}'
    rows = [
        (
            "The verdict: stalled now, and why (the agent's answer; details at / on the agent, or `stallwatch why`)",
            [
                stat("Stalled", [t(f"max(stallwatch_stalled{{{S}}})")], "short",
                     thresholds=thresholds((1, "red")), w=4,
                     desc="1 while the agent's verdict says the node is stalled (any cause)."),
                stat("Cause now", [t(f"stallwatch_verdict{{{S}}} == 1", "{{cause}}", instant=True)],
                     "short", w=6,
                     desc="The active causes: disk_stalled, ebs_credits, writeback and disk_saturated "
                     "are I/O; memory, lock and cpu are not; none = not stalled. The node page (/ on "
                     "the agent) and `stallwatch why` give the evidence and who."),
                ts("Active causes over time",
                   [t(f'stallwatch_verdict{{{S}, cause!="none"}}', "{{cause}}")],
                   "short", min=0, max=1, w=8, stack=True, draw="bars", fill=60,
                   desc="1 while each cause is active (several can be at once)."),
                ts("Stall seconds per cause (per hour)",
                   [t(f'increase(stallwatch_verdict_seconds_total{{{S}, cause!="none"}}[1h])', "{{cause}}")],
                   "s", min=0, w=6,
                   desc="Seconds spent in each cause over the last hour; incidents: "
                   "stallwatch_incidents_total and /api/v1/incidents on the agent."),
            ],
        ),
        (
            "Is this node stalled on I/O right now?",
            [
                stat("I/O pressure (some, avg10)", [t(io_some)], "percentunit",
                     thresholds=thresholds((0.1, "orange"), (0.4, "red")),
                     desc="Share of the last 10 s in which at least one task waited for I/O."),
                stat("I/O pressure (full, avg10)",
                     [t(f'stallwatch_pressure_avg10_ratio{{{S}, resource="io", kind="full"}}')],
                     "percentunit", thresholds=thresholds((0.05, "orange"), (0.2, "red")),
                     desc="Share of the last 10 s in which every non-idle task waited for I/O."),
                stat("Threads in D now", [t(f"sum(stallwatch_dstate_threads{{{S}}})")], "short",
                     thresholds=thresholds((1, "orange"), (10, "red"))),
                stat("Longest D", [t(f"max(stallwatch_dstate_longest_seconds{{{S}}})")], "s",
                     thresholds=thresholds((5, "orange"), (30, "red")),
                     desc="Longest current uninterrupted D state of any thread. "
                     "Run `stallwatch dstate` on the node to see who."),
                stat("Sync-write probe in flight", [t(f"max(stallwatch_probe_in_flight_seconds{{{S}}})")],
                     "s", thresholds=thresholds((1, "orange"), (5, "red")),
                     desc="Age of the running `dd oflag=sync`-style probe write; "
                     "5 s is the seed incident's 'hung' mark."),
                stat("Lowest EBS burst balance",
                     [t(f"min(stallwatch_ebs_burst_balance_percent{{{S}}})", "CloudWatch"),
                      t(f"min(stallwatch_ebs_burst_balance_estimate_percent{{{S}}})", "estimate")],
                     "percent", min=0, max=100,
                     thresholds={"mode": "absolute", "steps": [
                         {"color": "red", "value": None},
                         {"color": "orange", "value": 20},
                         {"color": "green", "value": 50}]}),
            ],
        ),
        (
            "Pressure (PSI)",
            [
                ts("Stall time share by resource",
                   [t(rate("stallwatch_pressure_stall_seconds_total", S), "{{resource}} {{kind}}")],
                   "percentunit", min=0,
                   desc="rate() of the PSI totals: exact between scrapes, unlike avg10."),
                ts("avg10 peak over the agent's window",
                   [t(f"stallwatch_pressure_avg10_peak_ratio{{{S}}}", "{{resource}} {{kind}}")],
                   "percentunit", min=0,
                   desc="Max of avg10 over the last peak_window (60 s): a 10 s stall shows in a 60 s scrape."),
                ts("Blocked tasks",
                   [t(f"stallwatch_procs_blocked{{{S}}}", "blocked now"),
                    t(f"stallwatch_procs_blocked_peak{{{S}}}", "peak (window)"),
                    t(rate("stallwatch_procs_blocked_seconds_total", S), "average (integrated)")],
                   "short", min=0),
                ts("CPU iowait and steal",
                   [t("sum by (mode) (" + rate("stallwatch_cpu_seconds_total", S, ', mode=~"iowait|steal"') + ")",
                      "{{mode}}")],
                   "short", min=0, desc="CPU-seconds per second (cores)."),
                ts("Load vs runnable",
                   [t(f"stallwatch_load1{{{S}}}", "load1"),
                    t(f"stallwatch_procs_running{{{S}}}", "running")],
                   "short", min=0,
                   desc="D-state tasks count in the load average: load above running tasks with idle CPUs means an I/O stall."),
            ],
        ),
        (
            "Who is stuck (threads in D state)",
            [
                ts("Threads in D by group", [t(f"stallwatch_dstate_threads{{{S}}}", "{{group}}")],
                   "short", min=0, stack=True, fill=40),
                ts("Average threads in D (integrated)",
                   [t(rate("stallwatch_dstate_seconds_total", S), "{{group}}")], "short", min=0,
                   desc="rate() of D thread-seconds: pile-ups shorter than the scrape interval still count."),
                ts("Longest D by group", [t(f"stallwatch_dstate_longest_seconds{{{S}}}", "{{group}}")],
                   "s", min=0, thresholds=thresholds((30, "red"))),
                ts("Threads in D by wait channel",
                   [t(f"stallwatch_dstate_threads_by_wchan{{{S}}}", "{{wchan}}")], "short", min=0,
                   stack=True, fill=40),
                ts("Threads entering D", [t(rate("stallwatch_dstate_episodes_total", S), "{{group}}")],
                   "short", min=0),
                ts("Thread walk cadence",
                   [t(f"stallwatch_thread_walk_interval_seconds{{{S}}}", "walk interval"),
                    t(f"stallwatch_stall_suspected{{{S}}}", "stall suspected")], "short", min=0),
            ],
        ),
        (
            "Writeback",
            [
                ts("Dirty and Writeback vs thresholds",
                   [t(f"stallwatch_memory_dirty_bytes{{{S}}}", "Dirty"),
                    t(f"stallwatch_memory_dirty_peak_bytes{{{S}}}", "Dirty peak (window)"),
                    t(f"stallwatch_memory_writeback_bytes{{{S}}}", "Writeback"),
                    t(f"stallwatch_memory_writeback_peak_bytes{{{S}}}", "Writeback peak (window)"),
                    t(f"stallwatch_dirty_background_threshold_bytes{{{S}}}", "background threshold"),
                    t(f"stallwatch_dirty_threshold_bytes{{{S}}}", "throttle threshold"),
                    t(f"stallwatch_writeback_burst_threshold_bytes{{{S}}}", "burst threshold")],
                   "bytes", min=0, w=12),
                ts("Time in writeback bursts and over the background threshold",
                   [t(rate("stallwatch_writeback_burst_seconds_total", S), "in burst"),
                    t(rate("stallwatch_dirty_over_background_seconds_total", S), "Dirty over background")],
                   "percentunit", min=0, w=6),
                ts("Writeback bursts per minute",
                   [t(f'{rate("stallwatch_writeback_bursts_total", S)} * 60', "bursts/min")],
                   "short", min=0, w=6),
                ts("Pages dirtied and written per second",
                   [t(rate("stallwatch_vm_dirtied_pages_total", S), "dirtied"),
                    t(rate("stallwatch_vm_written_pages_total", S), "written")], "short", min=0),
                ts("Overlay mounts by upper device",
                   [t(f"stallwatch_overlay_mounts{{{S}}}", "{{upper_device}}")], "short", min=0,
                   desc="Each overlay unmount syncs the filesystem of its upper directory."),
                ts("Writeback tunables",
                   [t(f"stallwatch_vm_dirty_expire_seconds{{{S}}}", "dirty_expire"),
                    t(f"stallwatch_vm_dirty_writeback_interval_seconds{{{S}}}", "dirty_writeback interval")],
                   "s", min=0),
            ],
        ),
        (
            "Sync-write probe",
            [
                ts("Probe write latency",
                   [t(f"histogram_quantile({q}, sum by (path, le) "
                      f'({rate("stallwatch_probe_write_seconds_bucket", S)}))', f"{{{{path}}}} p{int(q * 100)}")
                    for q in (0.5, 0.9, 0.99)],
                   "s", min=0, thresholds=thresholds((5, "red")),
                   desc="Quantiles of the O_DSYNC probe writes (histogram)."),
                ts("Probe in-flight age", [t(f"stallwatch_probe_in_flight_seconds{{{S}}}", "{{path}}")],
                   "s", min=0, thresholds=thresholds((5, "red")),
                   desc="A hung write keeps growing here while it hangs."),
                ts("Probe failures",
                   [t(rate("stallwatch_probe_failures_total", S), "{{path}} {{reason}}")], "short", min=0),
                ts("Time since the last successful probe write",
                   [t(f"time() - stallwatch_probe_last_success_timestamp_seconds{{{S}}}", "{{path}}")],
                   "s", min=0),
            ],
        ),
        (
            "Disks",
            [
                ts("Utilisation", [t(rate("stallwatch_disk_io_time_seconds_total", S), "{{device}}")],
                   "percentunit", min=0),
                ts("Average latency per I/O",
                   [t(f'{rate("stallwatch_disk_read_time_seconds_total", S)} / '
                      f'{rate("stallwatch_disk_reads_completed_total", S)}', "{{device}} read"),
                    t(f'{rate("stallwatch_disk_write_time_seconds_total", S)} / '
                      f'{rate("stallwatch_disk_writes_completed_total", S)}', "{{device}} write")],
                   "s", min=0),
                ts("Average queue depth",
                   [t(rate("stallwatch_disk_io_time_weighted_seconds_total", S), "{{device}}")],
                   "short", min=0),
                ts("IOPS",
                   [t(rate("stallwatch_disk_reads_completed_total", S), "{{device}} read"),
                    t(rate("stallwatch_disk_writes_completed_total", S), "{{device}} write")],
                   "iops", min=0),
                ts("Throughput",
                   [t(rate("stallwatch_disk_read_bytes_total", S), "{{device}} read"),
                    t(rate("stallwatch_disk_written_bytes_total", S), "{{device}} write")],
                   "Bps", min=0),
                ts("I/Os in flight", [t(f"stallwatch_disk_io_in_progress{{{S}}}", "{{device}}")],
                   "short", min=0),
            ],
        ),
        (
            "EBS burst credits",
            [
                ts("Burst balance: CloudWatch vs local estimate",
                   [t(f"stallwatch_ebs_burst_balance_percent{{{S}}}", "{{volume_id}} CloudWatch"),
                    t(f"stallwatch_ebs_burst_balance_estimate_percent{{{S}}}", "{{volume_id}} estimate")],
                   "percent", min=0, max=100, w=12),
                ts("Time until the credits run out",
                   [t(f"stallwatch_ebs_burst_seconds_to_empty{{{S}}} < +Inf", "{{volume_id}}")],
                   "s", min=0, w=12, thresholds=thresholds((1800, "green")),
                   desc="Only draining volumes are shown (+Inf = not draining)."),
            ],
        ),
        (
            "The agent itself",
            [
                ts("Stuck sources", [t(f"stallwatch_source_stuck{{{S}}}", "{{source}}")], "short",
                   min=0, desc="1 while a read is outstanding past its timeout (a file on a hung disk)."),
                ts("Snapshot age", [t(f"stallwatch_snapshot_age_seconds{{{S}}}", "{{source}}")], "s", min=0),
                ts("Source errors", [t(rate("stallwatch_source_errors_total", S), "{{source}} {{kind}}")],
                   "short", min=0),
            ],
        ),
    ]
    return dashboard(
        "stallwatch-node",
        "stallwatch / Node stall overview",
        "Is this node stalled on I/O right now, who is stuck, and why: PSI, threads in D, "
        "writeback, the sync-write probe, disks and EBS burst credits.",
        ["node"],
        node_vars(),
        rows,
    )


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


def containers():
    N = NODE
    C = f'{NODE}, name=~"$name", container_id=~"$container"'
    L = "{{name}} {{container_id}}"
    base = "stallwatch_container_cpu_usage_seconds_total"
    variables = node_vars() + [
        var_query("name", "Name", f'label_values({base}{{{N}}}, name)',
                  multi=True, include_all=True, all_value=".*"),
        var_query("container", "Container id",
                  f'label_values({base}{{{N}, name=~"$name"}}, container_id)',
                  multi=True, include_all=True, all_value=".*"),
    ]
    rows = [
        (
            "Overview",
            [
                stat("Containers", [t(f"sum by (runtime) (stallwatch_containers{{{N}}})", "{{runtime}}")],
                     "short", w=6),
                stat("Threads in D in containers",
                     [t(f"sum(stallwatch_container_dstate_threads{{{C}}})")], "short", w=6,
                     thresholds=thresholds((1, "orange"), (10, "red"))),
                ts("Starts and stops per minute",
                   [t(f'{rate("stallwatch_container_starts_total", N)} * 60', "starts"),
                    t(f'{rate("stallwatch_container_stops_total", N)} * 60', "stops")],
                   "short", min=0, w=6, h=4),
                stat("Containers not read (over the cap)",
                     [t(f"stallwatch_containers_dropped{{{N}}}")], "short", w=6,
                     thresholds=thresholds((1, "red"))),
            ],
        ),
        (
            "CPU",
            [
                ts("CPU usage (cores)", [t(rate("stallwatch_container_cpu_usage_seconds_total", C), L)],
                   "short", min=0),
                ts("CPU user and system (cores)",
                   [t(rate("stallwatch_container_cpu_user_seconds_total", C), f"{L} user"),
                    t(rate("stallwatch_container_cpu_system_seconds_total", C), f"{L} system")],
                   "short", min=0),
                ts("CPU throttling",
                   [t(rate("stallwatch_container_cpu_throttled_seconds_total", C), f"{L} throttled s/s"),
                    t(f'{rate("stallwatch_container_cpu_throttled_periods_total", C)} / '
                      f'{rate("stallwatch_container_cpu_periods_total", C)}', f"{L} share of periods")],
                   "short", min=0),
            ],
        ),
        (
            "Memory",
            [
                ts("Memory usage and limit",
                   [t(f"stallwatch_container_memory_usage_bytes{{{C}}}", f"{L} usage"),
                    t(f"stallwatch_container_memory_limit_bytes{{{C}}}", f"{L} limit"),
                    t(f"stallwatch_container_memory_rss_bytes{{{C}}}", f"{L} rss"),
                    t(f"stallwatch_container_memory_cache_bytes{{{C}}}", f"{L} cache")],
                   "bytes", min=0),
                ts("Dirty and writeback memory",
                   [t(f"stallwatch_container_memory_dirty_bytes{{{C}}}", f"{L} dirty"),
                    t(f"stallwatch_container_memory_writeback_bytes{{{C}}}", f"{L} writeback")],
                   "bytes", min=0),
                ts("Major faults and OOM kills",
                   [t(rate("stallwatch_container_memory_major_faults_total", C), f"{L} major faults/s"),
                    t(f'increase(stallwatch_container_oom_kills_total{{{C}}}[$__rate_interval])',
                      f"{L} OOM kills")],
                   "short", min=0),
            ],
        ),
        (
            "Block I/O",
            [
                ts("I/O throughput per device",
                   [t(rate("stallwatch_container_io_read_bytes_total", C), f"{L} {{{{device}}}} read"),
                    t(rate("stallwatch_container_io_written_bytes_total", C), f"{L} {{{{device}}}} write")],
                   "Bps", min=0, w=12),
                ts("IOPS per device",
                   [t(rate("stallwatch_container_io_reads_total", C), f"{L} {{{{device}}}} read"),
                    t(rate("stallwatch_container_io_writes_total", C), f"{L} {{{{device}}}} write")],
                   "iops", min=0, w=12),
            ],
        ),
        (
            "Pressure and threads in D",
            [
                ts("Stall time share (PSI)",
                   [t(rate("stallwatch_container_pressure_stall_seconds_total", C),
                      f"{L} {{{{resource}}}} {{{{kind}}}}")],
                   "percentunit", min=0, desc="cgroup v2 PSI (the unified directory on hybrid hosts)."),
                ts("PSI avg10",
                   [t(f'stallwatch_container_pressure_avg10_ratio{{{C}, resource="io"}}',
                      f"{L} io {{{{kind}}}}")],
                   "percentunit", min=0),
                ts("Threads in D", [t(f"stallwatch_container_dstate_threads{{{C}}}", L)], "short", min=0),
                ts("Pids", [t(f"stallwatch_container_pids{{{C}}}", L)], "short", min=0),
            ],
        ),
        (
            "Network",
            [
                ts("Network throughput",
                   [t(rate("stallwatch_container_network_receive_bytes_total", C), f"{L} {{{{interface}}}} rx"),
                    t(rate("stallwatch_container_network_transmit_bytes_total", C), f"{L} {{{{interface}}}} tx")],
                   "Bps", min=0),
                ts("Network packets",
                   [t(rate("stallwatch_container_network_receive_packets_total", C), f"{L} {{{{interface}}}} rx"),
                    t(rate("stallwatch_container_network_transmit_packets_total", C), f"{L} {{{{interface}}}} tx")],
                   "pps", min=0),
                ts("Network drops and errors",
                   [t(rate("stallwatch_container_network_receive_drops_total", C), f"{L} {{{{interface}}}} rx drops"),
                    t(rate("stallwatch_container_network_transmit_drops_total", C), f"{L} {{{{interface}}}} tx drops"),
                    t(rate("stallwatch_container_network_receive_errors_total", C), f"{L} {{{{interface}}}} rx errors"),
                    t(rate("stallwatch_container_network_transmit_errors_total", C), f"{L} {{{{interface}}}} tx errors")],
                   "pps", min=0),
            ],
        ),
    ]
    return dashboard(
        "stallwatch-containers",
        "stallwatch / Containers",
        "Per-container CPU, throttling, memory (dirty and writeback too), block I/O per device, "
        "PSI, threads in D and network, from the cgroup tree.",
        ["containers"],
        variables,
        rows,
    )


DASHBOARDS = {
    "stallwatch-node.json": overview,
    "stallwatch-containers.json": containers,
    "stallwatch-ebs.json": ebs.ebs,
    "stallwatch-fleet.json": fleet.fleet,
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        text = json.dumps(build(), indent=2, sort_keys=False) + "\n"
        path = os.path.join(here, name)
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        print("stale (run python3 dashboards/generate.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
