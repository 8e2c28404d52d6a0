//! The Jamf Pro and Intune sources against their stand-ins (`tests::standins`): paging, tokens
//! expiring or revoked in the middle of a sync, 429 / 503 with backoff, malformed and
//! incomplete answers (an error, and the device table keeps its previous state), webhook
//! hints for every event type, targeted re-reads, and Intune's state mapping.

use crate::compliance::http::{HttpSettings, Secret};
use crate::compliance::intune::IntuneSource;
use crate::compliance::jamf::{parse_webhook, JamfSource};
use crate::compliance::mdm::{MdmDevice, MdmSources, SourceError};
use crate::compliance::{DeviceTable, SourceStatus};
use config::{Config, RiskLevel};
use rustls_pki_types::CertificateDer;
use std::time::{Duration, Instant, SystemTime};
use tests::standins::intune::{IntuneStandin, ManagedDevice};
use tests::standins::jamf::{JamfData, JamfStandin};
use tests::standins::Fault;

const ID: &str = "attestgate-client";
const SECRET: &str = "s3cret-for-tests";

fn settings(ca_der: &[u8]) -> HttpSettings {
    HttpSettings {
        extra_roots: vec![CertificateDer::from(ca_der.to_vec())],
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        request_timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(20),
        page_size: 2,
        ..HttpSettings::default()
    }
}

fn jamf_source(s: &JamfStandin, settings: HttpSettings, risk: bool) -> JamfSource {
    JamfSource::new(
        s.url(),
        ID,
        Secret::from_string(SECRET.into()),
        vec![1],
        vec![1],
        risk.then(|| "Risk".to_string()),
        settings,
    )
    .unwrap()
}

/// A source reading computer group `group` only, without a risk attribute.
fn computers_only(s: &JamfStandin, secret: &str, group: u32, settings: HttpSettings) -> JamfSource {
    JamfSource::new(
        s.url(),
        ID,
        Secret::from_string(secret.into()),
        vec![group],
        vec![],
        None,
        settings,
    )
    .unwrap()
}

fn assert_status(e: &SourceError, want_status: u16, want_attempts: u32) {
    match e {
        SourceError::Status {
            status, attempts, ..
        } => {
            assert_eq!((*status, *attempts), (want_status, want_attempts), "{e}")
        }
        other => panic!("not a status error: {other}"),
    }
}

fn intune_source(s: &IntuneStandin, settings: HttpSettings) -> IntuneSource {
    IntuneSource::new(
        s.url(),
        s.url(),
        "contoso.onmicrosoft.com",
        ID,
        Secret::from_string(SECRET.into()),
        "intune-compliant",
        settings,
    )
    .unwrap()
}

fn find<'a>(devices: &'a [MdmDevice], serial: &str) -> &'a MdmDevice {
    devices
        .iter()
        .find(|d| d.serial == serial)
        .unwrap_or_else(|| panic!("{serial} missing from {devices:?}"))
}

fn count_path(s: &JamfStandin, path: &str) -> usize {
    s.common().log.iter().filter(|e| e.path == path).count()
}

