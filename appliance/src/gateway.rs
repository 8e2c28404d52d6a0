//! The relay inside the appliance: its [`relay::Authorizer`] is the policy engine over the
//! device table, its egress binds the source address the decision names, and every change of
//! device state re-decides the open flows and revokes those whose egress no longer holds
//! (DESIGN.md invariant 2).
//!
//! Sources: a tunnel egress's decision carries the device's NAT pool address
//! ([`crate::egress::pool`]; an exhausted pool refuses with `502` and `details="NAT pool
//! exhausted"`), an internet egress's its first pair address (the egress fails over,
//! [`crate::egress::direct`]), a public egress's its configured address or none.
//! Re-deciding an open flow compares egresses only and never leases an address.
//!
//! With `[acme]`, a request whose certificate the built-in device CA lists as revoked is
//! refused (`403`) before the policy is asked, and re-deciding a device's open flows closes
//! them when the certificate it last presented was revoked.

use crate::compliance::DeviceTable;
use crate::egress::pool::{NatPools, PoolError};
use crate::policy::{DeviceState, PolicyEngine, Protocol, SourceSelection, Target, Verdict};
use relay::{Authorizer, DenyStatus, EgressRoute, FlowInfo, RelayDecision, RelayRequest};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

/// What the authorizer reads: swapped by the daemon on apply, refreshed on every sync.
#[derive(Debug)]
pub struct Gateway {
    pub engine: RwLock<Arc<PolicyEngine>>,
    pub devices: Arc<RwLock<DeviceTable>>,
    /// The certificate each device last presented, to re-decide its flows.
    certificates: Mutex<HashMap<String, Presented>>,
    /// The built-in device CA (`[acme]`): a request whose certificate it lists as revoked is
    /// refused, and so are the open flows of a device whose last certificate it revoked.
    revocations: RwLock<Option<Arc<enroll::ca::DeviceCa>>>,
    /// The tunnel egresses' NAT pools.
    pub pools: Arc<NatPools>,
    /// The devices with an open flow through an egress (asked when a pool is exhausted).
    busy: OnceLock<Busy>,
}

/// A device certificate as the relay verified it.
#[derive(Debug, Clone)]
struct Presented {
    not_before: SystemTime,
    not_after: SystemTime,
    /// The serial number's content octets.
    serial: Vec<u8>,
}

struct Busy(BusyDevices);

impl std::fmt::Debug for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Busy")
    }
}

/// Lists the serials of the devices with an open flow through an egress.
pub type BusyDevices = Box<dyn Fn(&str) -> BTreeSet<String> + Send + Sync>;

/// The `details` of a request refused because its tunnel's NAT pool is exhausted.
pub const POOL_EXHAUSTED: &str = "NAT pool exhausted";

