//! The appliance's egresses in namespaces, through the daemon: the `corp` tunnel of the lab
//! configuration against strongSwan, its NAT pool routed by policy (rule, table, `unreachable`
//! default, AnyIP pool), a device's CONNECT leaving from its pool address through ESP (its name
//! resolved by the enterprise resolver, queried through the tunnel from that address), the
//! internet pair failing over when its first address leaves the host, an apply adding a tunnel
//! without dropping the open flows, and nothing of ours left once the daemon stops.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

mod common;

use common::{device_certificate, require_aioquic, Kill, BIN};
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use tests::daemon::{corp_lab, corp_peer, lab_config, Cli, Daemon};
use tests::netns::Netns;
use tests::strongswan::Charon;

/// A TCP echo server on ADDRESS:PORT that prints the source address of each connection.
const ECHO: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
print("ready", flush=True)
def serve(c):
    while True:
        try:
            d = c.recv(65536)
        except OSError:
            break
        if not d:
            break
        c.sendall(d)
while True:
    c, peer = s.accept()
    print(peer[0], flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A DNS server on ADDRESS:53 answering every A question with 198.19.0.1 (RFC 1035 §4.1); it
/// prints the source address of each query.
const DNS: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    question = q[12:i + 5]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    print(peer[0], flush=True)
    answer = b""
    if qtype == 1:
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("198.19.0.1")
    header = q[:2] + struct.pack(">HHHHH", 0x8180, 1, 1 if answer else 0, 0, 0)
    s.sendto(header + question + answer, peer)
"#;

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// An echo server in `ns`; its lines (the peers' addresses).
fn echo(ns: &Netns, address: &str, port: u16) -> (Kill, Receiver<String>) {
    server(ns, &["python3", "-c", ECHO, address, &port.to_string()])
}

/// A Python server in `ns` that prints `ready`, then a line per peer.
fn server(ns: &Netns, args: &[&str]) -> (Kill, Receiver<String>) {
    let mut child = ns.spawn(args, Stdio::piped(), Stdio::inherit());
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "ready");
    (Kill(child), rx)
}

/// An aioquic device in `ns` holding a busy CONNECT to `authority`; its JSON lines.
fn device(ns: &Netns, dir: &Path, authority: &str) -> (Kill, Receiver<Value>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay/tests/h3_client.py");
    let d = |f: &str| dir.join(f).display().to_string();
    let mut child = ns.spawn(
        &[
            "python3",
            &script.display().to_string(),
            "hold",
            "--host",
            "198.51.100.1",
            "--port",
            "443",
            "--server-name",
            "relay.attestgate.lab",
            "--ca",
            &d("relay-ca.crt"),
            "--cert",
            &d("device.crt"),
            "--key",
            &d("device.key"),
            "--authority",
            authority,
            "--timeout",
            "40",
        ],
        Stdio::piped(),
        Stdio::inherit(),
    );
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (Kill(child), rx)
}

fn flowing(lines: &Receiver<Value>, what: &str) {
    let first = lines
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what}: the device never got its flow going"));
    assert_eq!(first["event"], "flowing", "{what}: {first}");
}

fn cli_json(config: &Path, args: &[&str]) -> Value {
    let out = Cli { bin: BIN, config }.run(&[&["--json"], args].concat());
    serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)["result"].clone()
}