#[tokio::test]
async fn jamf_full_sync_reads_every_page_groups_and_risk() {
    let mut data = JamfData::sample(7, 5);
    data.computers
        .get_mut(&3)
        .unwrap()
        .attributes
        .insert("Risk".into(), "high".into());
    data.computers.get_mut(&5).unwrap().attributes.clear();
    data.computers
        .get_mut(&7)
        .unwrap()
        .attributes
        .insert("Risk".into(), "bogus".into());
    data.computers.get_mut(&2).unwrap().managed = false;
    let jamf = JamfStandin::start(ID, SECRET, data, Duration::from_secs(60)).await;
    let mut src = jamf_source(&jamf, settings(&jamf.server.tls.ca_der), true);
    let devices = src.full_sync().await.unwrap();
    assert_eq!(devices.len(), 12, "{devices:?}");
    // 7 computers in pages of 2 → 4 pages; 5 mobile devices → 3 pages.
    assert_eq!(count_path(&jamf, "/api/v1/computers-inventory"), 4);
    assert_eq!(count_path(&jamf, "/api/v2/mobile-devices/detail"), 3);
    assert_eq!(jamf.tokens_issued(), 1, "one token serves the whole sync");

    let m1 = find(&devices, "C02STAND0001");
    assert_eq!(m1.groups, vec!["Compliant Macs".to_string()]);
    assert!(m1.managed && m1.platform == "macos");
    assert_eq!(
        m1.udids,
        vec!["00000001-AAAA-BBBB-CCCC-000000000000".to_string()]
    );
    assert_eq!(m1.risk, Some(RiskLevel::Secure));
    let m2 = find(&devices, "C02STAND0002");
    assert!(m2.groups.is_empty() && !m2.managed);
    assert_eq!(find(&devices, "C02STAND0003").risk, Some(RiskLevel::High));
    let m5 = find(&devices, "C02STAND0005");
    assert_eq!(m5.risk, Some(RiskLevel::High), "no value fails closed");
    assert!(
        m5.risk_reasons[0].contains("no value"),
        "{:?}",
        m5.risk_reasons
    );
    assert_eq!(find(&devices, "C02STAND0007").risk, Some(RiskLevel::High));
    let p1 = find(&devices, "DMPSTAND0001");
    assert_eq!(p1.groups, vec!["Compliant iPhones".to_string()]);
    assert_eq!((p1.platform.as_str(), p1.risk), ("ios", None));
    assert!(find(&devices, "DMPSTAND0002").groups.is_empty());

    let fact = m1.to_fact(SystemTime::UNIX_EPOCH);
    assert!(fact.managed == Some(true) && fact.groups.contains("Compliant Macs"));
    assert_eq!(fact.confirmed_at, SystemTime::UNIX_EPOCH);
}

#[tokio::test]
async fn jamf_token_expiring_or_revoked_mid_sync_is_renewed() {
    let jamf =
        JamfStandin::start(ID, SECRET, JamfData::sample(16, 0), Duration::from_secs(2)).await;
    jamf.common().latency = Duration::from_millis(150);
    let mut s = settings(&jamf.server.tls.ca_der);
    s.page_size = 1;
    let mut src = computers_only(&jamf, SECRET, 1, s);
    let started = Instant::now();
    let devices = src.full_sync().await.unwrap();
    assert_eq!(devices.len(), 16);
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the sync outlived a token"
    );
    assert!(
        jamf.tokens_issued() >= 2,
        "renewed before expiry: {}",
        jamf.tokens_issued()
    );
    assert!(
        jamf.common().log.iter().all(|e| e.status == 200),
        "renewed ahead of expiry, so no request was refused"
    );

    // The server revokes every token in the middle of the next sync: one 401, a new token,
    // and the sync completes.
    jamf.common().latency = Duration::ZERO;
    jamf.set_token_lifetime(Duration::from_secs(600));
    jamf.common().log.clear();
    let before = jamf.tokens_issued();
    jamf.common()
        .faults
        .push("/api/v1/computers-inventory", Fault::RevokeTokens);
    // Make sure the client holds a token issued with the long lifetime.
    src.client_mut_for_tests().drop_token();
    let devices = src.full_sync().await.unwrap();
    assert_eq!(devices.len(), 16);
    let statuses: Vec<u16> = jamf.common().log.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(jamf.tokens_issued(), before + 2);
}

