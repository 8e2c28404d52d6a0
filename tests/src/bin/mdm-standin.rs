//! Runs a Jamf Pro or Intune stand-in for demos and manual tests, until killed.
//!
//! mdm-standin jamf   --dir DIR [--port P] [--computers N] [--mobiles N] [--token-lifetime S]
//! mdm-standin intune --dir DIR [--port P] [--devices N] [--token-lifetime S]
//!
//! Writes DIR/ca.pem (trust it with SSL_CERT_FILE for the appliance) and DIR/client.secret,
//! prints one JSON line {"kind", "url", "ca", "client_id", "client_secret_file", …} on stdout,
//! then reads commands, one a line, from stdin (answers are JSON lines):
//!
//! jamf:   join GROUP COMPUTER_ID | leave GROUP COMPUTER_ID | managed COMPUTER_ID true|false
//!         | risk COMPUTER_ID LEVEL
//!         | webhook URL CA_PEM HEADER:VALUE EVENT ID [ADDED_IDS] [REMOVED_IDS]   (ids a,b,c)
//! intune: compliance SERIAL STATE | threat SERIAL STATE | managed SERIAL STATE
//! both:   fault PATH_PREFIX 429|503|malformed|revoke
//!
//! Jamf data: JamfData::sample (computers C02STAND0001…, iPhones DMPSTAND0001…; odd ids in
//! group 1). Intune: devices MACSTAND0001…, compliant, secured.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test tool: bad arguments end it

use serde_json::json;
use std::time::Duration;
use tests::standins::intune::{IntuneStandin, ManagedDevice};
use tests::standins::jamf::{JamfData, JamfStandin};
use tests::standins::{post_https, Common, Fault};

const CLIENT_ID: &str = "attestgate-demo";

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn ids(s: Option<&&str>) -> Vec<u32> {
    s.map(|s| s.split(',').filter_map(|i| i.parse().ok()).collect())
        .unwrap_or_default()
}

fn fault(common: &mut Common, words: &[&str]) -> Result<(), String> {
    let f = match words.get(2) {
        Some(&"429") => Fault::TooManyRequests {
            retry_after: Some(1),
        },
        Some(&"503") => Fault::Unavailable,
        Some(&"malformed") => Fault::Malformed,
        Some(&"revoke") => Fault::RevokeTokens,
        _ => return Err("fault PATH 429|503|malformed|revoke".into()),
    };
    common.faults.push(words.get(1).ok_or("fault PATH …")?, f);
    Ok(())
}

enum Standin {
    Jamf(JamfStandin),
    Intune(IntuneStandin),
}

