//! The text views of `why` and `incidents`, from the API's JSON (`docs/api.md`). Pure and
//! lenient: a field the agent does not send is shown as `–`, an unknown one is ignored, so an
//! older or newer agent still prints. Names of processes, groups and containers are
//! attacker-controlled: control characters are escaped so they cannot drive the terminal.

use std::fmt::Write as _;

use serde_json::Value;

/// How many D threads `why` lists (the API sends up to 50; `--json` has them all).
const WHY_THREADS: usize = 15;

/// `s` with control characters escaped (`\u{1b}`), safe to print to a terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => clean(s),
        Value::Null => "–".into(),
        other => clean(&other.to_string()),
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn f64_of(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn trim_num(x: f64) -> String {
    let digits = if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{x:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A duration in seconds for people: `350 ms`, `4 s`, `12.5 min`, `3.2 h`.
pub fn seconds(x: f64) -> String {
    if x < 1.0 {
        format!("{} ms", trim_num(x * 1000.0))
    } else if x < 120.0 {
        format!("{} s", trim_num(x))
    } else if x < 7200.0 {
        format!("{:.1} min", x / 60.0)
    } else {
        format!("{:.1} h", x / 3600.0)
    }
}

fn bytes(mut x: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut i = 0;
    while x.abs() >= 1024.0 && i < units.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{x:.0} B")
    } else {
        format!("{} {}", trim_num(x), units[i])
    }
}

/// A value in the unit the API names (`ratio`, `bytes`, `seconds`, `1/s`, …).
pub fn value(v: &Value, unit: &str) -> String {
    let Some(x) = f64_of(v) else {
        return text(v);
    };
    match unit {
        "ratio" => format!("{}%", trim_num(x * 100.0)),
        "percent" => format!("{}%", trim_num(x)),
        "bytes" => bytes(x),
        "bytes/s" | "B/s" => format!("{}/s", bytes(x)),
        "seconds" | "s" => seconds(x),
        "" | "count" => trim_num(x),
        u => format!("{} {}", trim_num(x), clean(u)),
    }
}

/// The unit of a timeline series, from its name.
fn series_unit(key: &str) -> &'static str {
    if key.starts_with("psi_") || key.contains("utilisation") {
        "ratio"
    } else if key.ends_with("_bytes_per_second") {
        "bytes/s"
    } else if key.ends_with("_bytes") {
        "bytes"
    } else if key.contains("seconds") {
        "seconds"
    } else if key.starts_with("burst_balance") {
        "percent"
    } else {
        ""
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn columns(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = indent.to_string();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn since(v: &Value) -> String {
    let at = v["since"].as_str().map(clean);
    let for_ = f64_of(&v["since_seconds"]).map(seconds);
    match (at, for_) {
        (Some(a), Some(f)) => format!("since {a} ({f})"),
        (Some(a), None) => format!("since {a}"),
        (None, Some(f)) => format!("for {f}"),
        (None, None) => String::new(),
    }
}

fn io_word(v: &Value) -> &'static str {
    if v["io"].as_bool() == Some(true) {
        "I/O"
    } else {
        "not I/O"
    }
}

fn who(out: &mut String, w: &Value) {
    let devices: Vec<String> = arr(&w["devices"])
        .iter()
        .map(|d| match d["volume_id"].as_str() {
            Some(vol) => format!("{} ({})", text(&d["name"]), clean(vol)),
            None => text(&d["name"]),
        })
        .collect();
    if !devices.is_empty() {
        let _ = writeln!(out, "    devices: {}", devices.join(", "));
    }
    for c in arr(&w["containers"]) {
        let name = c["name"].as_str().filter(|n| !n.is_empty()).map(clean);
        let id: String = c["id"].as_str().unwrap_or("").chars().take(12).collect();
        let _ = writeln!(
            out,
            "    container {} ({} {}){}",
            name.unwrap_or_else(|| clean(&id)),
            text(&c["runtime"]),
            clean(&id),
            c["d_threads"]
                .as_u64()
                .map(|n| format!(", {n} in D"))
                .unwrap_or_default()
        );
    }
    for g in arr(&w["groups"]) {
        let wchans: Vec<String> = arr(&g["wchans"])
            .iter()
            .map(|x| format!("{} ×{}", text(&x["wchan"]), text(&x["threads"])))
            .collect();
        let _ = writeln!(
            out,
            "    group {}{}{}",
            text(&g["group"]),
            g["d_threads"]
                .as_u64()
                .map(|n| format!(", {n} in D"))
                .unwrap_or_default(),
            if wchans.is_empty() {
                String::new()
            } else {
                format!(", waiting in {}", wchans.join(", "))
            }
        );
    }
}

fn dstate_rows(rows: &[Value], limit: usize) -> Vec<Vec<String>> {
    let mut out = vec![[
        "IN D",
        "PID/TID",
        "THREAD",
        "GROUP",
        "WAITING IN",
        "CONTAINER",
    ]
    .map(String::from)
    .to_vec()];
    for d in rows.iter().take(limit) {
        let container = match &d["container"] {
            Value::Object(c) => c
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(clean)
                .unwrap_or_else(|| {
                    clean(
                        &c.get("id").and_then(Value::as_str).unwrap_or("?")[..]
                            .chars()
                            .take(12)
                            .collect::<String>(),
                    )
                }),
            _ if d["kernel_thread"].as_bool() == Some(true) => "(kernel thread)".into(),
            _ => "–".into(),
        };
        let (pid, tid) = (text(&d["pid"]), text(&d["tid"]));
        out.push(vec![
            f64_of(&d["seconds"])
                .map(seconds)
                .unwrap_or_else(|| "–".into()),
            if pid == tid {
                pid
            } else {
                format!("{pid}/{tid}")
            },
            text(&d["comm"]),
            text(&d["group"]),
            text(&d["wchan"]),
            container,
        ]);
    }
    out
}

/// `stallwatch why`.
pub fn verdict(v: &Value) -> String {
    let mut out = String::new();
    let stalled = v["stalled"].as_bool() == Some(true);
    let summary = text(&v["summary"]);
    if !stalled {
        let _ = writeln!(out, "NOT STALLED. {summary}");
    } else {
        let _ = writeln!(
            out,
            "STALLED ({}) {}: {}",
            io_word(v),
            since(v),
            text(&v["cause"])
        );
        let _ = writeln!(out, "  {summary}");
        if v["io"].as_bool() != Some(true) {
            let _ = writeln!(
                out,
                "  Not I/O: the disks are not what is slow; it is {}.",
                text(&v["cause"])
            );
        }
    }
    for c in arr(&v["causes"]) {
        let _ = writeln!(
            out,
            "\ncause {} ({}, {}, {}): {}",
            text(&c["cause"]),
            io_word(c),
            text(&c["severity"]),
            since(c),
            text(&c["summary"])
        );
        let evidence: Vec<Vec<String>> = arr(&c["evidence"])
            .iter()
            .map(|e| {
                let unit = e["unit"].as_str().unwrap_or("");
                vec![
                    text(&e["signal"]),
                    text(&e["subject"]),
                    value(&e["value"], unit),
                    format!("(threshold {})", value(&e["threshold"], unit)),
                ]
            })
            .collect();
        if !evidence.is_empty() {
            let _ = writeln!(out, "    evidence:");
            columns(&mut out, "      ", &evidence);
        }
        who(&mut out, &c["who"]);
    }
    let threads = arr(&v["dstate"]);
    if !threads.is_empty() {
        let _ = writeln!(out, "\nthreads in D ({}, longest first):", threads.len());
        columns(&mut out, "  ", &dstate_rows(threads, WHY_THREADS));
        if threads.len() > WHY_THREADS {
            let _ = writeln!(
                out,
                "  … and {} more (--json lists them all)",
                threads.len() - WHY_THREADS
            );
        }
    }
    if let Some(id) = v["incident"].as_str() {
        let id = clean(id);
        let _ = writeln!(
            out,
            "\nincident {id} is being recorded: stallwatch incidents {id}"
        );
    }
    out
}

fn duration(i: &Value) -> String {
    let d = f64_of(&i["duration_seconds"])
        .map(seconds)
        .unwrap_or_else(|| "–".into());
    if i["open"].as_bool() == Some(true) {
        format!("{d}, ongoing")
    } else {
        d
    }
}

fn causes_of(i: &Value) -> String {
    let list: Vec<String> = arr(&i["causes"]).iter().map(text).collect();
    if list.is_empty() {
        text(&i["cause"])
    } else {
        list.join(",")
    }
}

/// `stallwatch incidents`.
pub fn incident_list(v: &Value) -> String {
    let list = arr(&v["incidents"]);
    if list.is_empty() {
        return "No incident recorded since the agent started.\n".into();
    }
    let mut rows = vec![["ID", "START", "LASTED", "CAUSES", "SUMMARY"]
        .map(String::from)
        .to_vec()];
    for i in list {
        rows.push(vec![
            text(&i["id"]),
            text(&i["start"]),
            duration(i),
            causes_of(i),
            text(&i["summary"]),
        ]);
    }
    let mut out = String::new();
    columns(&mut out, "", &rows);
    out
}

/// `stallwatch incidents ID`.
pub fn incident(i: &Value) -> String {
    let mut out = String::new();
    let lasted = f64_of(&i["duration_seconds"])
        .map(seconds)
        .unwrap_or_else(|| "–".into());
    let when = if i["open"].as_bool() == Some(true) {
        format!("from {}, ongoing ({lasted} so far)", text(&i["start"]))
    } else {
        format!(
            "from {} to {} ({lasted})",
            text(&i["start"]),
            text(&i["end"])
        )
    };
    let _ = writeln!(out, "incident {}: {} {when}", text(&i["id"]), causes_of(i),);
    let _ = writeln!(out, "  {}", text(&i["summary"]));
    let missing = arr(&i["missing"]);
    if !missing.is_empty() {
        let _ = writeln!(out, "\nmissing from this record:");
        for m in missing {
            let _ = writeln!(out, "  - {}", text(m));
        }
    }
    // One line per change of the active causes, not one per second.
    let mut changes = vec![vec!["AT".to_string(), "CAUSES".into(), "SUMMARY".into()]];
    let mut last = None;
    for v in arr(&i["verdicts"]) {
        let key = causes_of(v);
        if last.as_ref() != Some(&key) {
            let at = f64_of(&v["t_unix"])
                .map(rfc3339)
                .unwrap_or_else(|| "–".into());
            changes.push(vec![at, key.clone(), text(&v["summary"])]);
            last = Some(key);
        }
    }
    if changes.len() > 1 {
        let _ = writeln!(out, "\nverdicts over time:");
        columns(&mut out, "  ", &changes);
    }
    if let Some(peaks) = i["peaks"].as_object().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "\npeaks:");
        let rows: Vec<Vec<String>> = peaks
            .iter()
            .map(|(k, v)| vec![clean(k), value(v, series_unit(k))])
            .collect();
        columns(&mut out, "  ", &rows);
    }
    let threads = arr(&i["dstate"]);
    let _ = writeln!(out, "\nthreads in D ({}):", threads.len());
    if !threads.is_empty() {
        columns(&mut out, "  ", &dstate_rows(threads, usize::MAX));
        for d in threads {
            if let Some(stack) = d["stack"].as_str() {
                let _ = writeln!(
                    out,
                    "\n  kernel stack of {} ({}/{}):",
                    text(&d["comm"]),
                    text(&d["pid"]),
                    text(&d["tid"])
                );
                for l in stack.lines() {
                    let _ = writeln!(out, "    {}", clean(l));
                }
            }
        }
    }
    let table = |out: &mut String, title: &str, rows: &[Value], cols: &[(&str, &str, &str)]| {
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n{title}:");
        let mut t = vec![cols.iter().map(|c| c.0.to_string()).collect::<Vec<_>>()];
        for r in rows {
            t.push(
                cols.iter()
                    .map(|(_, k, unit)| value(&r[*k], unit))
                    .collect(),
            );
        }
        columns(out, "  ", &t);
    };
    table(
        &mut out,
        "containers",
        arr(&i["containers"]),
        &[
            ("NAME", "name", ""),
            ("RUNTIME", "runtime", ""),
            ("READ", "read_bytes_per_second", "bytes/s"),
            ("WRITE", "write_bytes_per_second", "bytes/s"),
            ("IOPS", "iops", ""),
            ("IO PRESSURE", "psi_io_some", "ratio"),
            ("IN D", "d_threads", ""),
        ],
    );
    table(
        &mut out,
        "disks",
        arr(&i["disks"]),
        &[
            ("DISK", "name", ""),
            ("VOLUME", "volume_id", ""),
            ("UTIL", "utilisation", "ratio"),
            ("AWAIT", "await_seconds", "seconds"),
            ("QUEUE", "queue", ""),
            ("IOPS", "iops", ""),
            ("THROUGHPUT", "bytes_per_second", "bytes/s"),
            ("STALLED", "stalled_seconds", "seconds"),
        ],
    );
    table(
        &mut out,
        "EBS",
        arr(&i["ebs"]),
        &[
            ("VOLUME", "volume_id", ""),
            ("TYPE", "type", ""),
            ("BALANCE", "balance_percent", "percent"),
            ("EMPTY IN", "seconds_to_empty", "seconds"),
        ],
    );
    out
}

/// Unix seconds as `2026-12-03T14:00:05Z` (UTC, whole seconds).
fn rfc3339(unix: f64) -> String {
    if !(0.0..=1e11).contains(&unix) {
        return "–".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(unix);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests;
