//! `attestgate idp entra sync|check`: the real binary against the Graph stand-in on 127.0.0.1
//! (tests/src/standins/graph.rs), trusting the stand-in's CA through SSL_CERT_FILE.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use tests::standins::graph::GraphStandin;
use tests::standins::Fault;

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "attestgate-app";
const SECRET: &str = "s3cret-not-to-be-printed";
const NAME: &str = "attestgate trusted egress";

struct Env {
    dir: tempfile::TempDir,
    ca: PathBuf,
    graph: GraphStandin,
}

impl Env {
    async fn new() -> Env {
        let graph = GraphStandin::start(0, TENANT, CLIENT, SECRET).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &graph.server.tls.ca_pem).unwrap();
        let secret = dir.path().join("entra.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = Env { dir, ca, graph };
        env.write_config(&["203.0.113.30", "203.0.113.31", "2001:db8::30"]);
        env
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("attestgate.toml")
    }

    fn write_config(&self, pair: &[&str]) {
        let list: Vec<String> = pair.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            r#"[relay]
certificate = "relay.crt"
private_key = "relay.key"
device_ca = ["device-ca.crt"]

[egress.idp-pair]
type = "internet"
source_addresses = [{}]

[egress.public]
type = "public"
source_address = "198.51.100.9"

[compliance]
compliant_groups = ["Compliant Macs"]

[idp.entra]
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret_file = "entra.secret"
graph_url = "{url}"
login_url = "{url}"
"#,
            list.join(", "),
            url = self.graph.url()
        );
        std::fs::write(self.config(), text).unwrap();
    }

    /// Runs `attestgate ARGS` off the async runtime; returns its output and how long it took.
    async fn run(&self, args: &[&str]) -> (Output, Duration) {
        let bin = env!("CARGO_BIN_EXE_attestgate");
        let config = self.config();
        let ca = self.ca.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let out = std::process::Command::new(bin)
                .arg("--config")
                .arg(&config)
                .args(&args)
                .env("SSL_CERT_FILE", &ca)
                .env_remove("SSL_CERT_DIR")
                .output()
                .unwrap();
            (out, start.elapsed())
        })
        .await
        .unwrap()
    }
}

fn text(o: &Output) -> (String, String) {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(
        !out.contains(SECRET) && !err.contains(SECRET),
        "secret printed"
    );
    assert!(
        !out.contains("standin-token") && !err.contains("standin-token"),
        "token printed"
    );
    (out, err)
}