fn target(host: &str, port: u16, protocol: relay::Protocol) -> Option<Target> {
    let host = Target::host(host).ok()?;
    let protocol = match protocol {
        relay::Protocol::Udp => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    Some(Target {
        host,
        port,
        protocol,
    })
}

impl Gateway {
    pub fn new(
        engine: Arc<PolicyEngine>,
        devices: Arc<RwLock<DeviceTable>>,
        pools: Arc<NatPools>,
    ) -> Gateway {
        Gateway {
            engine: RwLock::new(engine),
            devices,
            certificates: Mutex::new(HashMap::new()),
            revocations: RwLock::new(None),
            pools,
            busy: OnceLock::new(),
        }
    }

    /// How to learn which devices have open flows through an egress (set once, by the daemon).
    pub fn set_busy(&self, busy: BusyDevices) {
        let _ = self.busy.set(Busy(busy));
    }

    /// The device CA whose revocations count (`None`: `[acme]` is off).
    pub fn set_revocations(&self, ca: Option<Arc<enroll::ca::DeviceCa>>) {
        match self.revocations.write() {
            Ok(mut r) => *r = ca,
            Err(p) => *p.into_inner() = ca,
        }
    }

    /// True when the built-in device CA revoked the certificate with this serial.
    fn revoked(&self, certificate_serial: &[u8]) -> bool {
        let ca = match self.revocations.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        };
        ca.is_some_and(|ca| ca.is_revoked(certificate_serial))
    }

    pub fn set_engine(&self, engine: Arc<PolicyEngine>) {
        match self.engine.write() {
            Ok(mut e) => *e = engine,
            Err(p) => *p.into_inner() = engine,
        }
    }

    /// Re-decides every open flow and resets those whose egress no longer holds. Returns how
    /// many flows were revoked.
    pub fn enforce(&self, relay: &relay::RelayHandle, now: SystemTime) -> usize {
        let mut serials: Vec<String> = relay.flows().into_iter().map(|f| f.device).collect();
        serials.sort();
        serials.dedup();
        self.enforce_devices(relay, &serials, now)
    }

    /// Re-decides the open flows of these devices only (a change of their state), at once.
    pub fn enforce_devices(
        &self,
        relay: &relay::RelayHandle,
        serials: &[String],
        now: SystemTime,
    ) -> usize {
        let certificates = self
            .certificates
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        serials
            .iter()
            .map(|serial| {
                // without a known certificate the flow cannot be re-decided: close it
                let presented = certificates.get(serial);
                relay.revoke(serial, |f| {
                    presented.is_some_and(|p| {
                        !self.revoked(&p.serial)
                            && self.still_allowed(f, (p.not_before, p.not_after), now)
                    })
                })
            })
            .sum()
    }

    fn engine(&self) -> Arc<PolicyEngine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The policy's verdict for a device and target now.
    fn verdict(
        &self,
        serial: &str,
        not_before: SystemTime,
        not_after: SystemTime,
        target: &Target,
        now: SystemTime,
    ) -> Verdict {
        let record = self.devices.read().ok().and_then(|d| d.get(serial));
        let state = DeviceState {
            serial: serial.to_string(),
            record,
            cert_not_before: not_before,
            cert_not_after: not_after,
        };
        self.engine().decide(&state, target, now).verdict
    }

    /// The decision for a device and target now, as the relay sees it; a tunnel egress's
    /// source is leased from its NAT pool here.
    pub fn decide(
        &self,
        serial: &str,
        not_before: SystemTime,
        not_after: SystemTime,
        target: &Target,
        now: SystemTime,
    ) -> (Verdict, RelayDecision) {
        let verdict = self.verdict(serial, not_before, not_after, target, now);
        let relay = self.route(serial, &verdict);
        (verdict, relay)
    }

    fn route(&self, serial: &str, verdict: &Verdict) -> RelayDecision {
        let forward = |source| RelayDecision::Forward {
            egress: EgressRoute {
                name: match verdict {
                    Verdict::Egress { egress, .. } => egress.clone(),
                    _ => String::new(),
                },
                source,
            },
        };
        match verdict {
            Verdict::Deny { status } => RelayDecision::Deny {
                status: if *status == 403 {
                    DenyStatus::Forbidden
                } else {
                    DenyStatus::BadGateway
                },
            },
            Verdict::Direct => RelayDecision::Direct,
            Verdict::Egress { egress, source, .. } => match source {
                SourceSelection::Fixed { address } => forward(Some(*address)),
                // the first of the pair; the egress fails over to the next
                SourceSelection::Addresses { addresses } => forward(addresses.first().copied()),
                SourceSelection::DefaultRoute => forward(None),
                SourceSelection::NatPool { .. } => {
                    let busy = || self.busy.get().map(|b| (b.0)(egress)).unwrap_or_default();
                    let leased = self.pools.address(egress, serial, busy);
                    self.pools.save_if_changed();
                    match leased {
                        Ok(address) => forward(Some(address)),
                        Err(PoolError::Exhausted) => RelayDecision::Refuse {
                            details: POOL_EXHAUSTED.to_string(),
                        },
                        // a tunnel the pools do not know (yet): fail closed
                        Err(PoolError::Unknown) => RelayDecision::Deny {
                            status: DenyStatus::BadGateway,
                        },
                    }
                }
            },
        }
    }

    /// True when `flow` would still leave through the same egress (no address is leased).
    pub fn still_allowed(
        &self,
        flow: &FlowInfo,
        certificate: (SystemTime, SystemTime),
        now: SystemTime,
    ) -> bool {
        let Some(t) = target(&flow.target.host, flow.target.port, flow.protocol) else {
            return false;
        };
        match self.verdict(&flow.device, certificate.0, certificate.1, &t, now) {
            Verdict::Egress { egress, .. } => egress == flow.egress,
            _ => false,
        }
    }
}