#[tokio::test]
async fn jamf_429_and_503_back_off_then_succeed() {
    let jamf =
        JamfStandin::start(ID, SECRET, JamfData::sample(3, 0), Duration::from_secs(60)).await;
    {
        let mut c = jamf.common();
        c.faults.push(
            "/api/v1/computers-inventory",
            Fault::TooManyRequests {
                retry_after: Some(1),
            },
        );
        c.faults
            .push("/api/v1/computers-inventory", Fault::Unavailable);
        c.faults
            .push("/api/v1/computers-inventory", Fault::Unavailable);
        c.faults.push("/api/oauth/token", Fault::Unavailable);
    }
    let mut s = settings(&jamf.server.tls.ca_der);
    s.page_size = 10;
    let mut src = computers_only(&jamf, SECRET, 1, s);
    let devices = src.full_sync().await.unwrap();
    assert_eq!(devices.len(), 3);
    assert_eq!(src.client().stats.retries, 4);
    let log = jamf.common().log.clone();
    let inv: Vec<_> = log
        .iter()
        .filter(|e| e.path == "/api/v1/computers-inventory")
        .collect();
    let statuses: Vec<u16> = inv.iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![429, 503, 503, 200]);
    let after_429 = inv[1].at.duration_since(inv[0].at);
    assert!(
        after_429 >= Duration::from_millis(950),
        "Retry-After honoured: {after_429:?}"
    );
    let second = inv[2].at.duration_since(inv[1].at);
    let third = inv[3].at.duration_since(inv[2].at);
    // Equal jitter: attempt n waits between half and all of base·2^(n-1).
    assert!(
        second >= Duration::from_millis(50) && second < Duration::from_millis(900),
        "{second:?}"
    );
    assert!(
        third >= Duration::from_millis(100) && third < Duration::from_millis(900),
        "{third:?}"
    );
}

