"""The building blocks every stallwatch dashboard shares: datasource and variables, targets,
thresholds, panel kinds, the computed grid layout and the dashboard envelope. Imported by
generate.py (the node, containers and EBS dashboards) and fleet.py; imports neither.
"""

SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
NODE = 'job=~"$job", instance=~"$instance"'


def var_datasource():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
        "skipUrlSync": False,
    }


def var_query(name, label, query, multi=False, include_all=False, all_value=None):
    v = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "hide": 0,
        "sort": 1,
        "regex": "",
        "multi": multi,
        "includeAll": include_all,
        "options": [],
        "skipUrlSync": False,
    }
    if all_value is not None:
        v["allValue"] = all_value
    return v


def node_vars():
    return [
        var_datasource(),
        var_query("job", "Job", "label_values(stallwatch_build_info, job)"),
        var_query(
            "instance", "Node", 'label_values(stallwatch_build_info{job=~"$job"}, instance)'
        ),
    ]


def t(expr, legend="", instant=False, table=False):
    """A Prometheus target; refIds are assigned by the panel."""
    d = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "range": not instant}
    if instant:
        d["instant"] = True
    if table:
        d["format"] = "table"
    return d


def thresholds(*steps):
    """steps: (value, colour) after the base green."""
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}]
        + [{"color": c, "value": v} for v, c in steps],
    }


class Panel:
    def __init__(self, kind, title, targets, unit="short", w=8, h=8, desc="", **kw):
        self.kind = kind
        self.title = title
        self.targets = targets
        self.unit = unit
        self.w = w
        self.h = h
        self.desc = desc
        self.kw = kw

    def render(self, pid, x, y):
        defaults = {"unit": self.unit}
        for k in ("min", "max", "decimals", "links"):
            if k in self.kw:
                defaults[k] = self.kw[k]
        defaults["thresholds"] = self.kw.get("thresholds") or thresholds()
        if self.kind == "timeseries":
            defaults["color"] = {"mode": "palette-classic"}
            defaults["custom"] = {
                "drawStyle": self.kw.get("draw", "line"),
                "lineWidth": 1,
                "fillOpacity": self.kw.get("fill", 10),
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"mode": "normal" if self.kw.get("stack") else "none", "group": "A"},
                "thresholdsStyle": {"mode": "line" if self.kw.get("thresholds") else "off"},
            }
            options = {
                "legend": {
                    "displayMode": "table",
                    "placement": "bottom",
                    "showLegend": True,
                    "calcs": ["lastNotNull", "max"],
                },
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        elif self.kind == "stat":
            defaults["color"] = {"mode": "thresholds"}
            options = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "background",
                "graphMode": "area",
                "justifyMode": "auto",
                "orientation": "auto",
                "textMode": "auto",
            }
        elif self.kind == "table":
            options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
        else:
            raise ValueError(self.kind)
        targets = []
        for i, tg in enumerate(self.targets):
            tg = dict(tg)
            tg["refId"] = chr(ord("A") + i)
            targets.append(tg)
        p = {
            "id": pid,
            "type": self.kind,
            "title": self.title,
            "description": self.desc,
            "datasource": DS,
            "gridPos": {"h": self.h, "w": self.w, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": self.kw.get("overrides", [])},
            "options": options,
            "targets": targets,
        }
        if self.kind == "table":
            p["transformations"] = self.kw.get("transformations") or [
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ]
        return p


def ts(title, targets, unit="short", **kw):
    return Panel("timeseries", title, targets, unit, **kw)


def stat(title, targets, unit="short", **kw):
    kw.setdefault("w", 4)
    kw.setdefault("h", 4)
    return Panel("stat", title, targets, unit, **kw)


def layout(rows):
    """rows: [(row title, [Panel...])] -> Grafana panels with ids and grid positions."""
    out, pid, y = [], 1, 0
    for title, panels in rows:
        out.append(
            {
                "id": pid,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        x, line_h = 0, 0
        for p in panels:
            if x + p.w > 24:
                x, y, line_h = 0, y + line_h, 0
            out.append(p.render(pid, x, y))
            pid += 1
            x += p.w
            line_h = max(line_h, p.h)
        y += line_h
    return out


def dashboard(uid, title, desc, tags, variables, rows):
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["stallwatch"] + tags,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "version": 1,
        "annotations": {"list": []},
        "links": [
            {
                "title": "stallwatch",
                "type": "dashboards",
                "tags": ["stallwatch"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": variables},
        "panels": layout(rows),
    }


def rate(metric, sel, extra=""):
    return f"rate({metric}{{{sel}{extra}}}[$__rate_interval])"


# --------------------------------------------------------------------------------------------
# Node stall overview
# --------------------------------------------------------------------------------------------