/// The open flow to `target` (host:port) in `attestgate flows` whose source `ok` accepts.
fn flow_to(config: &Path, target: &str, ok: impl Fn(&str) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = cli_json(config, &["flows"]);
        if let Some(f) = flows["flows"].as_array().and_then(|a| {
            a.iter()
                .find(|f| f["target"] == target && f["source"].as_str().is_some_and(&ok))
        }) {
            return f.clone();
        }
        assert!(Instant::now() < deadline, "no flow to {target}: {flows}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ours(a: &Netns) -> (String, String) {
    (
        text(a.ip(&["rule", "show"])),
        text(a.ip(&["route", "show", "table", "all", "proto", "245"])),
    )
}

#[test]
fn nat_pool_routing_failover_and_cleanup() {
    if !tests::require_root("nat_pool_routing_failover_and_cleanup") {
        return;
    }
    require_aioquic();
    let started = Instant::now();
    let (a, b) = corp_lab();
    // the relay's address, and the dedicated internet pair, on the appliance
    // (and the local address of a second tunnel added later)
    for address in [
        "198.51.100.1/32",
        "203.0.113.30/32",
        "203.0.113.31/32",
        "203.0.113.11/32",
    ] {
        a.addr("lo", address);
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, psk) = lab_config(dir.path(), |text| {
        // the identity provider is the peer's wan address here
        text + "\n[egress.idp-pair.hosts]\n\"idp.lab\" = \"203.0.113.20\"\n"
    });
    device_certificate(dir.path(), "C02LAB0001");
    let sw = Charon::start(&b, &corp_peer(psk));
    let (_lan, lan_peers) = echo(&b, "198.19.0.1", 8080);
    let (_idp, idp_peers) = echo(&b, "203.0.113.20", 443);
    // the enterprise resolver of the `corp` egress, behind the tunnel
    b.addr("lo", "198.19.0.53/32");
    let (_dns, dns_peers) = server(&b, &["python3", "-c", DNS, "198.19.0.53"]);

    // what a crashed daemon left (protocol 245, any table), and the operator's own
    a.ip(&[
        "rule",
        "add",
        "from",
        "192.0.2.0/25",
        "lookup",
        "1234",
        "proto",
        "245",
    ]);
    a.ip(&[
        "route",
        "add",
        "unreachable",
        "default",
        "table",
        "1234",
        "proto",
        "245",
    ]);
    a.ip(&["rule", "add", "from", "192.0.2.128/25", "lookup", "4321"]);
    a.ip(&["route", "add", "unreachable", "default", "table", "4321"]);
    let operators = |a: &Netns| {
        let (rules, _) = ours(a);
        let table = text(a.ip(&["route", "show", "table", "4321"]));
        rules.contains("from 192.0.2.128/25 lookup 4321") && table.contains("unreachable default")
    };

    let daemon = Daemon::start(BIN, &a, &config);
    let cli = Cli {
        bin: BIN,
        config: &config,
    };
    let up = cli.wait_until("established", Duration::from_secs(30), |t| {
        t["state"] == "established" && t["children"].as_array().is_some_and(|c| c.len() == 1)
    });
    let tun = up["tun"].as_str().unwrap().to_string();

    // the leftovers went at start-up; the operator's rule and table did not
    let (rules, routes) = ours(&a);
    assert!(
        !rules.contains("192.0.2.0/25") && !routes.contains("table 1234"),
        "{rules}{routes}"
    );
    assert!(operators(&a), "the operator's routing was touched");

    // the rule, the tunnel's table and the AnyIP pool route, all with protocol 245
    let rule = rules
        .lines()
        .find(|l| l.contains("from 198.18.100.0/26"))
        .unwrap_or_else(|| panic!("no pool rule: {rules}"));
    assert!(
        rule.starts_with("10245:") && rule.contains("proto 245"),
        "{rule}"
    );
    let table = rule
        .split("lookup ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let in_table = text(a.ip(&["route", "show", "table", table]));
    assert!(
        in_table.contains(&format!("198.19.0.0/24 dev {tun} proto 245"))
            && in_table.contains("mtu 1400 advmss 1360"),
        "{in_table}"
    );
    assert!(
        in_table.contains("unreachable default proto 245"),
        "{in_table}"
    );
    assert!(
        // (listed with `proto 245`, so the filter is not repeated on each line)
        routes.contains("local 198.18.100.0/26 dev lo table local scope host"),
        "{routes}"
    );
    let main = text(a.ip(&["route", "show", "table", "main"]));
    assert!(!main.contains("198.19.0.0"), "selector in main: {main}");

    // any pool address (not configured on an interface) reaches the LAN through ESP
    let ping = text(a.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "198.18.100.7",
        "198.19.0.1",
    ]));
    assert!(ping.contains(" 3 received"), "{ping}\n{}", sw.list_sas());
    // a pool address never leaves outside the tunnel's selectors: unreachable, at once
    let outside = Command::new("ip")
        .args([
            "-n",
            &a.name,
            "route",
            "get",
            "203.0.113.20",
            "from",
            "198.18.100.7",
        ])
        .output()
        .unwrap();
    assert!(
        !outside.status.success() && text(outside.clone()).contains("No route to host"),
        "{}",
        text(outside)
    );
    let ping = text(a.run(&[
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "-I",
        "198.18.100.7",
        "203.0.113.20",
    ]));
    assert!(!ping.contains(" 1 received"), "{ping}");
    // while the appliance's own address still reaches it through the main table
    let ping = text(a.run(&["ping", "-c", "1", "-W", "2", "203.0.113.20"]));
    assert!(ping.contains(" 1 received"), "{ping}");

    // a compliant device's CONNECT into the LAN leaves from its NAT pool address
    let (_d1, d1) = device(&a, dir.path(), "198.19.0.1:8080");
    flowing(&d1, "corp");
    let corp = flow_to(&config, "198.19.0.1:8080", |_| true);
    assert_eq!(corp["egress"], "corp", "{corp}");
    let pool_address = corp["source"].as_str().unwrap().to_string();
    let pool: ipnet::IpNet = "198.18.100.0/26".parse().unwrap();
    assert!(pool.contains(&pool_address.parse::<std::net::IpAddr>().unwrap()));
    assert_eq!(
        lan_peers.recv_timeout(Duration::from_secs(5)).unwrap(),
        pool_address,
        "the LAN server saw another source"
    );
    // a name resolved by the enterprise resolver, queried through the tunnel from the pool
    let (_d4, d4) = device(&a, dir.path(), "svc.corp.lab:8080");
    flowing(&d4, "corp by name");
    assert_eq!(
        dns_peers.recv_timeout(Duration::from_secs(5)).unwrap(),
        pool_address,
        "the DNS query left from another source"
    );
    assert_eq!(
        lan_peers.recv_timeout(Duration::from_secs(5)).unwrap(),
        pool_address
    );
    drop(_d4);
    // the relay's socket took the tunnel MTU and MSS from the route (the MSS clamp)
    let ss = text(a.run(&["ss", "-tin", "src", &pool_address]));
    // (advmss as the kernel reports it: the route's 1360 less TCP options such as timestamps)
    let advmss: u32 = ss
        .split("advmss:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ss}"));
    assert!(
        (1320..=1360).contains(&advmss) && ss.contains("pmtu:1400"),
        "{ss}"
    );
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let assigned = events
        .lines()
        .find(|l| l.contains("nat.assigned"))
        .unwrap_or_else(|| panic!("no nat.assigned event: {events}"));
    assert!(
        assigned.contains("C02LAB0001") && assigned.contains(&pool_address),
        "{assigned}"
    );
    let leases = std::fs::read_to_string(dir.path().join("state/nat-leases.json")).unwrap();
    assert!(leases.contains(&pool_address), "{leases}");

    // the internet pair: the first address, then the second once the first leaves the host
    let (_d2, d2) = device(&a, dir.path(), "idp.lab:443");
    flowing(&d2, "idp first");
    assert_eq!(
        flow_to(&config, "idp.lab:443", |_| true)["source"],
        "203.0.113.30"
    );
    assert_eq!(
        idp_peers.recv_timeout(Duration::from_secs(5)).unwrap(),
        "203.0.113.30"
    );
    drop(_d2);
    a.ip(&["addr", "del", "203.0.113.30/32", "dev", "lo"]);
    let (_d3, d3) = device(&a, dir.path(), "idp.lab:443");
    flowing(&d3, "idp after failover");
    assert_eq!(
        idp_peers.recv_timeout(Duration::from_secs(5)).unwrap(),
        "203.0.113.31"
    );
    // (the first device's flow may stay listed until the relay notices it went)
    let moved = flow_to(&config, "idp.lab:443", |s| s == "203.0.113.31");
    assert_eq!(moved["egress"], "idp-pair", "{moved}");
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let failover = events
        .lines()
        .find(|l| l.contains("egress.failover"))
        .unwrap_or_else(|| panic!("no egress.failover event: {events}"));
    assert!(
        failover.contains("\"from\":\"203.0.113.30\"")
            && failover.contains("\"to\":\"203.0.113.31\""),
        "{failover}"
    );

    // an apply adding a second tunnel: the open flows keep going, the new tunnel gets its own
    // rule and table, the relay is not restarted
    let relay_started = events.matches("relay.started").count();
    let original = std::fs::read_to_string(&config).unwrap();
    let mut more = original.clone();
    more = more.replacen(
        "# The identity provider",
        "[egress.branch]\ntype = \"tunnel\"\nlocal_address = \"203.0.113.11\"\nremote_address = \"203.0.113.21\"\n\
         local_id = \"gw.attestgate.lab\"\nremote_id = \"vpn.branch.lab\"\n\
         psk_file = \"@PSK@\"\nlocal_ts = [\"198.18.101.0/24\"]\nremote_ts = [\"198.19.1.0/24\"]\n\
         nat_pool = \"198.18.101.0/28\"\nnat_mode = \"shared\"\n\n# The identity provider",
        1,
    );
    let more = more.replace("@PSK@", &dir.path().join("corp.psk").display().to_string());
    let applied = dir.path().join("more.toml");
    std::fs::write(&applied, more).unwrap();
    let out = cli.run(&["config", "apply", applied.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ours(&a).0.contains("from 198.18.101.0/28") {
        assert!(
            Instant::now() < deadline,
            "no rule for the new tunnel: {}",
            ours(&a).0
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(d1.try_recv().is_err(), "the corp flow ended on apply");
    assert!(d3.try_recv().is_err(), "the idp flow ended on apply");
    flow_to(&config, "198.19.0.1:8080", |s| s == pool_address);
    flow_to(&config, "idp.lab:443", |s| s == "203.0.113.31");
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert_eq!(
        events.matches("relay.started").count(),
        relay_started,
        "relay restarted"
    );
    let two_rules = ours(&a).0;
    let tables: Vec<&str> = two_rules
        .lines()
        .filter(|l| l.contains("proto 245"))
        .filter_map(|l| l.split("lookup ").nth(1))
        .collect();
    assert_eq!(tables.len(), 2, "{two_rules}");
    assert_ne!(tables[0], tables[1], "{two_rules}");

    // and an apply removing it again: its rule, table and pool route go, corp's flow stays
    let less = dir.path().join("less.toml");
    std::fs::write(&less, &original).unwrap();
    let out = cli.run(&["config", "apply", less.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ours(&a).0.contains("from 198.18.101.0/28") {
        assert!(
            Instant::now() < deadline,
            "the removed tunnel's rule stayed: {}",
            ours(&a).0
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = text(a.ip(&["route", "show", "table", "all"]));
    assert!(!all.contains("198.18.101.0/28"), "{all}");
    assert!(
        ours(&a).0.contains("from 198.18.100.0/26"),
        "{}",
        ours(&a).0
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        d1.try_recv().is_err(),
        "the corp flow ended when branch went"
    );
    flow_to(&config, "198.19.0.1:8080", |s| s == pool_address);

    // the daemon stops (SIGTERM): no rule, route or pool address of ours is left
    let pid = cli_json(&config, &["status"])["pid"]
        .as_u64()
        .unwrap()
        .to_string();
    drop((_d1, _d3));
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemon);
    let (rules, routes) = ours(&a);
    assert!(!rules.contains("proto 245"), "{rules}");
    assert_eq!(routes.trim(), "", "{routes}");
    let all = text(a.ip(&["route", "show", "table", "all"]));
    assert!(
        !all.contains("198.18.100.0/26") && !all.contains("198.18.101.0/28"),
        "{all}"
    );
    assert!(
        operators(&a),
        "the operator's routing was touched at shutdown"
    );
    eprintln!("egress test took {:?}", started.elapsed());
}
