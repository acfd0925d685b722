"""The EBS dashboard (stallwatch-ebs.json): burst credits, headroom, status and checks per volume.

Built by generate.py from the shared blocks in panels.py (docs/metrics.md, section EBS, says what
each series means).
"""

from panels import NODE, Panel, dashboard, node_vars, rate, stat, t, thresholds, ts, var_query


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
