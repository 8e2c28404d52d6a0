//! Runs the Microsoft Graph stand-in (token endpoint, named locations, Conditional Access
//! policies; see tests/src/standins/graph.rs) for demos and manual tests, until killed.
//!
//! graph-standin --dir DIR [--port P] [--tenant T]
//!
//! Writes DIR/ca.pem (trust it with SSL_CERT_FILE) and DIR/client.secret, prints one JSON line
//! {"url", "ca", "tenant_id", "client_id", "client_secret_file"} (use `url` as both graph_url
//! and login_url in [idp.entra]), then reads commands, one a line, from stdin (answers are JSON
//! lines):
//!
//! policies FILE        the policies are the JSON array in FILE
//! locations            every named location
//! deny reads|writes    answer 403 AccessDenied to reads / writes from now on
//! allow                undo `deny`
//! fault PATH_PREFIX 429|503|revoke

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test tool: bad arguments end it

use serde_json::{json, Value};
use tests::standins::graph::GraphStandin;
use tests::standins::Fault;

const CLIENT_ID: &str = "attestgate-demo";

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn command(g: &GraphStandin, line: &str) -> Result<Value, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["policies", file] => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            let v: Vec<Value> = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
            let n = v.len();
            g.state().policies = v;
            Ok(json!({"policies": n}))
        }
        ["locations"] => Ok(json!(g.state().locations)),
        ["deny", "reads"] => {
            g.state().deny_reads = true;
            Ok(json!({}))
        }
        ["deny", "writes"] => {
            g.state().deny_writes = true;
            Ok(json!({}))
        }
        ["allow"] => {
            let mut st = g.state();
            st.deny_reads = false;
            st.deny_writes = false;
            Ok(json!({}))
        }
        ["fault", path, kind] => {
            let f = match *kind {
                "429" => Fault::TooManyRequests {
                    retry_after: Some(1),
                },
                "503" => Fault::Unavailable,
                "revoke" => Fault::RevokeTokens,
                _ => return Err("fault PATH 429|503|revoke".into()),
            };
            g.common().faults.push(path, f);
            Ok(json!({}))
        }
        _ => Err(format!("unknown command `{line}`")),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(arg(&args, "--dir", "."));
    let port: u16 = arg(&args, "--port", "0").parse().expect("--port");
    let tenant = arg(&args, "--tenant", "attestgate-demo.onmicrosoft.com");
    let secret = format!("demo-secret-{:016x}", fastrand::u64(..));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("client.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let g = GraphStandin::start(port, &tenant, CLIENT_ID, &secret).await;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &g.server.tls.ca_pem).unwrap();
    println!(
        "{}",
        json!({
            "url": g.url(),
            "ca": ca.display().to_string(),
            "tenant_id": tenant,
            "client_id": CLIENT_ID,
            "client_secret_file": secret_file.display().to_string(),
        })
    );
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
        let answer = match command(&g, &line) {
            Ok(v) => json!({"ok": v}),
            Err(e) => json!({"error": e}),
        };
        println!("{answer}");
    }
    // stdin closed: keep serving until killed
    std::future::pending::<()>().await;
}
