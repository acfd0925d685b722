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

import fleet
from panels import NODE, Panel, dashboard, node_vars, rate, stat, t, thresholds, ts, var_query


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


# --------------------------------------------------------------------------------------------
# EBS burst credits
# --------------------------------------------------------------------------------------------


def ebs():
    N = NODE
    V = f'{NODE}, volume_id=~"$volume"'
    variables = node_vars() + [
        var_query("volume", "Volume", f"label_values(stallwatch_ebs_volume_info{{{N}}}, volume_id)",
                  multi=True, include_all=True, all_value=".*"),
    ]
    # Disk counters carry `device`; stallwatch_ebs_volume_info maps the volume to its device
    # on this node (NVMe serial, Xen attachment name or a [[cloud.volume]] override).
    def per_volume(expr):
        return (f"sum by (volume_id) (({expr}) * on (instance, device) group_left (volume_id) "
                f"stallwatch_ebs_volume_info{{{V}}})")

    rows = [
        (
            "Volumes",
            [
                stat("Cloud polling enabled", [t(f"stallwatch_cloud_enabled{{{N}}}")], "short",
                     w=4, thresholds={"mode": "absolute", "steps": [
                         {"color": "red", "value": None}, {"color": "green", "value": 1}]}),
                Panel("table", "Volumes",
                      [t(f"stallwatch_ebs_volume_info{{{V}}}", instant=True, table=True),
                       t(f"stallwatch_ebs_volume_size_bytes{{{V}}}", instant=True, table=True),
                       t(f"stallwatch_ebs_volume_baseline_iops{{{V}}}", instant=True, table=True),
                       t(f"stallwatch_ebs_volume_provisioned_iops{{{V}}}", instant=True, table=True)],
                      "short", w=20, h=6),
            ],
        ),
        (
            "Credits",
            [
                ts("Burst balance: CloudWatch vs local estimate",
                   [t(f"stallwatch_ebs_burst_balance_percent{{{V}}}", "{{volume_id}} CloudWatch"),
                    t(f"stallwatch_ebs_burst_balance_estimate_percent{{{V}}}", "{{volume_id}} estimate"),
                    t(f"stallwatch_ebs_burst_balance_estimate_low_percent{{{V}}}", "{{volume_id}} lowest possible"),
                    t(f"stallwatch_ebs_burst_balance_estimate_high_percent{{{V}}}", "{{volume_id}} highest possible")],
                   "percent", min=0, max=100, w=12,
                   thresholds={"mode": "absolute", "steps": [
                       {"color": "red", "value": None}, {"color": "green", "value": 20}]},
                   desc="CloudWatch's BurstBalance is per minute and minutes late; the local "
                   "estimate models the bucket from the disk's own I/O every second. Lowest and "
                   "highest: where the bucket can be given the I/O seen, from the first second "
                   "(0 and 100 until something is known; one line once CloudWatch anchored it)."),
                stat("What the estimate rests on",
                     [t(f"stallwatch_ebs_burst_balance_estimate_basis{{{V}}}", "{{volume_id}} {{basis}}",
                        instant=True)],
                     "short", w=12, h=4,
                     desc="cloudwatch: an anchored point; new_volume: created within the hour, full "
                     "less the I/O counted since; restored: the agent's own estimate from before "
                     "a restart in this boot."),
                ts("Time until the credits run out",
                   [t(f"stallwatch_ebs_burst_seconds_to_empty{{{V}}} < +Inf", "{{volume_id}}")],
                   "s", min=0, w=6, thresholds=thresholds((1800, "green")),
                   desc="Only draining volumes are shown (+Inf = not draining)."),
                ts("Age of the CloudWatch value",
                   [t(f"time() - stallwatch_ebs_burst_balance_timestamp_seconds{{{V}}}", "{{volume_id}}")],
                   "s", min=0, w=6),
                ts("IOPS on the volume vs its baseline",
                   [t(per_volume(f'{rate("stallwatch_disk_reads_completed_total", N)} + '
                                 f'{rate("stallwatch_disk_writes_completed_total", N)}'),
                      "{{volume_id}} IOPS"),
                    t(f"stallwatch_ebs_volume_baseline_iops{{{V}}}", "{{volume_id}} baseline"),
                    t(f"stallwatch_ebs_volume_provisioned_iops{{{V}}}", "{{volume_id}} provisioned")],
                   "iops", min=0, w=12),
                ts("Time over the volume's limits (NVMe log page)",
                   [t(rate("stallwatch_ebs_exceeded_iops_seconds_total", V), "{{volume_id}} IOPS"),
                    t(rate("stallwatch_ebs_exceeded_throughput_seconds_total", V), "{{volume_id}} throughput")],
                   "percentunit", min=0, w=6),
                ts("Time over the instance's EBS limits",
                   [t(rate("stallwatch_ec2_ebs_exceeded_iops_seconds_total", N), "IOPS"),
                    t(rate("stallwatch_ec2_ebs_exceeded_throughput_seconds_total", N), "throughput")],
                   "percentunit", min=0, w=6),
                ts("Who spends the credits: container I/O on the volume",
                   [t(f'topk(10, sum by (volume_id, container_id, name) ('
                      f'{rate("stallwatch_container_io_reads_total", V)} + '
                      f'{rate("stallwatch_container_io_writes_total", V)}))',
                      "{{volume_id}} {{name}} {{container_id}}")],
                   "iops", min=0, w=12,
                   desc="Container block I/O carries the volume_id of the device it hit (cgroup "
                   "v1: direct I/O only; buffered writeback is charged to the flusher)."),
                ts("The instance's own EBS burst",
                   [t(f"stallwatch_ec2_ebs_io_balance_percent{{{N}}}", "EBSIOBalance%"),
                    t(f"stallwatch_ec2_ebs_byte_balance_percent{{{N}}}", "EBSByteBalance%")],
                   "percent", min=0, max=100, w=12,
                   thresholds={"mode": "absolute", "steps": [
                       {"color": "red", "value": None}, {"color": "green", "value": 20}]},
                   desc="Smaller instance sizes burst their EBS IOPS and bandwidth: when this "
                   "bucket empties every volume is held to the instance's EBS baseline."),
                ts("I/O timeout of the volume's device",
                   [t(f"stallwatch_disk_io_timeout_seconds{{{N}}} * on (instance, device) group_left (volume_id) "
                      f"stallwatch_ebs_volume_info{{{V}}}", "{{volume_id}} {{device}}")],
                   "s", min=0, w=12,
                   desc="Amazon Linux sets EBS NVMe devices to 4294967295 s: a stalled volume "
                   "never errors, its I/O waits in D."),
                Panel("table", "Block devices",
                      [t(f"stallwatch_disk_info{{{N}}}", instant=True, table=True)],
                      "short", w=12, h=8,
                      desc="Model, serial and (for EBS) volume id of the node's block devices."),
            ],
        ),
        (
            "Headroom (every volume type)",
            [
                ts("IOPS against the limit in force",
                   [t(f"stallwatch_ebs_volume_iops{{{V}}}", "{{volume_id}} IOPS"),
                    t(f"stallwatch_ebs_volume_iops_peak{{{V}}}", "{{volume_id}} peak of the minute"),
                    t(f"stallwatch_ebs_volume_iops_limit{{{V}}}", "{{volume_id}} limit"),
                    t(f"stallwatch_ebs_volume_iops_limit{{{V}}} and on (instance, volume_id) "
                      f'stallwatch_ebs_volume_modification_info{{{V}, state=~"modifying|optimizing"}}',
                      "{{volume_id}} limit, while a modification runs")],
                   "iops", min=0, w=12,
                   desc="Every second from the disk counters, in EBS's units (up to 256 KiB on "
                   "SSD, 1 MiB on HDD). The limit is the one in force now: provisioned (gp3, "
                   "io1, io2), burst or baseline (gp2, st1, sc1); its second line marks the time "
                   "a modification (type, size, IOPS) was under way."),
                ts("Throughput against the limit in force",
                   [t(f"stallwatch_ebs_volume_throughput_bytes_per_second{{{V}}}", "{{volume_id}}"),
                    t(f"stallwatch_ebs_volume_throughput_peak_bytes_per_second{{{V}}}", "{{volume_id}} peak of the minute"),
                    t(f"stallwatch_ebs_volume_throughput_limit_bytes_per_second{{{V}}}", "{{volume_id}} limit")],
                   "Bps", min=0, w=12),
                ts("Headroom: share of the limit left",
                   [t(f"stallwatch_ebs_volume_headroom_ratio{{{V}}}", "{{volume_id}} {{limit}}")],
                   "percentunit", min=0, max=1, w=8,
                   thresholds={"mode": "absolute", "steps": [
                       {"color": "red", "value": None}, {"color": "green", "value": 0.1}]}),
                ts("Time until the limit at the current trend",
                   [t(f"stallwatch_ebs_volume_seconds_to_limit{{{V}}} < +Inf", "{{volume_id}} {{limit}}")],
                   "s", min=0, w=8,
                   desc="Only volumes whose rate is rising (a least-squares slope over the last "
                   "minute, at least twice its standard error) are shown."),
                ts("The instance: its EBS limits and all its volumes summed",
                   [t(f"stallwatch_ec2_ebs_headroom_ratio{{{N}}}", "headroom {{limit}}")],
                   "percentunit", min=0, max=1, w=8,
                   desc="From DescribeInstanceTypes: the maximum, or the baseline once "
                   "EBSIOBalance% / EBSByteBalance% is spent."),
                ts("The instance's EBS IOPS",
                   [t(f"stallwatch_ec2_ebs_iops{{{N}}}", "all volumes"),
                    t(f"stallwatch_ec2_ebs_iops_limit{{{N}}}", "limit in force"),
                    t(f"stallwatch_ec2_ebs_baseline_iops{{{N}}}", "baseline"),
                    t(f"stallwatch_ec2_ebs_maximum_iops{{{N}}}", "maximum")],
                   "iops", min=0, w=12),
                ts("The instance's EBS throughput",
                   [t(f"stallwatch_ec2_ebs_throughput_bytes_per_second{{{N}}}", "all volumes"),
                    t(f"stallwatch_ec2_ebs_throughput_limit_bytes_per_second{{{N}}}", "limit in force"),
                    t(f"stallwatch_ec2_ebs_baseline_throughput_bytes_per_second{{{N}}}", "baseline"),
                    t(f"stallwatch_ec2_ebs_maximum_throughput_bytes_per_second{{{N}}}", "maximum")],
                   "Bps", min=0, w=12),
            ],
        ),
        (
            "Status and changes",
            [
                Panel("table", "Volume status (DescribeVolumeStatus)",
                      [t(f"stallwatch_ebs_volume_status_info{{{V}}}", instant=True, table=True),
                       t(f"stallwatch_ebs_volume_impaired{{{V}}}", instant=True, table=True)],
                      "short", w=12, h=6,
                      desc="impaired, io_enabled failed, io_performance degraded or stalled: "
                      "StallwatchEBSVolumeImpaired."),
                ts("CloudWatch 1-minute checks",
                   [t(f"stallwatch_ebs_volume_check{{{V}}}", "{{volume_id}} {{check}}"),
                    t(f"stallwatch_ec2_ebs_check{{{N}}}", "instance {{check}}")],
                   "short", min=0, max=1, w=12,
                   desc="VolumeStalledIOCheck, VolumeIOPSExceededCheck, "
                   "VolumeThroughputExceededCheck (under InstanceId and VolumeId) and the "
                   "instance's EBS checks: 1 = failed in that minute."),
                ts("Initialization of snapshot-restored volumes",
                   [t(f"stallwatch_ebs_volume_initialization_progress_ratio{{{V}}}", "{{volume_id}}")],
                   "percentunit", min=0, max=1, w=12,
                   desc="Until it is done, first reads stall with full credits."),
                ts("Modifications (type, size, IOPS, throughput) in progress",
                   [t(f"stallwatch_ebs_volume_modification_progress_ratio{{{V}}}", "{{volume_id}}"),
                    t(f"stallwatch_ebs_volume_modification_info{{{V}}}", "{{volume_id}} {{state}} → {{target_volume_type}}")],
                   "percentunit", min=0, max=1, w=12,
                   desc="The model switches bucket and limits at the next describe (the IOPS "
                   "panel marks the time the modification ran)."),
            ],
        ),
        (
            "Cloud requests",
            [
                ts("Requests by outcome",
                   [t(f'sum by (api, outcome) ({rate("stallwatch_cloud_requests_total", N)})',
                      "{{api}} {{outcome}}")],
                   "reqps", min=0),
                ts("Time since the last successful call",
                   [t(f"time() - stallwatch_cloud_last_success_timestamp_seconds{{{N}}}", "{{api}}")],
                   "s", min=0),
                ts("CloudWatch metrics requested and estimated cost",
                   [t(f'{rate("stallwatch_cloud_metrics_requested_total", N)} * 3600', "metrics/hour"),
                    t(f"increase(stallwatch_cloud_estimated_cost_dollars_total{{{N}}}[1d])",
                      "dollars in the last day")],
                   "short", min=0),
            ],
        ),
    ]
    return dashboard(
        "stallwatch-ebs",
        "stallwatch / EBS burst credits and headroom",
        "Per EBS volume: CloudWatch BurstBalance against the agent's local credit model and its "
        "bounds, time until the credits run out, IOPS and throughput against the limits in "
        "force (volume and instance), AWS's status and checks, modifications, and what the "
        "cloud polling costs.",
        ["ebs", "aws"],
        variables,
        rows,
    )


DASHBOARDS = {
    "stallwatch-node.json": overview,
    "stallwatch-containers.json": containers,
    "stallwatch-ebs.json": ebs,
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