#[tokio::test]
async fn jamf_errors_that_persist_fail_the_sync() {
    let jamf =
        JamfStandin::start(ID, SECRET, JamfData::sample(2, 0), Duration::from_secs(60)).await;
    let mut s = settings(&jamf.server.tls.ca_der);
    s.max_attempts = 3;
    for _ in 0..3 {
        jamf.common()
            .faults
            .push("/JSSResource/computergroups", Fault::Unavailable);
    }
    let mut src = computers_only(&jamf, SECRET, 1, s.clone());
    let e = src.full_sync().await.unwrap_err();
    assert_status(&e, 503, 3);
    // A 404 group is not retried.
    let mut src = computers_only(&jamf, SECRET, 99, s.clone());
    let e = src.full_sync().await.unwrap_err();
    assert_status(&e, 404, 1);
    // Wrong secret: the token endpoint's refusal, without the secret in the message.
    let mut bad = computers_only(&jamf, "wrong", 1, s.clone());
    let e = bad.full_sync().await.unwrap_err();
    assert!(matches!(e, SourceError::Auth { status: 401, .. }), "{e}");
    assert!(
        e.to_string().contains("invalid_client") && !e.to_string().contains("wrong"),
        "{e}"
    );
    // A deadline shorter than the answers.
    jamf.common().latency = Duration::from_millis(300);
    s.deadline = Duration::from_millis(700);
    s.page_size = 1;
    let mut slow = computers_only(&jamf, SECRET, 1, s);
    let started = Instant::now();
    let e = slow.full_sync().await.unwrap_err();
    assert!(
        matches!(
            e,
            SourceError::Deadline { .. } | SourceError::Transport { .. }
        ),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn jamf_malformed_or_incomplete_answers_are_errors() {
    let jamf =
        JamfStandin::start(ID, SECRET, JamfData::sample(5, 3), Duration::from_secs(60)).await;
    let mut src = jamf_source(&jamf, settings(&jamf.server.tls.ca_der), true);
    let cases: Vec<(&str, Fault, &str)> = vec![
        ("/api/v1/computers-inventory", Fault::Malformed, "EOF"),
        (
            "/api/v1/computers-inventory",
            Fault::DropField {
                at: "/results/*/general/remoteManagement".into(),
                key: "managed".into(),
            },
            "managed",
        ),
        (
            "/api/v1/computers-inventory",
            Fault::DropField {
                at: "".into(),
                key: "totalCount".into(),
            },
            "totalCount",
        ),
        (
            "/api/v2/mobile-devices/detail",
            Fault::DropField {
                at: "/results/*".into(),
                key: "general".into(),
            },
            "general",
        ),
        (
            "/JSSResource/computergroups",
            Fault::DropField {
                at: "/computer_group".into(),
                key: "computers".into(),
            },
            "computers",
        ),
        (
            "/api/oauth/token",
            Fault::DropField {
                at: "".into(),
                key: "expires_in".into(),
            },
            "expires_in",
        ),
    ];
    for (path, fault, word) in cases {
        src.client_mut_for_tests().drop_token();
        jamf.common().faults.push(path, fault.clone());
        let e = src.full_sync().await.unwrap_err();
        assert!(matches!(e, SourceError::Decode { .. }), "{fault:?}: {e}");
        assert!(e.to_string().contains(word), "{fault:?}: {e}");
        assert_eq!(jamf.common().faults.pending(), 0);
    }
    // Once the answers are whole again, the sync works.
    assert_eq!(src.full_sync().await.unwrap().len(), 8);
}

fn config_with(sources: &str) -> Config {
    let lab = include_str!("../../../config/examples/lab.toml");
    let start = lab.find("[compliance.sources.lab]").unwrap();
    let end = start + lab[start..].find("\n\n").unwrap();
    let text = format!("{}{sources}{}", &lab[..start], &lab[end..]);
    config::load_str(
        &text,
        std::path::Path::new("t.toml"),
        std::path::Path::new("/"),
        config::FileChecks::Skip,
    )
    .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    .config
}

/// One sync of every source of `cfg` as the daemon runs it: fetched outside the table, then
/// applied; the sources' states afterwards.
async fn sync(
    table: &mut DeviceTable,
    sources: &mut MdmSources,
    cfg: &Config,
) -> Vec<SourceStatus> {
    let now = SystemTime::now();
    for s in &cfg.compliance.sources {
        let fetched = crate::compliance::fetch(s, now, sources).await;
        table.apply_fetch(&s.name.value, s.kind.type_name(), fetched, now);
    }
    table.status()
}

#[tokio::test]
async fn a_failed_sync_keeps_the_previous_devices() {
    let jamf =
        JamfStandin::start(ID, SECRET, JamfData::sample(3, 2), Duration::from_secs(60)).await;
    let intune = IntuneStandin::start(
        0,
        "contoso.onmicrosoft.com",
        ID,
        SECRET,
        vec![ManagedDevice::compliant("C02INTUNE01")],
        Duration::from_secs(60),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let cfg = config_with(&format!(
        "[compliance.sources.jamf]\ntype = \"jamf-pro\"\nurl = \"{}\"\nclient_id = \"{ID}\"\nclient_secret_file = \"{}\"\ncomputer_groups = [1]\nmobile_device_groups = [1]\n\n[compliance.sources.intune]\ntype = \"intune\"\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"{ID}\"\nclient_secret_file = \"{}\"\ncompliant_group = \"Compliant Macs\"\ngraph_url = \"{}\"\nlogin_url = \"{}\"\n",
        jamf.url(),
        secret.display(),
        secret.display(),
        intune.url(),
        intune.url(),
    ));
    // Both stand-ins' CAs.
    let mut s = settings(&jamf.server.tls.ca_der);
    s.extra_roots
        .push(CertificateDer::from(intune.server.tls.ca_der.clone()));
    let mut sources = MdmSources::new(s);
    let mut table = DeviceTable::default();

    let status = sync(&mut table, &mut sources, &cfg).await;
    assert!(status.iter().all(|s| s.state == "ok"), "{status:?}");
    assert_eq!(table.device_count(), 6);
    let before = table.get("C02STAND0001").unwrap();
    assert!(before.groups.contains("Compliant Macs") && before.source == "jamf");
    assert!(table
        .get("c02intune01")
        .unwrap()
        .groups
        .contains("Compliant Macs"));

    // Jamf now says C02STAND0001 left the group, but its answer is cut short: nothing of it
    // is applied, the old records stay (aging through max_age), and the status says why.
    jamf.with_data(|d| d.computer_groups.get_mut(&1).unwrap().members.remove(&1));
    jamf.common()
        .faults
        .push("/api/v2/mobile-devices/detail", Fault::Malformed);
    intune.common().faults.push(
        "/v1.0/deviceManagement/managedDevices",
        Fault::DropField {
            at: "/value/*".into(),
            key: "complianceState".into(),
        },
    );
    let status = sync(&mut table, &mut sources, &cfg).await;
    for s in &status {
        assert_eq!(s.state, "error", "{s:?}");
        assert!(
            s.message
                .as_deref()
                .unwrap_or("")
                .contains("unexpected answer"),
            "{s:?}"
        );
    }
    assert_eq!(table.device_count(), 6);
    assert_eq!(
        table.get("C02STAND0001").unwrap(),
        before,
        "previous state kept as it was"
    );

    // The next whole answer applies.
    let status = sync(&mut table, &mut sources, &cfg).await;
    assert!(status.iter().all(|s| s.state == "ok"), "{status:?}");
    assert!(table.get("C02STAND0001").unwrap().groups.is_empty());
    // Sources are kept between syncs: one token each for all three syncs.
    assert_eq!((jamf.tokens_issued(), intune.tokens_issued()), (1, 1));
}

#[tokio::test]
async fn jamf_webhooks_of_every_event_are_hints_for_targeted_reads() {
    let jamf =
        JamfStandin::start(ID, SECRET, JamfData::sample(4, 4), Duration::from_secs(60)).await;
    let mut src = jamf_source(&jamf, settings(&jamf.server.tls.ca_der), false);
    let computer_events = [
        "ComputerAdded",
        "ComputerCheckIn",
        "ComputerInventoryCompleted",
        "ComputerPolicyFinished",
        "ComputerPushCapabilityChanged",
    ];
    for ev in computer_events {
        let body = jamf.webhook(ev, 3, &[], &[]).unwrap();
        let hint = parse_webhook(body.to_string().as_bytes()).unwrap();
        assert_eq!(hint.event, ev);
        assert_eq!(hint.computer_ids, vec![3], "{ev}");
        assert_eq!(hint.serials, vec!["C02STAND0003".to_string()], "{ev}");
        assert_eq!(hint.udids.len(), 1, "{ev}");
        assert!(hint.mobile_device_ids.is_empty() && hint.names_devices());
    }
    let mobile_events = [
        "MobileDeviceEnrolled",
        "MobileDeviceUnEnrolled",
        "MobileDeviceCheckIn",
        "MobileDeviceCommandCompleted",
        "MobileDevicePushSent",
        "MobileDeviceInventoryCompleted",
    ];
    for ev in mobile_events {
        let body = jamf.webhook(ev, 2, &[], &[]).unwrap();
        let hint = parse_webhook(body.to_string().as_bytes()).unwrap();
        assert_eq!(hint.mobile_device_ids, vec![2], "{ev}");
        assert_eq!(hint.serials, vec!["DMPSTAND0002".to_string()], "{ev}");
        assert!(hint.computer_ids.is_empty());
    }
    for ev in ["JSSStartup", "JSSShutdown"] {
        let hint = parse_webhook(
            jamf.webhook(ev, 0, &[], &[])
                .unwrap()
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(!hint.names_devices(), "{ev}");
    }
    // Bad bodies.
    for bad in [
        &b"not json"[..],
        br#"{"event": {}}"#,
        br#"{"webhook": {"webhookEvent": "ComputerAdded"}, "event": {"serialNumber": "X"}}"#,
        br#"{"webhook": {"webhookEvent": "SmartGroupComputerMembershipChange"}, "event": {"jssid": 1}}"#,
        br#"{"webhook": {"webhookEvent": "ComputerCheckIn"}, "event": {"jssID": 1}}"#,
    ] {
        assert!(parse_webhook(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }

    // A Mac leaves the compliant group and an iPhone is unenrolled: the hints re-read only
    // those devices (filtered inventory, no full paging) and give their new state.
    jamf.with_data(|d| {
        d.computer_groups.get_mut(&1).unwrap().members.remove(&1);
        d.mobile_devices.get_mut(&3).unwrap().managed = false;
    });
    jamf.common().log.clear();
    let body = jamf
        .webhook("SmartGroupComputerMembershipChange", 1, &[], &[1])
        .unwrap();
    let hint = parse_webhook(body.to_string().as_bytes()).unwrap();
    assert_eq!(
        (hint.group_id, hint.computer_ids.clone()),
        (Some(1), vec![1])
    );
    let devices = src.refresh_hint(&hint).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].serial, "C02STAND0001");
    assert!(devices[0].groups.is_empty() && devices[0].managed);
    let log = jamf.common().log.clone();
    assert!(
        log.iter()
            .filter(|e| e.path.starts_with("/api/v"))
            .all(|e| e.query.contains("filter=")),
        "{log:?}"
    );

    let body = jamf.webhook("MobileDeviceUnEnrolled", 3, &[], &[]).unwrap();
    let devices = src
        .refresh_hint(&parse_webhook(body.to_string().as_bytes()).unwrap())
        .await
        .unwrap();
    assert_eq!(devices.len(), 1);
    assert!(!devices[0].managed && devices[0].groups == vec!["Compliant iPhones".to_string()]);

    // A smart group this source does not read: no request at all.
    jamf.with_data(|d| {
        d.computer_groups.insert(
            7,
            tests::standins::jamf::Group {
                name: "Other".into(),
                members: [2].into(),
            },
        )
    });
    jamf.common().log.clear();
    let other = jamf
        .webhook("SmartGroupComputerMembershipChange", 7, &[2], &[])
        .unwrap();
    let hint = parse_webhook(other.to_string().as_bytes()).unwrap();
    assert!(src.refresh_hint(&hint).await.unwrap().is_empty());
    assert!(jamf.common().log.is_empty());

    // By serial, and a serial Jamf does not know.
    let d = src.refresh_device(" c02stand0002 ").await.unwrap().unwrap();
    assert_eq!(d.serial, "C02STAND0002");
    assert!(src.refresh_device("NOSUCHSERIAL").await.unwrap().is_none());
    // A webhook naming an id Jamf no longer has gives no device.
    let ghost = parse_webhook(
        br#"{"webhook": {"webhookEvent": "ComputerAdded"}, "event": {"jssID": 999, "serialNumber": "GHOST"}}"#,
    )
    .unwrap();
    assert!(src.refresh_hint(&ghost).await.unwrap().is_empty());
}

/// An Intune stand-in with `n` compliant Macs `MAC0001`….
async fn compliant_macs(n: u32, token_lifetime: Duration) -> IntuneStandin {
    let devices = (1..=n)
        .map(|i| ManagedDevice::compliant(&format!("MAC{i:04}")))
        .collect();
    IntuneStandin::start(
        0,
        "contoso.onmicrosoft.com",
        ID,
        SECRET,
        devices,
        token_lifetime,
    )
    .await
}

fn intune_device(
    serial: &str,
    compliance: &str,
    threat: &str,
    mgmt: &str,
    os: &str,
    sync: &str,
) -> ManagedDevice {
    ManagedDevice {
        serial: serial.into(),
        compliance_state: compliance.into(),
        threat_state: threat.into(),
        os: os.into(),
        management_state: mgmt.into(),
        udid: None,
        last_sync: sync.into(),
    }
}

#[tokio::test]
async fn intune_pages_maps_states_and_prefers_the_newest_record() {
    let t = "2026-01-01T00:00:00Z";
    let devices = vec![
        intune_device("MAC0001", "compliant", "secured", "managed", "macOS", t),
        intune_device("MAC0002", "noncompliant", "unknown", "managed", "macOS", t),
        intune_device(
            "IOS0003",
            "inGracePeriod",
            "lowSeverity",
            "managed",
            "iOS",
            t,
        ),
        intune_device(
            "IOS0004",
            "compliant",
            "mediumSeverity",
            "retirePending",
            "iOS",
            t,
        ),
        intune_device(
            "IOS0005",
            "compliant",
            "compromised",
            "managed",
            "iPadOS",
            t,
        ),
        intune_device("IOS0006", "compliant", "unresponsive", "managed", "iOS", t),
        intune_device("", "compliant", "secured", "managed", "Windows", t),
        // A re-enrolled Mac: the old record is noncompliant, the newer one compliant.
        intune_device(
            "MAC0008",
            "noncompliant",
            "secured",
            "managed",
            "macOS",
            "2025-06-01T00:00:00Z",
        ),
        intune_device(
            "MAC0008",
            "compliant",
            "secured",
            "managed",
            "macOS",
            "2026-02-01T10:00:00Z",
        ),
        intune_device("O'NEIL01", "compliant", "unknown", "managed", "macOS", t),
    ];
    let intune = IntuneStandin::start(
        0,
        "contoso.onmicrosoft.com",
        ID,
        SECRET,
        devices,
        Duration::from_secs(60),
    )
    .await;
    intune.set_page_size(3);
    let mut src = intune_source(&intune, settings(&intune.server.tls.ca_der));
    let got = src.full_sync().await.unwrap();
    let pages = intune
        .common()
        .log
        .iter()
        .filter(|e| e.path.starts_with("/v1.0/"))
        .count();
    assert_eq!(pages, 4, "10 records, 3 a page");
    assert_eq!(
        got.len(),
        8,
        "no serial skipped, duplicates merged: {got:?}"
    );
    let g = |s| find(&got, s).clone();
    let m1 = g("MAC0001");
    assert_eq!(
        (m1.groups.clone(), m1.managed, m1.risk, m1.platform.as_str()),
        (
            vec!["intune-compliant".to_string()],
            true,
            Some(RiskLevel::Secure),
            "macos"
        )
    );
    let m2 = g("MAC0002");
    assert!(m2.groups.is_empty() && m2.risk.is_none() && m2.risk_reasons.is_empty());
    let i3 = g("IOS0003");
    assert!(i3.groups.is_empty(), "grace period is not compliant");
    assert_eq!(i3.risk, Some(RiskLevel::Low));
    let i4 = g("IOS0004");
    assert!(!i4.managed && i4.risk == Some(RiskLevel::Medium));
    assert_eq!(g("IOS0005").risk, Some(RiskLevel::High));
    assert_eq!(g("IOS0005").platform, "ipados");
    assert_eq!(g("IOS0006").risk, Some(RiskLevel::High));
    assert_eq!(g("MAC0008").groups, vec!["intune-compliant".to_string()]);
    // Only the selected properties were asked for and read.
    let q = intune.common().log[1].query.clone();
    assert!(q.contains("$select=id,serialNumber,complianceState"), "{q}");

    // Targeted re-read, with an OData-quoted serial.
    let d = src.refresh_device("o'neil01").await.unwrap().unwrap();
    assert_eq!(d.serial, "O'NEIL01");
    assert!(src.refresh_device("NOPE").await.unwrap().is_none());
}

#[tokio::test]
async fn intune_token_renewal_errors_and_missing_fields() {
    let intune = compliant_macs(8, Duration::from_secs(1)).await;
    intune.set_page_size(1);
    intune.common().latency = Duration::from_millis(150);
    let mut src = intune_source(&intune, settings(&intune.server.tls.ca_der));
    assert_eq!(src.full_sync().await.unwrap().len(), 8);
    assert!(intune.tokens_issued() >= 2);

    intune.common().latency = Duration::ZERO;
    intune.set_token_lifetime(Duration::from_secs(600));
    src.client_mut_for_tests().drop_token();
    {
        let mut c = intune.common();
        c.faults.push(
            "/v1.0/",
            Fault::TooManyRequests {
                retry_after: Some(1),
            },
        );
        c.faults.push("/v1.0/", Fault::Status(502));
        c.faults.push("/v1.0/", Fault::RevokeTokens);
    }
    assert_eq!(src.full_sync().await.unwrap().len(), 8);

    for (at, key) in [
        ("/value/*", "partnerReportedThreatState"),
        ("/value/*", "managementState"),
        ("", "value"),
    ] {
        intune.common().faults.push(
            "/v1.0/",
            Fault::DropField {
                at: at.into(),
                key: key.into(),
            },
        );
        let e = src.full_sync().await.unwrap_err();
        assert!(
            matches!(e, SourceError::Decode { .. }) && e.to_string().contains(key),
            "{e}"
        );
    }
    // A wrong tenant is refused by the token endpoint.
    let mut wrong = IntuneSource::new(
        intune.url(),
        intune.url(),
        "fabrikam.onmicrosoft.com",
        ID,
        Secret::from_string(SECRET.into()),
        "g",
        settings(&intune.server.tls.ca_der),
    )
    .unwrap();
    let e = wrong.full_sync().await.unwrap_err();
    assert!(matches!(e, SourceError::Auth { status: 400, .. }), "{e}");
}

#[tokio::test]
async fn intune_next_link_to_another_origin_is_refused() {
    let intune = compliant_macs(4, Duration::from_secs(60)).await;
    intune.set_page_size(2);
    intune.set_next_link_base("https://graph.attacker.example");
    let mut src = intune_source(&intune, settings(&intune.server.tls.ca_der));
    let e = src.full_sync().await.unwrap_err();
    assert!(
        matches!(e, SourceError::Inconsistent(_)) && e.to_string().contains("nextLink"),
        "{e}"
    );
    let graph_requests = intune
        .common()
        .log
        .iter()
        .filter(|e| e.path.starts_with("/v1.0/"))
        .count();
    assert_eq!(graph_requests, 1, "the foreign link was never followed");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Figures: a full sync of 5,000 Macs and 1,000 iPhones in pages of 200, and 100 webhook
/// hints (parse + targeted re-read) against the local stand-in.
#[tokio::test]
async fn jamf_sync_and_hint_figures() {
    let jamf = JamfStandin::start(
        ID,
        SECRET,
        JamfData::sample(5000, 1000),
        Duration::from_secs(600),
    )
    .await;
    let mut s = settings(&jamf.server.tls.ca_der);
    s.page_size = 200;
    s.deadline = Duration::from_secs(120);
    let mut src = jamf_source(&jamf, s, true);
    let started = Instant::now();
    let devices = src.full_sync().await.unwrap();
    let full = started.elapsed();
    assert_eq!(devices.len(), 6000);
    let mut lat = Vec::new();
    for i in 0..100u32 {
        let id = 1 + (i * 37) % 5000;
        let member = i % 2 == 0;
        jamf.with_data(|d| {
            let g = &mut d.computer_groups.get_mut(&1).unwrap().members;
            if member {
                g.insert(id)
            } else {
                g.remove(&id)
            }
        });
        let (added, removed) = if member {
            (vec![id], vec![])
        } else {
            (vec![], vec![id])
        };
        let body = jamf
            .webhook("SmartGroupComputerMembershipChange", 1, &added, &removed)
            .unwrap()
            .to_string();
        let t = Instant::now();
        let hint = parse_webhook(body.as_bytes()).unwrap();
        let got = src.refresh_hint(&hint).await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].groups.is_empty(), !member, "device {id}");
    }
    lat.sort();
    eprintln!(
        "FIGURES jamf stand-in: full sync of 6000 devices {:?} ({} requests); webhook hint → re-read: median {:?}, p99 {:?}",
        full,
        src.client().stats.requests,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    assert!(percentile(&lat, 0.99) < Duration::from_secs(1));
}
