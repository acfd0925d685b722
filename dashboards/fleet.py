"""The fleet dashboard (stallwatch-fleet.json): many nodes through one store (docs/fleet.md).

Built by generate.py from the shared blocks in panels.py. Every query reads the fleet recording rules of
deploy/prometheus (group stallwatch.fleet) or raw series joined to `stallwatch_node_info`, so
it needs those rules evaluated where the series are (vmalert, Mimir ruler, Thanos rule, or one
Prometheus that scrapes every node).

Why a node is stalled comes from `instance:stallwatch_stall_cause:active{cause}` only: the
agent's verdict (`stallwatch_verdict{cause!="none"}`), recorded by the fleet rules.

`cluster` is the scraper's external label, zone and instance type are the labels of
`stallwatch_node_info`; each may be absent (one cluster; off EC2), and "All" matches absent.
"""

import panels as g

# Filter on the fleet aggregates and on stallwatch_node_info.
F = 'cluster=~"$cluster", availability_zone=~"$zone", instance_type=~"$instance_type"'
NODE_KEY = "cluster, job, instance"
INFO_LABELS = "availability_zone, instance_type, instance_id"

NODE_URL = ("/d/stallwatch-node/stallwatch-node-stall-overview?var-datasource=${datasource}"
            "&var-job=${__data.fields.job}&var-instance=${__data.fields.instance}&${__url_time_range}")
EBS_URL = ("/d/stallwatch-ebs/stallwatch-ebs-burst-credits?var-datasource=${datasource}"
           "&var-job=${__data.fields.job}&var-instance=${__data.fields.instance}"
           "&var-volume=${__data.fields.volume_id}&${__url_time_range}")
SERIES_NODE_URL = ("/d/stallwatch-node/stallwatch-node-stall-overview?var-datasource=${datasource}"
                   "&var-job=${__field.labels.job}&var-instance=${__field.labels.instance}"
                   "&${__url_time_range}")


def join(expr, labels=""):
    """`expr` per node, filtered by the dashboard's variables, with node_info's `labels`."""
    return (f"({expr}) * on ({NODE_KEY}) group_left ({labels}) "
            f"stallwatch_node_info{{{F}}}")


def only(expr, rows):
    """`expr` for the nodes (or volumes) that `rows` returns."""
    return f"({expr}) and on ({NODE_KEY}) ({rows})"


def link(title, url):
    return {"title": title, "url": url, "targetBlank": False}


def column_link(column, title, url):
    return {"matcher": {"id": "byName", "options": column},
            "properties": [{"id": "links", "value": [link(title, url)]}]}


def column_unit(column, unit):
    return {"matcher": {"id": "byName", "options": column},
            "properties": [{"id": "unit", "value": unit}]}


def table(title, targets, columns, w=24, h=8, desc="", links=(), units=()):
    """An instant table: one frame per target merged on their common label columns;
    `columns` renames each target's value column (in target order)."""
    renames = {f"Value #{chr(ord('A') + i)}": name for i, name in enumerate(columns)}
    transformations = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {
            "excludeByName": {"Time": True, "__name__": True},
            "renameByName": renames,
        }},
    ]
    overrides = [column_link(*lk) for lk in links] + [
        column_unit(renames.get(c, c), u) for c, u in units]
    return g.Panel("table", title, [g.t(e, instant=True, table=True) for e in targets], "short",
                   w=w, h=h, desc=desc, transformations=transformations, overrides=overrides)


def variables():
    q = "stallwatch_node_info"
    return [
        g.var_datasource(),
        g.var_query("cluster", "Cluster", f"label_values({q}, cluster)",
                    multi=True, include_all=True, all_value=".*"),
        g.var_query("zone", "Zone", f'label_values({q}{{cluster=~"$cluster"}}, availability_zone)',
                    multi=True, include_all=True, all_value=".*"),
        g.var_query("instance_type", "Instance type",
                    f'label_values({q}{{cluster=~"$cluster", availability_zone=~"$zone"}}, instance_type)',
                    multi=True, include_all=True, all_value=".*"),
    ]