impl Authorizer for Gateway {
    fn authorize(&self, request: &RelayRequest<'_>) -> RelayDecision {
        let Some(t) = target(request.host, request.port, request.protocol) else {
            return RelayDecision::Deny {
                status: DenyStatus::BadGateway,
            };
        };
        // DESIGN.md invariant 2: decided at use, so a revocation counts from the next request
        if self.revoked(&request.device.certificate_serial) {
            tracing::info!(device = %request.device.serial, certificate = %enroll::ca::serial_hex(&request.device.certificate_serial), "relay request refused: the device certificate is revoked");
            return RelayDecision::Deny {
                status: DenyStatus::Forbidden,
            };
        }
        if let Ok(mut c) = self.certificates.lock() {
            c.insert(
                request.device.serial.clone(),
                Presented {
                    not_before: request.device.not_before,
                    not_after: request.device.not_after,
                    serial: request.device.certificate_serial.clone(),
                },
            );
        }
        let (verdict, decision) = self.decide(
            &request.device.serial,
            request.device.not_before,
            request.device.not_after,
            &t,
            request.now,
        );
        tracing::debug!(device = %request.device.serial, target = %t, egress = verdict.name(), trusted = verdict.is_trusted(), "relay decision");
        decision
    }
}

/// The built-in device CA (`[acme]`) as the relay loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinCa {
    /// Its certificate (PEM), trusted beside the configured `device_ca`.
    pub certificate: std::path::PathBuf,
    /// Its CRL, when the configuration has CRLs (every trusted CA then needs one).
    pub crl: Option<std::path::PathBuf>,
}