fn ok(o: &Output) -> String {
    let (out, err) = text(o);
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status.code()
    );
    out
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_creates_then_is_idempotent_then_follows_changes() {
    let env = Env::new().await;
    // dry run: nothing written
    let (o, _) = env.run(&["idp", "entra", "sync", "--dry-run"]).await;
    let out = ok(&o);
    assert!(out.contains("would be created with 3 range(s)"), "{out}");
    assert!(env.graph.state().locations.is_empty());

    // first sync creates exactly the trusted set, trusted, with the documented types
    let (o, _) = env.run(&["idp", "entra", "sync"]).await;
    let out = ok(&o);
    assert!(out.contains("created with 3 range(s), trusted"), "{out}");
    assert!(
        out.contains("+ 203.0.113.30/32   (egress idp-pair)"),
        "{out}"
    );
    assert!(out.contains("+ 2001:db8::30/128"), "{out}");
    assert_eq!(
        env.graph.ranges_of(NAME).unwrap(),
        sorted(&["2001:db8::30/128", "203.0.113.30/32", "203.0.113.31/32"])
    );
    {
        let st = env.graph.state();
        assert_eq!(st.writes.len(), 1);
        let w = &st.writes[0];
        assert_eq!(w.method, "POST");
        assert_eq!(w.body["@odata.type"], "#microsoft.graph.ipNamedLocation");
        assert_eq!(w.body["isTrusted"], true);
        assert_eq!(w.body["displayName"], NAME);
        let loc = st.locations.values().next().unwrap();
        assert_eq!(loc["isTrusted"], true);
    }
    // the lookup used the documented $filter
    assert!(env.graph.common().log.iter().any(|l| l.method == "GET"
        && l.query
            .contains("$filter=displayName%20eq%20%27attestgate%20trusted%20egress%27")));

    // second sync: no write
    let (o, _) = env.run(&["idp", "entra", "sync"]).await;
    let out = ok(&o);
    assert!(out.contains("unchanged, 3 range(s), trusted"), "{out}");
    assert_eq!(
        env.graph.state().writes.len(),
        1,
        "a sync with nothing to change wrote"
    );

    // an address changes: PATCH with exactly the new set, carrying @odata.type
    env.write_config(&["203.0.113.30", "203.0.113.32", "2001:db8::30"]);
    let (o, _) = env.run(&["idp", "entra", "sync"]).await;
    let out = ok(&o);
    assert!(out.contains("updated to 3 range(s)"), "{out}");
    assert!(out.contains("+ 203.0.113.32/32"), "{out}");
    assert!(out.contains("- 203.0.113.31/32"), "{out}");
    {
        let st = env.graph.state();
        assert_eq!(st.writes.len(), 2);
        let w = &st.writes[1];
        assert_eq!(w.method, "PATCH");
        assert!(w.path.ends_with(st.locations.keys().next().unwrap()));
        assert_eq!(w.body["@odata.type"], "#microsoft.graph.ipNamedLocation");
        let mut sent: Vec<&str> = w.body["ipRanges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["cidrAddress"].as_str().unwrap())
            .collect();
        sent.sort();
        assert_eq!(
            sent,
            ["2001:db8::30/128", "203.0.113.30/32", "203.0.113.32/32"]
        );
    }

    // someone adds a range (and untrusts it) in the portal: corrected
    {
        let mut st = env.graph.state();
        let loc = st.locations.values_mut().next().unwrap();
        loc["ipRanges"].as_array_mut().unwrap().push(
            json!({"@odata.type": "#microsoft.graph.iPv4CidrRange", "cidrAddress": "0.0.0.0/1"}),
        );
        loc["isTrusted"] = json!(false);
    }
    let (o, _) = env.run(&["idp", "entra", "sync"]).await;
    let out = ok(&o);
    assert!(out.contains("- 0.0.0.0/1"), "{out}");
    assert!(out.contains("marked trusted (it was not)"), "{out}");
    assert_eq!(
        env.graph.ranges_of(NAME).unwrap(),
        sorted(&["2001:db8::30/128", "203.0.113.30/32", "203.0.113.32/32"])
    );
    assert_eq!(env.graph.state().locations.len(), 1);
    let loc = env.graph.state().locations.values().next().unwrap().clone();
    assert_eq!(loc["isTrusted"], true);

    // --json
    let (o, _) = env.run(&["--json", "idp", "entra", "sync"]).await;
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["plan"]["action"], "unchanged");
    assert_eq!(v["trusted"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_errors_are_explained() {
    let env = Env::new().await;
    env.graph.state().deny_writes = true;
    let (o, _) = env.run(&["idp", "entra", "sync"]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("creating the named location: Graph answered HTTP 403 AccessDenied"),
        "{err}"
    );
    assert!(
        err.contains("Policy.Read.All and Policy.ReadWrite.ConditionalAccess"),
        "{err}"
    );
    assert!(env.graph.state().locations.is_empty());

    env.graph.state().deny_reads = true;
    let (o, _) = env.run(&["idp", "entra", "check"]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reading the named locations: Graph answered HTTP 403"),
        "{err}"
    );

    // a wrong secret: the token endpoint's OAuth error, with what to check
    std::fs::write(env.dir.path().join("entra.secret"), "wrong\n").unwrap();
    let (o, _) = env.run(&["idp", "entra", "sync"]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid_client"), "{err}");
    assert!(err.contains("client_id and the secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_after_retry_after() {
    let env = Env::new().await;
    {
        let mut c = env.graph.common();
        c.faults.push(
            "/v1.0/identity/conditionalAccess/namedLocations",
            Fault::TooManyRequests {
                retry_after: Some(1),
            },
        );
        c.faults.push(
            "/v1.0/identity/conditionalAccess/namedLocations",
            Fault::TooManyRequests {
                retry_after: Some(1),
            },
        );
    }
    let (o, took) = env.run(&["idp", "entra", "sync"]).await;
    let out = ok(&o);
    assert!(out.contains("created with 3 range(s)"), "{out}");
    // two waits of Retry-After: 1 s (the faults meet the first two requests, both GETs)
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let statuses: Vec<(String, u16)> = env
        .graph
        .common()
        .log
        .iter()
        .filter(|l| l.path.contains("namedLocations"))
        .map(|l| (l.method.clone(), l.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("GET".to_string(), 429),
            ("GET".to_string(), 429),
            ("GET".to_string(), 200),
            ("POST".to_string(), 201)
        ]
    );
    assert_eq!(
        env.graph.state().locations.len(),
        1,
        "a throttled POST created twice"
    );

    // throttled beyond the attempts: a clear message, nothing written
    {
        let mut c = env.graph.common();
        for _ in 0..6 {
            c.faults.push(
                "/v1.0/identity/conditionalAccess/namedLocations",
                Fault::TooManyRequests {
                    retry_after: Some(0),
                },
            );
        }
    }
    let (o, _) = env.run(&["idp", "entra", "sync"]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("kept throttling"), "{err}");
}

fn policy(name: &str, locations: Value, grant: Value) -> Value {
    json!({
        "id": format!("pol-{}", name.len()), "displayName": name, "state": "enabled",
        "createdDateTime": "2026-01-01T00:00:00Z", "modifiedDateTime": null,
        "conditions": {
            "userRiskLevels": [], "signInRiskLevels": [], "clientAppTypes": ["all"],
            "platforms": null, "devices": null, "clientApplications": null, "times": null,
            "applications": {"includeApplications": ["All"], "excludeApplications": [], "includeUserActions": []},
            "users": {"includeUsers": ["All"], "excludeUsers": ["break-glass-id"], "includeGroups": [], "excludeGroups": [], "includeRoles": [], "excludeRoles": []},
            "locations": locations,
        },
        "grantControls": grant,
        "sessionControls": null,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_whether_the_positions_differ() {
    let env = Env::new().await;
    ok(&env.run(&["idp", "entra", "sync"]).await.0);
    // a country location someone else made
    env.graph.insert_location(json!({
        "@odata.type": "#microsoft.graph.countryNamedLocation", "displayName": "Home countries",
        "countriesAndRegions": ["DE"], "includeUnknownCountriesAndRegions": false
    }));
    // policies that ignore locations: MFA for everyone, report-only block outside
    let mut report_only = policy(
        "Block outside trusted egress (report-only)",
        json!({"includeLocations": ["All"], "excludeLocations": ["AllTrusted"]}),
        json!({"operator": "OR", "builtInControls": ["block"]}),
    );
    report_only["state"] = json!("enabledForReportingButNotEnforced");
    env.graph.state().policies = vec![
        policy(
            "MFA for everyone",
            Value::Null,
            json!({"operator": "OR", "builtInControls": ["mfa"]}),
        ),
        report_only,
    ];
    let (o, _) = env.run(&["idp", "entra", "check"]).await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("result: NOT as intended"), "{out}");
    assert!(
        out.contains("no enabled policy has a location condition"),
        "{out}"
    );
    assert!(out.contains("report-only: not enforced"), "{out}");
    assert!(out.contains("untrusted 198.51.100.9"), "{out}");

    // enforce: block unless the named location, by id
    let id = env
        .graph
        .state()
        .locations
        .iter()
        .find(|(_, l)| l["displayName"] == NAME)
        .unwrap()
        .0
        .clone();
    env.graph.state().policies.push(policy(
        "Compliant device outside the trusted egress",
        json!({"includeLocations": ["All"], "excludeLocations": [id]}),
        json!({"operator": "OR", "builtInControls": ["compliantDevice"]}),
    ));
    let (o, _) = env.run(&["idp", "entra", "check"]).await;
    let out = ok(&o);
    assert!(out.contains("result: as intended"), "{out}");
    assert!(out.contains("trusted   203.0.113.30 (in \"attestgate trusted egress\"): allowed without a managed device"), "{out}");
    assert!(
        out.contains("untrusted 198.51.100.9: needs a compliant or hybrid-joined device"),
        "{out}"
    );

    // --json and an explicit untrusted address
    let (o, _) = env
        .run(&[
            "--json",
            "idp",
            "entra",
            "check",
            "--untrusted",
            "192.0.2.200",
        ])
        .await;
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["report"]["ok"], true);
    assert_eq!(v["report"]["untrusted"]["address"], "192.0.2.200");
    assert_eq!(v["report"]["untrusted"]["outcome"], "managed-device");

    // a trusted address as --untrusted is a usage mistake
    let (o, _) = env
        .run(&["idp", "entra", "check", "--untrusted", "203.0.113.31"])
        .await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("is a trusted egress address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idp_section_it_says_so() {
    let env = Env::new().await;
    let text_ = std::fs::read_to_string(env.config()).unwrap();
    let cut = text_.find("[idp.entra]").unwrap();
    std::fs::write(env.config(), &text_[..cut]).unwrap();
    let (o, _) = env.run(&["idp", "entra", "sync"]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("[idp.entra] is not configured"), "{err}");
    let _ = Path::new("");
}