def fleet():
    stalled = "instance:stallwatch_stalled:max == 1"
    cause = "instance:stallwatch_stall_cause:active"
    node_links = [("instance", "Node dashboard", NODE_URL)]
    by_node = [link("Node dashboard: ${__field.labels.instance}", SERIES_NODE_URL)]
    most_stalled = f"topk(20, {join('instance:stallwatch_stalled_seconds:1d', INFO_LABELS)})"
    lowest = f"bottomk(20, {join('volume:stallwatch_ebs_burst_balance:percent', INFO_LABELS)})"
    vol_key = f"{NODE_KEY}, volume_id"
    rows = [
        (
            "Fleet now",
            [
                g.stat("Nodes", [g.t(f"sum(cluster_zone_type:stallwatch_nodes:count{{{F}}})")], "short",
                       desc="Nodes whose stallwatch_node_info is in the store."),
                g.stat("Nodes stalled now",
                       [g.t(f"sum(cluster_zone_type:stallwatch_nodes_stalled:sum{{{F}}})")], "short",
                       thresholds=g.thresholds((1, "orange"), (5, "red")),
                       desc="Nodes with any cause active (instance:stallwatch_stalled:max)."),
                g.stat("Share of nodes stalled",
                       [g.t(f"sum(cluster_zone_type:stallwatch_nodes_stalled:sum{{{F}}}) / "
                            f"sum(cluster_zone_type:stallwatch_nodes:count{{{F}}})")],
                       "percentunit", thresholds=g.thresholds((0.01, "orange"), (0.05, "red"))),
                g.stat("Stalled nodes by cause",
                       [g.t(f"sum by (cause) (cluster_zone_type_cause:stallwatch_nodes_stalled:sum{{{F}}})",
                            "{{cause}}")],
                       "short", w=12, thresholds=g.thresholds((1, "orange")),
                       desc="dstate: a thread in D past 30 s; io_pressure: PSI io full avg10 over 10 %; "
                       "probe_hung: a sync write in flight past 5 s; ebs_credits: a volume's burst "
                       "balance under 1 % (the alerts' thresholds, deploy/prometheus/params.yml)."),
            ],
        ),
        (
            "Which nodes are stalled now, and why",
            [
                table("Stalled nodes now", [
                    join(f"{cause} == 1", INFO_LABELS),
                    only("sum without (group) (stallwatch_dstate_threads)", stalled),
                    only("max without (group) (stallwatch_dstate_longest_seconds)", stalled),
                    only('max without (resource, kind) (stallwatch_pressure_avg10_ratio{resource="io", kind="full"})',
                         stalled),
                    only("stallwatch_procs_blocked", stalled),
                    only("max without (path) (stallwatch_probe_in_flight_seconds)", stalled),
                    only("min without (volume_id) (volume:stallwatch_ebs_burst_balance:percent)", stalled),
                ], ["active", "threads in D", "longest D", "io full avg10", "blocked tasks",
                    "probe in flight", "lowest burst balance %"],
                    links=node_links,
                    units=[("longest D", "s"), ("io full avg10", "percentunit"),
                           ("probe in flight", "s"), ("lowest burst balance %", "percent")],
                    desc="One row per node and active cause; click a node for its dashboard."),
                g.ts("Stalled nodes by cause",
                     [g.t(f"sum by (cause) (cluster_zone_type_cause:stallwatch_nodes_stalled:sum{{{F}}})",
                          "{{cause}}")],
                     "short", min=0, w=12, stack=True, fill=40),
                g.ts("Stalled nodes by cluster, zone and instance type",
                     [g.t(f"sum by (cluster, availability_zone, instance_type) "
                          f"(cluster_zone_type:stallwatch_nodes_stalled:sum{{{F}}})",
                          "{{cluster}} {{availability_zone}} {{instance_type}}")],
                     "short", min=0, w=12, stack=True, fill=40),
            ],
        ),
        (
            "Over the last day",
            [
                table("Most stalled nodes, last 24 h", [
                    most_stalled,
                    only("instance:stallwatch_pressure_io_full_seconds:1d", most_stalled),
                    only("instance:stallwatch_dstate_thread_seconds:1d", most_stalled),
                ], ["stalled", "I/O-full", "D thread-seconds"], w=12, h=9, links=node_links,
                    units=[("stalled", "s"), ("I/O-full", "s"), ("D thread-seconds", "s")],
                    desc="Seconds stalled (any cause, to the minute), seconds every task waited "
                    "for I/O (PSI io full), and D thread-seconds, over the last 24 h."),
                g.ts("Stalled seconds per node over the trailing day (top 10)",
                     [g.t(f"topk(10, {join('instance:stallwatch_stalled_seconds:1d')})", "{{instance}}")],
                     "s", min=0, w=12, h=9, links=by_node),
                g.ts("I/O-full seconds per node over the trailing day, by zone",
                     [g.t(f"sum by (availability_zone) "
                          f"({join('instance:stallwatch_pressure_io_full_seconds:1d', 'availability_zone')})",
                          "{{availability_zone}}")],
                     "s", min=0, w=12),
                g.ts("Share of time every task waited for I/O (PSI io full), mean by instance type",
                     [g.t(f"avg by (instance_type) "
                          f"({join('instance:stallwatch_pressure_io_full:ratio', 'instance_type')})",
                          "{{instance_type}}")],
                     "percentunit", min=0, w=12),
            ],
        ),
        (
            "EBS volumes closest to empty",
            [
                table("Lowest burst balances in the fleet", [
                    lowest,
                    f"stallwatch_ebs_burst_seconds_to_empty and on ({vol_key}) ({lowest})",
                    f"stallwatch_ebs_volume_size_bytes and on ({vol_key}) ({lowest})",
                ], ["balance %", "time to empty", "size"], w=16, h=9,
                    links=node_links + [("volume_id", "EBS dashboard", EBS_URL)],
                    units=[("balance %", "percent"), ("time to empty", "s"), ("size", "bytes")],
                    desc="The local estimate where the agent has one, else CloudWatch's "
                    "BurstBalance (volume:stallwatch_ebs_burst_balance:percent). Time to empty is "
                    "+Inf while a volume is not draining."),
                g.stat("Volumes under 20 %",
                       [g.t(f"count({join('volume:stallwatch_ebs_burst_balance:percent < 20')}) or vector(0)")],
                       "short", w=8, h=9, thresholds=g.thresholds((1, "orange"), (10, "red"))),
                g.ts("Lowest burst balance by zone",
                     [g.t(f"min by (availability_zone) "
                          f"({join('volume:stallwatch_ebs_burst_balance:percent', 'availability_zone')})",
                          "{{availability_zone}}")],
                     "percent", min=0, max=100, w=24,
                     thresholds={"mode": "absolute", "steps": [
                         {"color": "red", "value": None}, {"color": "green", "value": 20}]}),
            ],
        ),
        (
            "D-state hot spots across nodes",
            [
                g.ts("Average threads in D by group, fleet (top 10)",
                     [g.t(f"topk(10, sum by (group) "
                          f"(cluster_zone_type_group:stallwatch_dstate_threads:rate5m{{{F}}}))", "{{group}}")],
                     "short", min=0, w=12, stack=True, fill=40,
                     desc="D thread-seconds per second, summed over nodes. `other` folds each "
                     "node's groups beyond its top 20, so it differs per node."),
                g.ts("Nodes where the group was in D (top 10)",
                     [g.t(f"topk(10, sum by (group) "
                          f"(cluster_zone_type_group:stallwatch_dstate_nodes:count{{{F}}}))", "{{group}}")],
                     "short", min=0, w=12),
                table("Hot spots by cluster, zone and instance type", [
                    f"sum by (cluster, availability_zone, instance_type, group) "
                    f"(cluster_zone_type_group:stallwatch_dstate_threads:rate5m{{{F}}}) > 0",
                    f"sum by (cluster, availability_zone, instance_type, group) "
                    f"(cluster_zone_type_group:stallwatch_dstate_nodes:count{{{F}}})",
                ], ["threads in D (avg)", "nodes"], w=12, h=9),
                table("Nodes with the most threads in D", [
                    f"topk(20, {join('instance:stallwatch_dstate_threads:rate5m', INFO_LABELS)})",
                ], ["threads in D (avg, 5m)"], w=12, h=9, links=node_links),
            ],
        ),
        (
            "Fleet by cluster, zone and instance type",
            [
                table("Nodes and stalled nodes", [
                    f"cluster_zone_type:stallwatch_nodes:count{{{F}}}",
                    f"cluster_zone_type:stallwatch_nodes_stalled:sum{{{F}}}",
                ], ["nodes", "stalled now"], w=12, h=8),
                g.ts("Stalled share by zone",
                     [g.t(f"sum by (availability_zone) (cluster_zone_type:stallwatch_nodes_stalled:sum{{{F}}}) / "
                          f"sum by (availability_zone) (cluster_zone_type:stallwatch_nodes:count{{{F}}})",
                          "{{availability_zone}}")],
                     "percentunit", min=0, max=1, w=12, h=8),
            ],
        ),
    ]
    return g.dashboard(
        "stallwatch-fleet",
        "stallwatch / Fleet",
        "Many nodes through remote_write: which nodes are stalled now and why, stall time per "
        "node over the last day, the EBS volumes closest to empty and D-state hot spots, by "
        "cluster, zone and instance type. Needs the fleet recording rules (deploy/prometheus).",
        ["fleet"],
        variables(),
        rows,
    )