/// The relay's settings from the configuration's `[relay]` and the built-in device CA.
pub fn relay_config(
    r: &config::Relay,
    builtin_ca: Option<&BuiltinCa>,
) -> Result<relay::RelayConfig, String> {
    use config::IdentityField;
    use relay::IdentitySource;
    let tls = relay::tls::TlsFiles {
        certificate: r.certificate.value.clone(),
        private_key: r.private_key.value.clone(),
        device_ca: r
            .device_ca
            .iter()
            .map(|p| p.value.clone())
            .chain(builtin_ca.map(|b| b.certificate.clone()))
            .collect(),
        crl: r
            .crl
            .iter()
            .map(|p| p.value.clone())
            .chain(builtin_ca.and_then(|b| b.crl.clone()))
            .collect(),
    };
    let mut rc = relay::RelayConfig::new(r.http3_listen.clone(), tls);
    rc.http2_listen = r.http2_listen.clone();
    rc.identity = r
        .identity
        .iter()
        .map(|i| match i {
            IdentityField::PermanentIdentifier => IdentitySource::PermanentIdentifier,
            IdentityField::AppleSerial => IdentitySource::AppleSerialOid,
            IdentityField::SubjectCn => IdentitySource::SubjectCn,
            IdentityField::SubjectSerial => IdentitySource::SubjectSerialNumber,
        })
        .collect();
    rc.limits = relay::RelayLimits {
        keepalive_interval: r.limits.keepalive_interval,
        connection_idle_timeout: r.limits.connection_idle_timeout,
        max_streams_per_connection: r.limits.max_streams_per_connection,
        max_connections_per_device: r.limits.max_connections_per_device,
        max_header_bytes: u64::from(r.limits.max_header_bytes),
        stream_idle_timeout: r.limits.stream_idle_timeout,
        ..relay::RelayLimits::default()
    };
    if r.udp_path != config::DEFAULT_UDP_PATH {
        rc.udp_path = Some(r.udp_path.clone());
    }
    if let Some(h) = &r.header_secret {
        let bytes = std::fs::read(&h.file.value)
            .map_err(|e| format!("cannot read {}: {e}", h.file.value.display()))?;
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        rc.header_secret =
            Some(relay::HeaderSecret::new(&h.header, trimmed).map_err(|e| e.to_string())?);
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::policy::NatModeName;
    use std::collections::BTreeMap;

    fn gateway(dir: &std::path::Path, pool: &str) -> Gateway {
        let text = include_str!("../../config/examples/lab.toml")
            .replace("/run/attestgate-lab", &dir.display().to_string());
        let cfg = config::load_str(
            &text,
            std::path::Path::new("t.toml"),
            std::path::Path::new("/"),
            config::FileChecks::Skip,
        )
        .unwrap()
        .config;
        let pools = Arc::new(NatPools::in_memory());
        pools.set_pools(BTreeMap::from([(
            "corp".to_string(),
            (pool.parse().unwrap(), config::NatMode::PerDevice),
        )]));
        let devices = Arc::new(RwLock::new(DeviceTable::open(&cfg.device_store(), &cfg)));
        Gateway::new(Arc::new(PolicyEngine::new(Arc::new(cfg))), devices, pools)
    }

    fn corp() -> Verdict {
        Verdict::Egress {
            egress: "corp".into(),
            egress_type: "tunnel",
            trusted: true,
            source: SourceSelection::NatPool {
                pool: "198.18.100.0/30".parse().unwrap(),
                mode: NatModeName::PerDevice,
            },
        }
    }

    fn source(d: &RelayDecision) -> Option<std::net::IpAddr> {
        match d {
            RelayDecision::Forward { egress } => egress.source,
            _ => None,
        }
    }

    /// A certificate the built-in device CA revoked is refused at the next request, whatever
    /// the policy says; other certificates are decided by the policy as before.
    #[test]
    fn a_revoked_certificate_is_refused_at_the_next_request() {
        use rcgen::PublicKeyData;
        let dir = tempfile::tempdir().unwrap();
        let g = gateway(dir.path(), "198.18.100.0/30");
        let ca = Arc::new(
            enroll::ca::DeviceCa::open(dir.path(), enroll::ca::CaOptions::default()).unwrap(),
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = key.subject_public_key_info();
        let request = enroll::ca::DeviceCertRequest {
            identifier: "C02REVOKE01",
            public_key_spki: &spki,
            apple_extensions: &[],
        };
        let now = SystemTime::now();
        let issued = ca.issue(&request, now).unwrap();
        let other = ca.issue(&request, now).unwrap();
        let identity = |der: &[u8]| {
            relay::identity::device_identity(der, &[relay::IdentitySource::SubjectCn]).unwrap()
        };
        let (revoked_id, other_id) = (identity(&issued.der), identity(&other.der));
        let ask = |device: &relay::DeviceIdentity| {
            g.authorize(&RelayRequest {
                device,
                host: "192.0.2.10",
                port: 443,
                protocol: relay::Protocol::Tcp,
                peer: "192.0.2.1:5000".parse().unwrap(),
                now,
            })
        };
        let forbidden = RelayDecision::Deny {
            status: DenyStatus::Forbidden,
        };
        g.set_revocations(Some(ca.clone()));
        let before = ask(&revoked_id);
        assert_ne!(
            before, forbidden,
            "the policy alone lets it out: {before:?}"
        );
        ca.revoke_certificate(&issued.serial, "lost", now).unwrap();
        assert_eq!(ask(&revoked_id), forbidden);
        assert_eq!(ask(&other_id), before, "only the revoked certificate");
        // without [acme] the CA's list does not count
        g.set_revocations(None);
        assert_eq!(ask(&revoked_id), before);
    }

    #[test]
    fn tunnel_decisions_carry_the_device_pool_address_or_refuse_when_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let g = gateway(dir.path(), "198.18.100.0/30");
        let a = g.route("A", &corp());
        let b = g.route("B", &corp());
        let (sa, sb) = (source(&a).unwrap(), source(&b).unwrap());
        assert_ne!(sa, sb);
        assert!(matches!(&a, RelayDecision::Forward { egress } if egress.name == "corp"));
        assert_eq!(source(&g.route("A", &corp())), Some(sa), "sticky");
        // both devices have open flows: the third is refused with the documented details
        g.set_busy(Box::new(|_| {
            BTreeSet::from(["A".to_string(), "B".to_string()])
        }));
        assert_eq!(
            g.route("C", &corp()),
            RelayDecision::Refuse {
                details: "NAT pool exhausted".into()
            }
        );
        // a tunnel the pools do not know fails closed
        let mut other = corp();
        if let Verdict::Egress { egress, .. } = &mut other {
            *egress = "branch".into();
        }
        assert_eq!(
            g.route("A", &other),
            RelayDecision::Deny {
                status: DenyStatus::BadGateway
            }
        );
        // the internet pair: its first address (the egress fails over)
        let pair = Verdict::Egress {
            egress: "idp-pair".into(),
            egress_type: "internet",
            trusted: true,
            source: SourceSelection::Addresses {
                addresses: vec![
                    "203.0.113.30".parse().unwrap(),
                    "203.0.113.31".parse().unwrap(),
                ],
            },
        };
        assert_eq!(
            source(&g.route("A", &pair)),
            Some("203.0.113.30".parse().unwrap())
        );
    }
}