async fn command(s: &Standin, line: &str) -> Result<serde_json::Value, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<u32, String> {
        w.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("argument {i} must be a number"))
    };
    match (s, w.first().copied()) {
        (Standin::Jamf(j), Some("fault")) => fault(&mut j.common(), &w).map(|_| json!({})),
        (Standin::Intune(i), Some("fault")) => fault(&mut i.common(), &w).map(|_| json!({})),
        (Standin::Jamf(j), Some(verb @ ("join" | "leave"))) => {
            let (g, c) = (num(1)?, num(2)?);
            j.with_data(|d| {
                let group = d.computer_groups.get_mut(&g).ok_or("no such group")?;
                if verb == "join" {
                    group.members.insert(c);
                } else {
                    group.members.remove(&c);
                }
                Ok(json!({"group": g, "members": group.members}))
            })
        }
        (Standin::Jamf(j), Some("managed")) => {
            let c = num(1)?;
            let v = w.get(2) == Some(&"true");
            j.with_data(|d| {
                d.computers.get_mut(&c).ok_or("no such computer")?.managed = v;
                Ok(json!({"computer": c, "managed": v}))
            })
        }
        (Standin::Jamf(j), Some("risk")) => {
            let c = num(1)?;
            let level = w.get(2).ok_or("risk ID LEVEL")?.to_string();
            j.with_data(|d| {
                let comp = d.computers.get_mut(&c).ok_or("no such computer")?;
                comp.attributes.insert("Risk".into(), level.clone());
                Ok(json!({"computer": c, "risk": level}))
            })
        }
        (Standin::Jamf(j), Some("webhook")) => {
            let (url, ca, header, event) = match (w.get(1), w.get(2), w.get(3), w.get(4)) {
                (Some(u), Some(c), Some(h), Some(e)) => (*u, *c, *h, *e),
                _ => {
                    return Err("webhook URL CA_PEM HEADER:VALUE EVENT ID [ADDED] [REMOVED]".into())
                }
            };
            let body = j
                .webhook(event, num(5)?, &ids(w.get(6)), &ids(w.get(7)))
                .ok_or("unknown event or id")?;
            let ca_pem = std::fs::read_to_string(ca).map_err(|e| e.to_string())?;
            let (hname, hvalue) = header.split_once(':').ok_or("HEADER:VALUE")?;
            let started = std::time::Instant::now();
            let status = post_https(
                url,
                &ca_pem,
                &[(hname, hvalue)],
                body.to_string().as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(json!({"status": status, "ms": started.elapsed().as_secs_f64() * 1000.0}))
        }
        (Standin::Intune(i), Some(verb @ ("compliance" | "threat" | "managed"))) => {
            let serial = w.get(1).ok_or("SERIAL")?.to_string();
            let state = w.get(2).ok_or("STATE")?.to_string();
            i.with_devices(|devices| {
                let d = devices
                    .values_mut()
                    .find(|d| d.serial == serial)
                    .ok_or("no such serial")?;
                match verb {
                    "compliance" => d.compliance_state = state.clone(),
                    "threat" => d.threat_state = state.clone(),
                    _ => d.management_state = state.clone(),
                }
                Ok(json!({"serial": serial, verb: state}))
            })
        }
        _ => Err(format!("unknown command `{line}`")),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args.first().cloned().unwrap_or_default();
    let dir = std::path::PathBuf::from(arg(&args, "--dir", "."));
    let port: u16 = arg(&args, "--port", "0").parse().expect("--port");
    let lifetime = Duration::from_secs(
        arg(&args, "--token-lifetime", "3600")
            .parse()
            .expect("--token-lifetime"),
    );
    let secret = format!("demo-secret-{:016x}", fastrand::u64(..));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("client.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (standin, extra) = match kind.as_str() {
        "jamf" => {
            let computers = arg(&args, "--computers", "10")
                .parse()
                .expect("--computers");
            let mobiles = arg(&args, "--mobiles", "4").parse().expect("--mobiles");
            let j = JamfStandin::start_on(
                port,
                CLIENT_ID,
                &secret,
                JamfData::sample(computers, mobiles),
                lifetime,
            )
            .await;
            (
                Standin::Jamf(j),
                json!({"computer_groups": [1], "mobile_device_groups": [1], "risk_attribute": "Risk"}),
            )
        }
        "intune" => {
            let n: u32 = arg(&args, "--devices", "10").parse().expect("--devices");
            let devices = (1..=n)
                .map(|i| ManagedDevice::compliant(&format!("MACSTAND{i:04}")))
                .collect();
            let i = IntuneStandin::start(
                port,
                "attestgate-demo.onmicrosoft.com",
                CLIENT_ID,
                &secret,
                devices,
                lifetime,
            )
            .await;
            (
                Standin::Intune(i),
                json!({"tenant_id": "attestgate-demo.onmicrosoft.com"}),
            )
        }
        _ => {
            eprintln!("usage: mdm-standin jamf|intune --dir DIR [--port P] …");
            std::process::exit(2);
        }
    };
    let server = match &standin {
        Standin::Jamf(j) => &j.server,
        Standin::Intune(i) => &i.server,
    };
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &server.tls.ca_pem).unwrap();
    let mut hello = json!({
        "kind": kind,
        "url": server.base_url,
        "ca": ca.display().to_string(),
        "client_id": CLIENT_ID,
        "client_secret_file": secret_file.display().to_string(),
    });
    if let (Some(h), Some(e)) = (hello.as_object_mut(), extra.as_object()) {
        h.extend(e.clone());
    }
    println!("{hello}");
    // Commands from stdin, read on a thread (blocking reads).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        if line.trim().is_empty() {
            continue;
        }
        let answer = match command(&standin, &line).await {
            Ok(v) => json!({"ok": true, "result": v}),
            Err(e) => json!({"ok": false, "error": e}),
        };
        println!("{answer}");
    }
    // stdin closed: keep serving until killed.
    std::future::pending::<()>().await;
}
