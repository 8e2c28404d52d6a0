//! The relay inside the appliance: its [`relay::Authorizer`] is the policy engine over the
//! device table, its egress binds the source address the decision names, and every change of
//! device state re-decides the open flows and revokes those whose egress no longer holds
//! (DESIGN.md invariant 2).
//!
//! Not yet (issue 6): sources from a tunnel's NAT pool (the pool is not routed into the tunnel
//! yet, so such decisions are refused rather than sent out untrusted), fail-over between the
//! internet pair.

use crate::compliance::DeviceTable;
use crate::policy::{DeviceState, PolicyEngine, Protocol, SourceSelection, Target, Verdict};
use relay::{Authorizer, DenyStatus, EgressRoute, FlowInfo, RelayDecision, RelayRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// What the authorizer reads: swapped by the daemon on apply, refreshed on every sync.
#[derive(Debug)]
pub struct Gateway {
    pub engine: RwLock<Arc<PolicyEngine>>,
    pub devices: Arc<RwLock<DeviceTable>>,
    /// The certificate validity window each device last presented, to re-decide its flows.
    certificates: Mutex<HashMap<String, (SystemTime, SystemTime)>>,
}

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
    pub fn new(engine: Arc<PolicyEngine>, devices: Arc<RwLock<DeviceTable>>) -> Gateway {
        Gateway {
            engine: RwLock::new(engine),
            devices,
            certificates: Mutex::new(HashMap::new()),
        }
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
                // without a known certificate window the flow cannot be re-decided: close it
                let window = certificates.get(serial).copied();
                relay.revoke(serial, |f| {
                    window.is_some_and(|w| self.still_allowed(f, w, now))
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

    /// The decision for a device and target now, as the relay sees it.
    pub fn decide(
        &self,
        serial: &str,
        not_before: SystemTime,
        not_after: SystemTime,
        target: &Target,
        now: SystemTime,
    ) -> (Verdict, RelayDecision) {
        let record = self.devices.read().ok().and_then(|d| d.get(serial));
        let state = DeviceState {
            serial: serial.to_string(),
            record,
            cert_not_before: not_before,
            cert_not_after: not_after,
        };
        let decision = self.engine().decide(&state, target, now);
        let relay = match &decision.verdict {
            Verdict::Deny { status } => RelayDecision::Deny {
                status: if *status == 403 {
                    DenyStatus::Forbidden
                } else {
                    DenyStatus::BadGateway
                },
            },
            Verdict::Direct => RelayDecision::Direct,
            Verdict::Egress { egress, source, .. } => match source {
                SourceSelection::Fixed { address } => RelayDecision::Forward {
                    egress: EgressRoute {
                        name: egress.clone(),
                        source: Some(*address),
                    },
                },
                SourceSelection::Addresses { addresses } => RelayDecision::Forward {
                    egress: EgressRoute {
                        name: egress.clone(),
                        source: addresses.first().copied(),
                    },
                },
                SourceSelection::DefaultRoute => RelayDecision::Forward {
                    egress: EgressRoute {
                        name: egress.clone(),
                        source: None,
                    },
                },
                // Fail closed until the NAT pool is routed into the tunnel (issue 6).
                SourceSelection::NatPool { .. } => RelayDecision::Deny {
                    status: DenyStatus::BadGateway,
                },
            },
        };
        (decision.verdict, relay)
    }

    /// True when `flow` would still leave through the same egress.
    pub fn still_allowed(
        &self,
        flow: &FlowInfo,
        certificate: (SystemTime, SystemTime),
        now: SystemTime,
    ) -> bool {
        let Some(t) = target(&flow.target.host, flow.target.port, flow.protocol) else {
            return false;
        };
        match self
            .decide(&flow.device, certificate.0, certificate.1, &t, now)
            .1
        {
            RelayDecision::Forward { egress } => egress.name == flow.egress,
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
        if let Ok(mut c) = self.certificates.lock() {
            c.insert(
                request.device.serial.clone(),
                (request.device.not_before, request.device.not_after),
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

/// The relay's settings from the configuration's `[relay]`.
pub fn relay_config(r: &config::Relay) -> Result<relay::RelayConfig, String> {
    use config::IdentityField;
    use relay::IdentitySource;
    let tls = relay::tls::TlsFiles {
        certificate: r.certificate.value.clone(),
        private_key: r.private_key.value.clone(),
        device_ca: r.device_ca.iter().map(|p| p.value.clone()).collect(),
        crl: r.crl.iter().map(|p| p.value.clone()).collect(),
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

/// The relay's way out: names resolved through each egress's `dns` servers and `hosts`
/// (the host's resolver for an egress without `dns`).
pub fn relay_egress(cfg: &config::Config) -> relay::DirectEgress {
    cfg.egresses
        .iter()
        .filter(|e| !e.dns.is_empty() || !e.hosts.is_empty())
        .fold(relay::DirectEgress::default(), |egress, e| {
            egress.with_egress_dns(
                e.name.value.clone(),
                relay::EgressDns::new(&e.dns, e.hosts.clone()),
            )
        })
}
