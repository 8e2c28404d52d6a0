//! Human-readable output: aligned tables and short lines, built from the same JSON the
//! `--json` flag prints, so both always say the same thing.

use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

/// Renders rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                out.push_str(c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn ago(secs: u64) -> String {
    format!(
        "{} ago",
        crate::policy::human(std::time::Duration::from_secs(secs))
    )
}

fn since_unix(t: &Value) -> String {
    match t.as_i64() {
        Some(t) => {
            let now = crate::timefmt::unix(std::time::SystemTime::now());
            ago(u64::try_from(now - t).unwrap_or(0))
        }
        None => "never".into(),
    }
}

/// `in 3m 12s` until a unix time in the future, `due` once passed, `-` without one.
fn until_unix(t: &Value) -> String {
    match t.as_i64() {
        Some(t) => {
            let now = crate::timefmt::unix(std::time::SystemTime::now());
            match u64::try_from(t - now) {
                Ok(secs) if secs > 0 => format!(
                    "in {}",
                    crate::policy::human(std::time::Duration::from_secs(secs))
                ),
                _ => "due".into(),
            }
        }
        None => "-".into(),
    }
}

pub fn status(r: &Value) -> String {
    let mut o = String::new();
    let c = &r["config"];
    let _ = writeln!(
        o,
        "attestgate {} — {} (pid {}, up {})",
        s(&r["version"]),
        s(&r["appliance"]),
        s(&r["pid"]),
        crate::policy::human(std::time::Duration::from_secs(
            r["uptime_secs"].as_u64().unwrap_or(0)
        ))
    );
    let _ = writeln!(
        o,
        "config    {}  generation {}  digest {}  applied {}  {} warning(s)",
        s(&c["path"]),
        s(&c["generation"]),
        s(&c["digest"]),
        since_unix(&c["applied_at"]),
        s(&c["warnings"])
    );
    if let Some(last) = r["last_apply"].as_object() {
        let _ = writeln!(
            o,
            "last apply  {} {}: {}",
            if last.get("ok").and_then(Value::as_bool) == Some(true) {
                "ok"
            } else {
                "REFUSED"
            },
            since_unix(last.get("at").unwrap_or(&Value::Null)),
            last.get("message").map(s).unwrap_or_default()
        );
    }
    let relay = &r["relay"];
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    let _ = writeln!(
        o,
        "relay     {} (HTTP/3 {}; HTTP/2 {})",
        s(&relay["state"]),
        list(&relay["http3_listen"]),
        list(&relay["http2_listen"])
    );
    let _ = writeln!(o, "socket    {}", s(&r["control_socket"]));
    o.push('\n');
    let rows: Vec<Vec<String>> = c["egresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    vec![
                        s(&e["name"]),
                        s(&e["type"]),
                        if e["trusted"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        s(&e["state"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    o.push_str(&table(&["EGRESS", "TYPE", "TRUSTED", "STATE"], &rows));
    o.push('\n');
    let comp = &r["compliance"];
    let rows: Vec<Vec<String>> = comp["sources"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|src| {
                    vec![
                        s(&src["name"]),
                        s(&src["type"]),
                        s(&src["state"]),
                        s(&src["devices"]),
                        since_unix(&src["last_sync"]),
                        s(&src["message"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    o.push_str(&table(
        &["SOURCE", "TYPE", "STATE", "DEVICES", "LAST SYNC", "MESSAGE"],
        &rows,
    ));
    let _ = writeln!(
        o,
        "\ndevices   {} known (data older than {} counts as unknown)",
        s(&comp["devices"]),
        crate::policy::human(std::time::Duration::from_secs(
            comp["max_age_secs"].as_u64().unwrap_or(0)
        ))
    );
    let _ = writeln!(
        o,
        "store     {}",
        comp["store"]
            .as_str()
            .unwrap_or("none (not persisted: see compliance.store_failed)")
    );
    let _ = writeln!(o, "admin     {}", s(&comp["admin"]));
    let _ = writeln!(o, "policies  {}", list(&c["policies"]));
    o
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|g| g.iter().map(s).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

pub fn devices(r: &Value) -> String {
    let rows: Vec<Vec<String>> = r["devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    vec![
                        s(&d["serial"]),
                        if d["compliant"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "NO".into()
                        },
                        s(&d["risk"]),
                        join(&d["groups"]),
                        join(&d["sources"]),
                        d["age_secs"]
                            .as_u64()
                            .map(ago)
                            .unwrap_or_else(|| "-".into()),
                        d["why"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        let filtered = r["filter"].as_object().is_some_and(|f| {
            f.values()
                .any(|v| !v.is_null() && v.as_bool() != Some(false))
        });
        return if filtered {
            "no device matches the filter\n".into()
        } else {
            "no devices known (no source synced yet, or all sources are empty)\n".into()
        };
    }
    table(
        &[
            "SERIAL",
            "COMPLIANT",
            "RISK",
            "GROUPS",
            "SOURCES",
            "CONFIRMED",
            "WHY NOT",
        ],
        &rows,
    )
}

fn until(v: &Value) -> String {
    match v.as_i64() {
        Some(t) => format!("until {}", crate::timefmt::rfc3339(t)),
        None => "until removed".into(),
    }
}

/// `attestgate device show`.
pub fn device_show(r: &Value) -> String {
    let mut o = String::new();
    let v = &r["verdict"];
    let _ = writeln!(
        o,
        "device {}: {}",
        s(&r["serial"]),
        if v["compliant"].as_bool() == Some(true) {
            "COMPLIANT".to_string()
        } else {
            format!("NOT COMPLIANT: {}", s(&v["why"]))
        }
    );
    for c in v["checks"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {}  {:<9} {}",
            if c["passed"].as_bool() == Some(true) {
                "pass"
            } else {
                "FAIL"
            },
            s(&c["check"]),
            s(&c["detail"])
        );
    }
    let rows: Vec<Vec<String>> = r["facts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            vec![
                s(&f["source"]),
                s(&f["type"]),
                match f["managed"].as_bool() {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                join(&f["groups"]),
                match f["risk_reasons"].as_array().filter(|a| !a.is_empty()) {
                    Some(_) => format!("{} ({})", s(&f["risk"]), join(&f["risk_reasons"])),
                    None => s(&f["risk"]),
                },
                join(&f["udids"]),
                s(&f["platform"]),
                format!(
                    "{}{}",
                    ago(f["age_secs"].as_u64().unwrap_or(0)),
                    if f["stale"].as_bool() == Some(true) {
                        " (STALE)"
                    } else {
                        ""
                    }
                ),
            ]
        })
        .collect();
    o.push('\n');
    if rows.is_empty() {
        o.push_str("no source knows this device\n");
    } else {
        o.push_str(&table(
            &[
                "SOURCE",
                "TYPE",
                "MANAGED",
                "GROUPS",
                "RISK",
                "UDIDS",
                "PLATFORM",
                "CONFIRMED",
            ],
            &rows,
        ));
    }
    for ov in r["overrides"].as_array().into_iter().flatten() {
        let what = match ov["kind"].as_str() {
            Some("block") => "block".to_string(),
            _ => format!("risk {}", s(&ov["level"])),
        };
        let _ = writeln!(
            o,
            "override  {what}  set {}  {}{}",
            ago(ov["age_secs"].as_u64().unwrap_or(0)),
            until(&ov["until"]),
            ov["reason"]
                .as_str()
                .map(|r| format!("  reason: {r}"))
                .unwrap_or_default()
        );
    }
    o
}

/// `attestgate device block|risk|unblock|clear`.
pub fn device_override(r: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "device {}: {} {}",
        s(&r["serial"]),
        s(&r["action"]),
        if r["changed"].as_bool() == Some(true) {
            "applied"
        } else {
            "recorded (the device's state did not change)"
        }
    );
    if r["known"].as_bool() == Some(false) {
        let _ = writeln!(
            o,
            "note: no inventory source knows this device (it is unknown, so not compliant, anyway)"
        );
    }
    o.push_str(&device_show(r));
    o
}

/// `attestgate ca list`.
pub fn ca_list(r: &Value) -> String {
    let rows: Vec<Vec<String>> = r["certificates"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    vec![
                        s(&c["serial"]),
                        s(&c["device"]),
                        crate::timefmt::rfc3339(c["not_after"].as_i64().unwrap_or(0)),
                        match c["revoked_at"].as_i64() {
                            Some(t) => format!(
                                "revoked {} ({})",
                                crate::timefmt::rfc3339(t),
                                s(&c["revocation_reason"])
                            ),
                            None => "no".into(),
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no certificates issued\n".into();
    }
    table(&["SERIAL", "DEVICE", "NOT AFTER", "REVOKED"], &rows)
}

/// `attestgate ca revoke`.
pub fn ca_revoked(r: &Value) -> String {
    let serials: Vec<String> = r["revoked"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    if serials.is_empty() {
        return format!(
            "device {}: no certificate left to revoke (already revoked)\n",
            s(&r["device"])
        );
    }
    format!(
        "device {}: revoked {} certificate{} ({}); reset {} flow{}, closing its connections\n",
        s(&r["device"]),
        serials.len(),
        if serials.len() == 1 { "" } else { "s" },
        serials.join(", "),
        r["flows"].as_u64().unwrap_or(0),
        if r["flows"].as_u64() == Some(1) {
            ""
        } else {
            "s"
        }
    )
}

pub fn flows(r: &Value) -> String {
    let rows: Vec<Vec<String>> = r["flows"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    vec![
                        s(&f["device"]),
                        s(&f["target"]),
                        s(&f["protocol"]),
                        s(&f["http"]),
                        s(&f["egress"]),
                        s(&f["source"]),
                        s(&f["bytes_from_device"]),
                        s(&f["bytes_to_device"]),
                        crate::policy::human(std::time::Duration::from_secs(
                            f["age_secs"].as_u64().unwrap_or(0),
                        )),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no flows\n".into();
    }
    table(
        &[
            "DEVICE",
            "TARGET",
            "PROTO",
            "HTTP",
            "EGRESS",
            "SOURCE",
            "BYTES IN",
            "BYTES OUT",
            "AGE",
        ],
        &rows,
    )
}

pub fn tunnels(r: &Value) -> String {
    let list = r["tunnels"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no tunnel egress configured\n".into();
    }
    let mut o = String::new();
    for t in &list {
        let _ = writeln!(
            o,
            "{}  {}  {} → {}  {}{}",
            s(&t["name"]),
            s(&t["state"]).to_uppercase(),
            s(&t["local"]),
            s(&t["remote"]),
            s(&t["role"]),
            if t["nat_detected"].as_bool() == Some(true) {
                "  (NAT, UDP 4500)"
            } else {
                ""
            }
        );
        if let Some(n) = t["foreign_inits"].as_u64().filter(|n| *n > 0) {
            let _ = writeln!(o, "  {n} IKE_SA_INIT from other addresses dropped");
        }
        if let Some(p) = t["ike_proposal"].as_str() {
            let _ = writeln!(
                o,
                "  IKE SA {}_i {}_r  {p}  up {}  rekeys {}  IKE rekeys {}  next IKE rekey {}  last liveness {}",
                s(&t["ike_spi_i"]),
                s(&t["ike_spi_r"]),
                since_unix(&t["established_at"]).trim_end_matches(" ago"),
                s(&t["rekeys"]),
                s(&t["ike_rekeys"]),
                until_unix(&t["ike_rekey_at"]),
                since_unix(&t["last_alive"]),
            );
        }
        let rows: Vec<Vec<String>> = t["children"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        let list = |v: &Value| {
                            v.as_array()
                                .map(|x| x.iter().map(s).collect::<Vec<_>>().join(","))
                                .unwrap_or_default()
                        };
                        vec![
                            format!("  {}", s(&c["spi_in"])),
                            s(&c["spi_out"]),
                            s(&c["proposal"]),
                            list(&c["local_ts"]),
                            list(&c["remote_ts"]),
                            since_unix(&c["established_at"]),
                            until_unix(&c["rekey_at"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !rows.is_empty() {
            o.push_str(&table(
                &[
                    "  SPI IN",
                    "SPI OUT",
                    "ESP",
                    "LOCAL TS",
                    "REMOTE TS",
                    "INSTALLED",
                    "REKEY",
                ],
                &rows,
            ));
        }
        if let Some(e) = t["last_event"].as_str() {
            let _ = writeln!(o, "  last event: {e}");
        }
    }
    o
}

pub fn applied(r: &Value) -> String {
    let mut o = String::new();
    for w in r["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "{}", s(w));
    }
    let _ = writeln!(
        o,
        "applied: generation {} ({})",
        s(&r["generation"]),
        s(&r["digest"])
    );
    let restart: Vec<String> = r["restart_needed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    if !restart.is_empty() {
        let _ = writeln!(
            o,
            "note: {} take effect after a restart",
            restart.join(", ")
        );
    }
    o
}

pub fn whatif(r: &Value) -> String {
    let mut o = String::new();
    let d = &r["decision"];
    let dev = &r["device"];
    let _ = writeln!(
        o,
        "device {} → {}{}",
        s(&dev["serial"]),
        s(&r["target"]),
        if r["offline"].as_bool() == Some(true) {
            "  (offline: state from the command line)"
        } else {
            ""
        }
    );
    for reason in d["reasons"].as_array().into_iter().flatten() {
        let mark = match reason["passed"].as_bool() {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "    ",
        };
        let _ = writeln!(
            o,
            "  {mark}  {:<11} {}",
            s(&reason["check"]),
            s(&reason["detail"])
        );
    }
    let v = &d["verdict"];
    let line = match v["outcome"].as_str() {
        Some("egress") => {
            let src = &v["source"];
            let source = match src["kind"].as_str() {
                Some("nat-pool") => format!(
                    "an address of NAT pool {} ({})",
                    s(&src["pool"]),
                    s(&src["mode"])
                ),
                Some("addresses") => format!(
                    "{} (first usable)",
                    src["addresses"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" | "))
                        .unwrap_or_default()
                ),
                Some("fixed") => s(&src["address"]),
                _ => "the default route's address".into(),
            };
            format!(
                "{} ({}, {}) from {source}",
                s(&v["egress"]),
                s(&v["egress_type"]),
                if v["trusted"].as_bool() == Some(true) {
                    "TRUSTED"
                } else {
                    "untrusted"
                }
            )
        }
        Some("deny") => format!(
            "deny (HTTP {}, Proxy-Status error=connection_refused)",
            s(&v["status"])
        ),
        Some("direct") => {
            "direct (HTTP 503, Proxy-Status error=destination_unavailable: the client goes direct)"
                .into()
        }
        _ => "unknown".into(),
    };
    let _ = writeln!(o, "decision: {line}");
    if let Some(why) = r["why"].as_str() {
        let _ = writeln!(o, "because:  {why}");
    }
    if r["certificate_assumed"].as_bool() == Some(true) {
        let _ = writeln!(
            o,
            "note: assumes a valid device certificate (what-if has none)"
        );
    }
    o
}

pub fn check_json(
    file: &Path,
    error: Option<&str>,
    d: &config::Diagnostics,
    digest: Option<&str>,
) -> Value {
    json!({
        "file": file.display().to_string(),
        "ok": error.is_none() && !d.has_errors(),
        "error": error,
        "digest": digest,
        "diagnostics": d.0.iter().map(|x| json!({
            "severity": match x.severity { config::Severity::Error => "error", config::Severity::Warning => "warning" },
            "line": x.line,
            "column": x.column,
            "path": x.path,
            "message": x.message,
            "expected": x.expected,
            "help": x.help,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align() {
        let t = super::table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
    }
}
