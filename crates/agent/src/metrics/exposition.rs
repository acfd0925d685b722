//! Exposition formats. prometheus-client writes OpenMetrics 1.0 text; Prometheus servers before
//! 2.5, many scrapers (Telegraf, Datadog, `curl | grep`) and promtool's linter speak the classic
//! text format 0.0.4, so `/metrics` serves whichever the `Accept` header prefers. The classic
//! form is derived from the OpenMetrics text we produced ourselves (which we control), not from
//! arbitrary input: drop `# UNIT` and `# EOF`, give counter families their `_total` name and
//! turn `info` families into gauges named `*_info`.

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which format an `Accept` header asks for. OpenMetrics only when explicitly accepted with a
/// higher or equal q-value than text/plain (Prometheus ≥ 2.5 sends it first).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut om: Option<f32> = None;
    let mut text: Option<f32> = None;
    for part in accept.split(',') {
        let mut it = part.split(';');
        let mime = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = match mime.as_str() {
            "application/openmetrics-text" => &mut om,
            "text/plain" => &mut text,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |o: f32| o.max(q)));
    }
    match (om, text) {
        (Some(o), Some(t)) => o > 0.0 && o >= t,
        (Some(o), None) => o > 0.0,
        _ => false,
    }
}

/// prometheus-client writes an infinite sample value as `inf`, which OpenMetrics does not allow
/// (it wants `+Inf`/`-Inf`; the classic format accepts those too). Values are the last token of
/// a sample line and label values cannot hold a raw newline, so ` inf\n` only ever matches a
/// value. The pass is skipped unless one is present (`ebs_burst_seconds_to_empty` is +Inf while
/// a volume is not draining).
pub fn fix_infinities(body: String) -> String {
    if !body.contains(" inf\n") && !body.contains(" -inf\n") {
        return body;
    }
    body.replace(" inf\n", " +Inf\n")
        .replace(" -inf\n", " -Inf\n")
}

/// Rewrites OpenMetrics text produced by prometheus-client into the classic text format.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<(&str, &str)> = None; // (name, help text)
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (new_name, new_ty) = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gaugehistogram" => (name.to_string(), "histogram"),
                "stateset" | "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some((hname, help)) = pending_help.take() {
                if hname == name {
                    out.push_str("# HELP ");
                    out.push_str(&new_name);
                    out.push(' ');
                    // OpenMetrics escapes `"` in HELP; the classic format does not.
                    out.push_str(&help.replace("\\\"", "\""));
                    out.push('\n');
                }
            }
            out.push_str("# TYPE ");
            out.push_str(&new_name);
            out.push(' ');
            out.push_str(new_ty);
            out.push('\n');
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" || line.is_empty() {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_values_are_spelled_as_openmetrics_wants() {
        let om = "a 1.0\nb{x=\"inf\"} inf\nc_info 1\nd -inf\n# EOF\n";
        assert_eq!(
            fix_infinities(om.to_string()),
            "a 1.0\nb{x=\"inf\"} +Inf\nc_info 1\nd -Inf\n# EOF\n"
        );
        let plain = "stallwatch_info 1\n# EOF\n".to_string();
        assert_eq!(fix_infinities(plain.clone()), plain);
    }

    #[test]
    fn accept_negotiation() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prom)));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0.2, text/plain"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
    }

    #[test]
    fn counters_and_info_renamed() {
        let om = "# HELP sw_disk_read Bytes read.\n# TYPE sw_disk_read counter\n# UNIT sw_disk_read bytes\n\
                  sw_disk_read_total{device=\"vda\"} 1.0\n# HELP sw_build Build.\n# TYPE sw_build info\n\
                  sw_build_info{version=\"1\"} 1\n# HELP sw_load1 Load.\n# TYPE sw_load1 gauge\nsw_load1 0.5\n# EOF\n";
        let t = openmetrics_to_text(om);
        assert_eq!(
            t,
            "# HELP sw_disk_read_total Bytes read.\n# TYPE sw_disk_read_total counter\nsw_disk_read_total{device=\"vda\"} 1.0\n\
             # HELP sw_build_info Build.\n# TYPE sw_build_info gauge\nsw_build_info{version=\"1\"} 1\n\
             # HELP sw_load1 Load.\n# TYPE sw_load1 gauge\nsw_load1 0.5\n"
        );
    }
}
