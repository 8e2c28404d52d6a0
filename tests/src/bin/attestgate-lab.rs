//! The README's main job, end to end in namespaces (`sudo tests/demo.sh` builds and runs it):
//! brings the lab up (`tests::lab`), sends one compliant and one noncompliant device (aioquic)
//! through attestgate's relay, prints what the LAN app server behind the IPsec tunnel and the
//! IdP saw, flips compliance live through the Jamf webhook and shows the cut of a running
//! stream, flips back, and tears everything down. Each step prints what was expected, what was
//! seen, and ok or FAILED; the exit status is the number of failed expectations (capped).
//!
//! attestgate-lab [--bins DIR]   (default: the folder this program is in)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a lab tool: a broken lab ends it

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tests::lab::{
    in_pool, Host, Lab, LabBins, APP, COMPLIANT, DEVICE, IDP, NONCOMPLIANT, PAIR, PEER, PUBLIC,
    RELAY,
};

struct Report {
    step: u32,
    failed: Vec<String>,
    started: Instant,
}

impl Report {
    fn step(&mut self, title: &str) {
        self.step += 1;
        println!(
            "\n\x1b[1m{:>2}. {title}\x1b[0m  \x1b[2m[{:.1} s]\x1b[0m",
            self.step,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn check(&mut self, what: &str, expected: &str, seen: &str, ok: bool) {
        println!("    {what}");
        println!("      expected: {expected}");
        println!("      seen:     {seen}");
        if ok {
            println!("      \x1b[32mok\x1b[0m");
        } else {
            println!("      \x1b[31mFAILED\x1b[0m");
            self.failed.push(format!("step {}: {what}", self.step));
        }
    }
}

/// One CONNECT; what the target host recorded as its source, or why there was none.
fn through(lab: &Lab, cert: &tests::pki::LabCert, host: Host, authority: &str) -> String {
    let r = lab.connect(cert, authority, "hello from the device\\n");
    describe(lab, host, &r)
}

fn describe(lab: &Lab, host: Host, r: &Value) -> String {
    if r["status"] != 200 {
        if let Some(e) = r["terminated"]["reason"].as_str() {
            return format!("connection closed by the relay: {e}");
        }
        return format!(
            "HTTP {} Proxy-Status: {}",
            r["status"],
            r["proxy_status"].as_str().unwrap_or("-")
        );
    }
    let text = r["received_text"].as_str().unwrap_or("");
    match lab.tcp_source(host, text) {
        Some(src) => format!("source {src}"),
        None => format!("200 but the host recorded nothing ({text:?})"),
    }
}

fn txt(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn source(seen: &str) -> &str {
    seen.strip_prefix("source ").unwrap_or("")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = match args.iter().position(|a| a == "--bins") {
        Some(i) => PathBuf::from(args.get(i + 1).expect("--bins DIR")),
        None => std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf(),
    };
    let bins = LabBins::in_dir(&dir);
    if let Err(e) = bins.check() {
        eprintln!("attestgate-lab: {e}");
        std::process::exit(2);
    }
    let mut r = Report {
        step: 0,
        failed: Vec::new(),
        started: Instant::now(),
    };

    r.step("the lab comes up");
    println!(
        "    device {DEVICE} ── relay {RELAY}:443 [attestgate] ── wan: public {PUBLIC}, pair {} {}\n    \
         wan ── strongSwan {PEER} (kernel-libipsec) ── LAN app server {APP}, resolver 198.19.0.53\n    \
         wan ── IdP {IDP}:443; compliance: Jamf Pro stand-in, webhook to the admin listener",
        PAIR[0], PAIR[1]
    );
    let mut lab = Lab::start(bins);
    let t = lab.tunnel();
    r.check(
        "attestgate's corp tunnel to strongSwan",
        "established, one child SA",
        &format!(
            "{} ({} child SA, {})",
            t["state"].as_str().unwrap_or("?"),
            t["children"].as_array().map_or(0, Vec::len),
            t["ike_proposal"].as_str().unwrap_or("?")
        ),
        t["state"] == "established",
    );
    let good = lab.device_cert(COMPLIANT);
    let bad = lab.device_cert(NONCOMPLIANT);
    for (serial, what) in [
        (COMPLIANT, "in Jamf smart group 1 \"Compliant Macs\""),
        (NONCOMPLIANT, "managed, in no compliant group"),
    ] {
        let v = lab.json(&["device", "show", serial])["verdict"]["compliant"].clone();
        println!("    {serial}: {what} → compliant = {v}");
    }

    r.step("the compliant Mac signs in to the IdP (idp.lab:443)");
    let seen = through(&lab, &good, Host::Idp, "idp.lab:443");
    r.check(
        "the IdP's record of the connection",
        &format!("source {} or {} (the dedicated pair)", PAIR[0], PAIR[1]),
        &seen,
        PAIR.contains(&source(&seen)),
    );

    r.step("the noncompliant Mac signs in to the IdP");
    let seen = through(&lab, &bad, Host::Idp, "idp.lab:443");
    r.check(
        "the IdP's record of the connection",
        &format!("source {PUBLIC} (public: the IdP will not trust it)"),
        &seen,
        source(&seen) == PUBLIC,
    );

    r.step("the compliant Mac reaches the internal app (app.corp.lab:80)");
    let (esp_before, _) = lab.peer_esp_packets();
    let seen = through(&lab, &good, Host::Lan, "app.corp.lab:80");
    let (esp_after, _) = lab.peer_esp_packets();
    r.check(
        "the LAN app server's record of the connection",
        "source in the NAT pool 198.18.100.0/26",
        &seen,
        in_pool(source(&seen)),
    );
    // the firewall behind the peer logs only the address: the event ties it to the device
    let assigned = std::fs::read_to_string(lab.path("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|e| e["event"] == "nat.assigned" && e["serial"] == COMPLIANT);
    let named = assigned
        .as_ref()
        .map_or("no nat.assigned event".to_string(), |e| {
            format!(
                "nat.assigned {} → {} ({})",
                txt(&e["serial"]),
                txt(&e["address"]),
                txt(&e["reason"])
            )
        });
    r.check(
        "the event that names the device behind that address",
        &format!("nat.assigned {COMPLIANT} → the address the LAN saw"),
        &named,
        assigned.is_some_and(|e| e["address"] == source(&seen)),
    );
    r.check(
        "ESP packets strongSwan received on the child SA during the request",
        "more than 0 (the flow crossed the IPsec tunnel)",
        &format!("{}", esp_after.saturating_sub(esp_before)),
        esp_after > esp_before,
    );
    let dns_seen = through(&lab, &good, Host::Lan, "wiki.corp.lab:80");
    let dns = lab
        .seen(Host::Lan)
        .into_iter()
        .rfind(|e| e["kind"] == "dns" && e["name"] == "wiki.corp.lab");
    let dns_src = dns
        .as_ref()
        .and_then(|e| e["source"].as_str())
        .unwrap_or("no query")
        .to_string();
    r.check(
        "wiki.corp.lab, a name only the enterprise resolver knows",
        "resolver asked from a pool address, app server reached from the pool",
        &format!("resolver asked from {dns_src}; app server: {dns_seen}"),
        in_pool(&dns_src) && in_pool(source(&dns_seen)),
    );

    r.step("the noncompliant Mac tries the internal app");
    let lan_before = lab.seen(Host::Lan).len();
    let seen = through(&lab, &bad, Host::Lan, "app.corp.lab:80");
    r.check(
        "the relay's answer (policy corp-apps, fallback deny)",
        "HTTP 502 Proxy-Status: …error=connection_refused…; the LAN sees nothing",
        &format!(
            "{seen}; LAN records +{}",
            lab.seen(Host::Lan).len() - lan_before
        ),
        seen.contains("502")
            && seen.contains("connection_refused")
            && lab.seen(Host::Lan).len() == lan_before,
    );

    r.step("a device whose certificate another CA issued");
    let other = tests::pki::LabPki::new("not the device CA", &tests::pki::P256);
    let stranger = other.issue_client(COMPLIANT);
    let res = lab.connect(&stranger, "idp.lab:443", "x");
    let seen = describe(&lab, Host::Idp, &res);
    r.check(
        "the TLS handshake",
        "refused (unknown CA), no request answered",
        &seen,
        res["status"].is_null() && seen.contains("closed"),
    );

    r.step("compliance flips live: Jamf drops the Mac from the group and sends its webhook");
    let held = lab.hold(&good, "idp.lab:443", 60);
    let held_corp = lab.hold(&good, "app.corp.lab:80", 60);
    for (name, h) in [("idp.lab:443", &held), ("app.corp.lab:80", &held_corp)] {
        let flowing = h.next(Duration::from_secs(20));
        println!(
            "    a running stream to {name}: {}",
            flowing.map_or("did not start".into(), |v| v.to_string())
        );
    }
    for f in lab.json(&["flows"])["flows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        println!(
            "    attestgate flows: {} → {} via {} from {}",
            txt(&f["device"]),
            txt(&f["target"]),
            txt(&f["egress"]),
            f["source"].as_str().unwrap_or("-")
        );
    }
    let (sent, status) = lab.set_compliant(1, false);
    for (name, h) in [
        ("idp.lab (pair → public)", &held),
        ("app.corp.lab (tunnel → deny)", &held_corp),
    ] {
        let end = h.next(Duration::from_secs(10));
        let cut = end
            .as_ref()
            .and_then(|e| e["reset_at_ms"].as_f64())
            .map(|at| at - sent);
        r.check(
            &format!("the running stream to {name} after the webhook (HTTP {status} from the admin listener)"),
            "reset (H3_REQUEST_CANCELLED) within 1 s of the webhook",
            &match (&end, cut) {
                (Some(e), Some(ms)) => format!(
                    "webhook {status}, reset 0x{:x} {ms:.0} ms after it",
                    e["reset"].as_u64().unwrap_or(0)
                ),
                (Some(e), None) => format!("webhook {status}, ended without reset: {e}"),
                _ => format!("webhook {status}, still running"),
            },
            status == 202 && cut.is_some_and(|ms| ms < 1000.0),
        );
    }
    drop(held);
    drop(held_corp);
    let seen = through(&lab, &good, Host::Idp, "idp.lab:443");
    r.check(
        "the next CONNECT to the IdP",
        &format!("source {PUBLIC} (public)"),
        &seen,
        source(&seen) == PUBLIC,
    );

    r.step("Jamf puts the Mac back in the group (webhook again); nothing is done on the device");
    let (_, status) = lab.set_compliant(1, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.json(&["device", "show", COMPLIANT])["verdict"]["compliant"] != true
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = through(&lab, &good, Host::Idp, "idp.lab:443");
    r.check(
        &format!("the next CONNECT to the IdP (webhook {status})"),
        "source in the dedicated pair again",
        &seen,
        PAIR.contains(&source(&seen)),
    );

    r.step("what each destination saw");
    for (host, name) in [
        (Host::Lan, "LAN (app server, resolver)"),
        (Host::Idp, "IdP"),
    ] {
        println!("    {name}:");
        for e in lab.seen(host) {
            let what = match e["kind"].as_str() {
                Some("dns") => format!("DNS query {} from {}", txt(&e["name"]), txt(&e["source"])),
                _ => format!("TCP to {} from {}", txt(&e["listen"]), txt(&e["source"])),
            };
            println!("      {what}");
        }
    }

    r.step("tear down: attestgate stops (SIGTERM), then the lab goes away");
    let status = lab.stop_daemon();
    let left = lab.leftovers();
    r.check(
        "attestgate's exit and what it left in the appliance namespace",
        "exit 0; no rule, route or address of its own (proto 245, NAT pool)",
        &format!(
            "exit {}; {}",
            status.code().unwrap_or(-1),
            if left.is_empty() {
                "nothing left".to_string()
            } else {
                left.join(" | ")
            }
        ),
        status.success() && left.is_empty(),
    );
    let names = [
        lab.device.name.clone(),
        lab.appliance.name.clone(),
        lab.wan.name.clone(),
        lab.peer.name.clone(),
        lab.lan.name.clone(),
        lab.idp.name.clone(),
    ];
    let folder = lab.dir.path().to_path_buf();
    drop(lab);
    let list = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    let remaining: Vec<&String> = names.iter().filter(|n| list.contains(n.as_str())).collect();
    r.check(
        "namespaces and the lab folder",
        "all 6 namespaces and the folder removed",
        &format!(
            "{} namespaces left, folder {}",
            remaining.len(),
            if folder.exists() {
                "still there"
            } else {
                "removed"
            }
        ),
        remaining.is_empty() && !folder.exists(),
    );

    println!(
        "\n\x1b[1mdone in {:.1} s: {}\x1b[0m",
        r.started.elapsed().as_secs_f64(),
        if r.failed.is_empty() {
            "every expectation held".to_string()
        } else {
            format!("{} expectation(s) FAILED", r.failed.len())
        }
    );
    for f in &r.failed {
        println!("  FAILED {f}");
    }
    std::process::exit(r.failed.len().min(100) as i32);
}
