//! `attestgate run`: the foreground daemon. Logs to stderr (systemd collects it), stops
//! gracefully on SIGTERM/SIGINT, re-reads its configuration on SIGHUP, and answers the CLI on
//! the control socket.
//!
//! What runs: configuration (load, apply, reload), the compliance sources and store, the policy
//! engine, the relay with the appliance's egresses (NAT pools, internet failover), the IPsec
//! tunnels with their policy routing, the admin listener, the built-in ACME server and device
//! CA (`[acme]`, [`crate::acme`]: the relay trusts the CA, `attestgate ca revoke` takes effect
//! at the next request and closes the device's connections at once), events.

use crate::compliance::DeviceTable;
use crate::control::{Request, Response, MAX_LINE, TIMEOUT};
use crate::egress::tunnel::{Control, TunnelHandle};
use crate::events::EventLog;
use crate::policy::{DeviceState, PolicyEngine, Target};
use config::{ConfigError, FileChecks, Loaded};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

/// After a revocation, how long the device's flow resets have to go out before its
/// connections are closed.
const CONNECTION_CLOSE_DELAY: Duration = Duration::from_millis(250);

/// The answer to `ca` commands without `[acme]`.
const ACME_OFF: &str =
    "the built-in device CA is not running: [acme] is not enabled (or failed to start, see `status`)";

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("control socket {}: {message}", path.display())]
    Socket { path: PathBuf, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The configuration in force.
#[derive(Debug)]
pub struct Running {
    pub loaded: Arc<Loaded>,
    pub engine: PolicyEngine,
    pub generation: u64,
    pub applied_at: SystemTime,
}

#[derive(Debug, Clone)]
struct ApplyRecord {
    at: SystemTime,
    ok: bool,
    message: String,
}

/// A webhook's request to re-read these sources, with what it named.
type Resync = (Vec<String>, crate::compliance::admin::WebhookHint);

/// State shared by the socket handlers, the refresher and the signal loop.
#[derive(Debug)]
pub struct Shared {
    config_path: PathBuf,
    running: RwLock<Arc<Running>>,
    devices: Arc<RwLock<DeviceTable>>,
    /// Jamf Pro and Intune clients, kept between syncs so their tokens are reused; used under
    /// `sync_lock`, outside the device table's lock.
    mdm: tokio::sync::Mutex<crate::compliance::mdm::MdmSources>,
    gateway: Arc<crate::gateway::Gateway>,
    /// The relay's way out; its per-egress data is swapped on apply, without a relay restart.
    egress: Arc<crate::egress::ApplianceEgress>,
    relay: Mutex<Option<(String, relay::RelayHandle)>>,
    relay_state: Mutex<String>,
    events: Arc<EventLog>,
    tunnels: Mutex<BTreeMap<String, (String, TunnelHandle)>>,
    started: SystemTime,
    apply_lock: tokio::sync::Mutex<()>,
    last_apply: Mutex<Option<ApplyRecord>>,
    socket: PathBuf,
    /// The admin HTTPS listener (webhooks, risk feed) and its settings' fingerprint.
    admin: Mutex<Option<(String, crate::compliance::admin::AdminListener)>>,
    admin_state: Mutex<String>,
    /// Webhook-triggered re-reads, coalesced by one task.
    resync_tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Resync>>>,
    /// Serializes source syncs (refresh, CLI, webhook, apply).
    sync_lock: tokio::sync::Mutex<()>,
    /// Store batches are committed in the order they were taken.
    store_order: Mutex<()>,
    /// The ACME server and its device CA (`[acme]`), with its settings' fingerprint.
    acme: Mutex<Option<(String, crate::acme::AcmeRuntime)>>,
    /// Set once at start, for handing `Arc<Shared>` to the admin listener.
    self_ref: std::sync::OnceLock<std::sync::Weak<Shared>>,
}

impl crate::compliance::admin::AdminBackend for Shared {
    fn config(&self) -> Arc<config::Config> {
        Arc::new(self.current().loaded.config.clone())
    }
    fn devices(&self) -> &RwLock<DeviceTable> {
        &self.devices
    }
    fn resync(&self, sources: Vec<String>, hint: crate::compliance::admin::WebhookHint) {
        // A hint naming devices re-reads those from a Jamf Pro source; anything else re-reads
        // the whole source (see `Shared::webhook_reread`).
        if let Ok(tx) = self.resync_tx.lock() {
            if let Some(tx) = tx.as_ref() {
                let _ = tx.send((sources, hint));
            }
        }
    }
    fn changed(&self, changes: Vec<crate::compliance::Change>) {
        Shared::changed(self, changes)
    }
    fn event(&self, kind: &str, fields: Value) {
        self.events.emit(kind, fields)
    }
    fn acme(&self) -> Option<Arc<enroll::acme::AcmeServer>> {
        let slot = self.acme.lock().ok()?;
        slot.as_ref().map(|(_, a)| a.server.clone())
    }
}

impl Shared {
    fn current(&self) -> Arc<Running> {
        match self.running.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the sources (`only`: these names; `None`: all), applies what they returned
    /// (a failed or malformed source keeps its previous facts and raises an alert), and
    /// re-decides the open flows of every device that changed.
    async fn sync_devices(&self, only: Option<&[String]>) -> usize {
        // one sync at a time, so a slow older read never lands after a newer one
        let _one = self.sync_lock.lock().await;
        let cfg = self.current();
        let now = SystemTime::now();
        let mut fetched = Vec::new();
        {
            // the network reads happen here, outside the device table's lock
            let mut mdm = self.mdm.lock().await;
            mdm.prune(&cfg.loaded.config);
            for source in &cfg.loaded.config.compliance.sources {
                if only.is_some_and(|o| !o.contains(&source.name.value)) {
                    continue;
                }
                let f = crate::compliance::fetch(source, now, &mut mdm).await;
                fetched.push((source.name.value.clone(), source.kind.type_name(), f));
            }
        }
        let names: Vec<String> = fetched.iter().map(|(n, _, _)| n.clone()).collect();
        let (changes, status) = match self.devices.write() {
            Ok(mut d) => {
                let mut changes = Vec::new();
                for (name, kind, f) in fetched {
                    changes.extend(d.apply_fetch(&name, kind, f, now));
                }
                changes.extend(d.prune(&cfg.loaded.config));
                (changes, d.status())
            }
            Err(_) => return 0,
        };
        let count = changes.len();
        self.changed(changes);
        for s in status.into_iter().filter(|s| names.contains(&s.name)) {
            match s.state {
                "ok" => {
                    tracing::debug!(source = %s.name, devices = s.devices, "compliance source synced")
                }
                "error" => self.events.emit(
                    "compliance.sync_failed",
                    json!({"source": s.name, "error": s.message, "kept_devices": s.devices, "alert": true}),
                ),
                _ => {}
            }
        }
        count
    }

    /// Re-reads the devices a webhook names from Jamf Pro source `name` and applies them
    /// (a device Jamf no longer lists loses this source's facts: unknown to it, fail closed).
    /// `Err`: the hint cannot be followed device by device, or the read failed; the caller
    /// re-reads the whole source instead (whose failure keeps the previous facts and alerts).
    async fn reread_devices(
        &self,
        name: &str,
        hints: &[crate::compliance::admin::WebhookHint],
    ) -> Result<usize, String> {
        let _one = self.sync_lock.lock().await;
        let cfg = self.current();
        let Some(source) = cfg
            .loaded
            .config
            .compliance
            .sources
            .iter()
            .find(|s| s.name.value == name)
        else {
            return Ok(0); // removed meanwhile
        };
        let config::SourceKind::JamfPro {
            computer_groups,
            mobile_device_groups,
            ..
        } = &source.kind
        else {
            return Err("not a jamf-pro source".into());
        };
        // confirmed when the re-read began
        let now = SystemTime::now();
        let mut updates: BTreeMap<String, Option<crate::compliance::SourceFact>> = BTreeMap::new();
        {
            let mut mdm = self.mdm.lock().await;
            for hint in hints {
                for serial in &hint.serials {
                    match mdm.refresh_device(source, serial).await {
                        Some(Ok(found)) => {
                            let serial = crate::compliance::normalize_serial(serial);
                            updates.insert(serial, found.map(|d| d.to_fact(now)));
                        }
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("no client".into()),
                    }
                }
                let mut jamf = hint.to_jamf();
                jamf.serials.clear();
                // a membership change of a smart group this source does not read changes
                // nothing it decides on
                if let Some(g) = jamf.group_id {
                    if !computer_groups.contains(&g) {
                        jamf.computer_ids.clear();
                    }
                    if !mobile_device_groups.contains(&g) {
                        jamf.mobile_device_ids.clear();
                    }
                }
                let ids = jamf.computer_ids.len() + jamf.mobile_device_ids.len();
                // devices named by id alone (membership changes)
                if ids > hint.serials.len() {
                    let devices = match mdm.refresh_hint(source, &jamf).await {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("no client".into()),
                    };
                    // an id Jamf no longer knows cannot be told by serial
                    if devices.len() < ids {
                        return Err(format!(
                            "Jamf answered {} device(s) for {ids} id(s)",
                            devices.len()
                        ));
                    }
                    for d in devices {
                        updates.insert(d.serial.clone(), Some(d.to_fact(now)));
                    }
                }
            }
        }
        let changes = match self.devices.write() {
            Ok(mut d) => d.update_devices(
                name,
                updates.into_iter().collect(),
                &format!("webhook re-read of source {name}"),
            ),
            Err(_) => return Err("device table unavailable".into()),
        };
        let count = changes.len();
        self.changed(changes);
        Ok(count)
    }

    /// Follows the webhooks queued for these sources: a targeted re-read where every hint
    /// names devices of a Jamf Pro source, else (or when that fails) a full re-read.
    async fn webhook_reread(&self, batch: Vec<Resync>) {
        let mut by_source: BTreeMap<String, Vec<crate::compliance::admin::WebhookHint>> =
            BTreeMap::new();
        for (sources, hint) in &batch {
            for s in sources {
                by_source.entry(s.clone()).or_default().push(hint.clone());
            }
        }
        let cfg = self.current();
        let mut full = Vec::new();
        for (name, hints) in by_source {
            let jamf = cfg.loaded.config.compliance.sources.iter().any(|s| {
                s.name.value == name && matches!(s.kind, config::SourceKind::JamfPro { .. })
            });
            if !jamf || !hints.iter().all(|h| h.names_devices()) {
                full.push(name);
                continue;
            }
            let started = std::time::Instant::now();
            match self.reread_devices(&name, &hints).await {
                Ok(changes) => {
                    let devices = self.devices.read().map(|d| d.device_count()).unwrap_or(0);
                    self.events.emit(
                        "compliance.synced",
                        json!({"devices": devices, "changes": changes, "failed_sources": 0,
                            "duration_ms": started.elapsed().as_millis(), "trigger": "webhook",
                            "sources": [name], "hints": hints.len(), "targeted": true}),
                    );
                }
                Err(e) => {
                    tracing::debug!(source = %name, error = %e, "targeted re-read failed; re-reading the source");
                    full.push(name);
                }
            }
        }
        if !full.is_empty() {
            self.sync_and_report(
                Some(&full),
                "webhook",
                json!({"sources": full, "hints": batch.len()}),
            )
            .await;
        }
    }

    /// [`Shared::sync_devices`] and a `compliance.synced` event with counts and duration.
    async fn sync_and_report(&self, only: Option<&[String]>, trigger: &str, extra: Value) -> Value {
        let started = std::time::Instant::now();
        let changes = self.sync_devices(only).await;
        let (devices, sources) = self
            .devices
            .read()
            .map(|d| (d.device_count(), d.status()))
            .unwrap_or_default();
        let failed = sources.iter().filter(|s| s.state == "error").count();
        let mut fields = json!({"devices": devices, "changes": changes, "failed_sources": failed,
            "duration_ms": started.elapsed().as_millis(), "trigger": trigger});
        if let (Value::Object(f), Value::Object(x)) = (&mut fields, extra) {
            f.extend(x);
        }
        self.events.emit("compliance.synced", fields.clone());
        fields["sources"] = json!(sources);
        fields
    }

    /// Every change of the device store: its devices' open flows are re-decided at once, then
    /// each change becomes a `compliance.changed` event; store failures become alerts.
    fn changed(&self, changes: Vec<crate::compliance::Change>) {
        self.enforce_changes(&changes);
        self.persist_devices();
    }

    /// Commits the device table's queued store writes, in the order they were made, outside
    /// the table's lock; failures become alerts.
    fn persist_devices(&self) {
        let _order = self.store_order.lock();
        let (pending, mut errors) = match self.devices.write() {
            Ok(mut d) => (d.take_writes(), d.take_store_errors()),
            Err(_) => return,
        };
        if let Some(p) = pending {
            if let Err(e) = p.commit() {
                errors.push(e);
            }
        }
        for e in errors {
            self.events.emit(
                "compliance.store_failed",
                json!({"error": e, "alert": true}),
            );
        }
    }

    fn enforce_changes(&self, changes: &[crate::compliance::Change]) {
        if changes.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let mut serials: Vec<String> = changes.iter().map(|c| c.serial.clone()).collect();
        serials.dedup();
        let revoked = match self.relay.lock() {
            Ok(slot) => slot.as_ref().map_or(0, |(_, relay)| {
                self.gateway
                    .enforce_devices(relay, &serials, SystemTime::now())
            }),
            Err(_) => 0,
        };
        let enforce_us = started.elapsed().as_micros();
        for c in changes {
            self.events.emit(
                "compliance.changed",
                json!({"serial": c.serial, "before": c.before, "after": c.after, "reason": c.reason}),
            );
        }
        if revoked > 0 {
            self.events.emit(
                "enforcement.revoked",
                json!({"flows": revoked, "devices": serials, "trigger": "compliance.changed", "enforce_us": enforce_us}),
            );
        }
    }

    /// Validates and swaps in a configuration; the running one stays on any error.
    async fn apply(&self, path: Option<&Path>) -> Response {
        let _guard = self.apply_lock.lock().await;
        let origin = path.unwrap_or(&self.config_path).to_path_buf();
        let text = match std::fs::read_to_string(&origin) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("cannot read {}: {e}", origin.display());
                self.record_apply(false, &msg);
                return Response::err("not-found", msg, vec![]);
            }
        };
        let base = self.config_path.parent().unwrap_or(Path::new("/"));
        let old = self.current();
        let loaded = match config::load_str(&text, &origin, base, FileChecks::Strict) {
            Ok(l) => l,
            Err(ConfigError::Invalid(d)) => {
                let msg = format!(
                    "{} refused ({} error{}); still running generation {} ({})",
                    origin.display(),
                    d.error_count(),
                    if d.error_count() == 1 { "" } else { "s" },
                    old.generation,
                    old.loaded.digest
                );
                self.events.emit(
                    "config.refused",
                    json!({"file": origin.display().to_string(), "errors": d.error_count()}),
                );
                self.record_apply(false, &msg);
                return Response::err(
                    "invalid-config",
                    msg,
                    d.0.iter().map(|x| x.to_string()).collect(),
                );
            }
            Err(e) => {
                self.record_apply(false, &e.to_string());
                return Response::err("not-found", e.to_string(), vec![]);
            }
        };
        if path.is_some() && !same_file(&origin, &self.config_path) {
            if let Err(e) = install(&text, &self.config_path) {
                let msg = format!(
                    "valid, but cannot install it as {}: {e}; nothing changed",
                    self.config_path.display()
                );
                self.record_apply(false, &msg);
                return Response::err("internal", msg, vec![]);
            }
        }
        let restart = restart_needed(&old.loaded.config, &loaded.config);
        let warnings: Vec<String> = loaded.warnings.0.iter().map(|w| w.to_string()).collect();
        let new = Arc::new(Running {
            engine: PolicyEngine::new(Arc::new(loaded.config.clone())),
            generation: old.generation + 1,
            applied_at: SystemTime::now(),
            loaded: Arc::new(loaded),
        });
        match self.running.write() {
            Ok(mut r) => *r = new.clone(),
            Err(poisoned) => *poisoned.into_inner() = new.clone(),
        }
        self.events.set_file(new.loaded.config.events.file.clone());
        // pools and egress data first, so no decision of the new engine misses its egress
        self.gateway.pools.configure(&new.loaded.config);
        self.egress.configure(&new.loaded.config);
        self.gateway.set_engine(Arc::new(new.engine.clone()));
        self.sync_and_report(None, "apply", json!({})).await;
        self.reconcile_tunnels().await;
        self.reconcile_acme();
        self.reconcile_relay();
        self.reconcile_admin().await;
        self.enforce();
        let msg = format!(
            "generation {} ({}) applied",
            new.generation, new.loaded.digest
        );
        self.events.emit(
            "config.applied",
            json!({"generation": new.generation, "digest": new.loaded.digest, "warnings": warnings.len(), "restart_needed": restart}),
        );
        self.record_apply(true, &msg);
        Response::ok(json!({
            "generation": new.generation,
            "digest": new.loaded.digest,
            "warnings": warnings,
            "restart_needed": restart,
        }))
    }

    fn record_apply(&self, ok: bool, message: &str) {
        if let Ok(mut l) = self.last_apply.lock() {
            *l = Some(ApplyRecord {
                at: SystemTime::now(),
                ok,
                message: message.to_string(),
            });
        }
    }

    fn status(&self) -> Value {
        let run = self.current();
        let cfg = &run.loaded.config;
        let now = SystemTime::now();
        let (sources, devices, store) = match self.devices.read() {
            Ok(d) => (
                d.status(),
                d.device_count(),
                d.store_path().map(|p| p.display().to_string()),
            ),
            Err(_) => (Vec::new(), 0, None),
        };
        let last = self.last_apply.lock().ok().and_then(|l| l.clone());
        let statuses = self.tunnel_statuses();
        let tunnel_states: BTreeMap<String, &str> =
            statuses.iter().map(|t| (t.name.clone(), t.state)).collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "appliance": cfg.appliance.name,
            "pid": std::process::id(),
            "uptime_secs": now.duration_since(self.started).unwrap_or_default().as_secs(),
            "control_socket": self.socket.display().to_string(),
            "config": {
                "path": self.config_path.display().to_string(),
                "generation": run.generation,
                "digest": run.loaded.digest,
                "applied_at": crate::timefmt::unix(run.applied_at),
                "warnings": run.loaded.warnings.0.len(),
                "egresses": cfg.egresses.iter().map(|e| json!({
                    "name": e.name.value, "type": e.type_name(), "trusted": e.is_trusted(),
                    "state": tunnel_states.get(&e.name.value).copied().unwrap_or("not-started"),
                })).collect::<Vec<_>>(),
                "apps": cfg.apps.len(),
                "policies": cfg.policies.iter().map(|p| p.name.value.clone()).collect::<Vec<_>>(),
            },
            "relay": {
                "state": self.relay_state.lock().map(|s| s.clone()).unwrap_or_default(),
                "http3_listen": cfg.relay.http3_listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "http2_listen": cfg.relay.http2_listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            },
            "compliance": {
                "devices": devices,
                "max_age_secs": cfg.compliance.max_age.as_secs(),
                "sources": sources,
                "store": store,
                "admin": self.admin_state.lock().map(|s| s.clone()).unwrap_or_default(),
            },
            "acme": self.acme.lock().ok().and_then(|slot| slot.as_ref().map(|(_, a)| {
                let issued = a.ca.issued();
                json!({
                    "directory": a.server.directory_url(),
                    "ca": a.trust_file.display().to_string(),
                    "certificates": issued.len(),
                    "revoked": issued.iter().filter(|c| c.revoked_at.is_some()).count(),
                })
            })),
            "last_apply": last.map(|l| json!({"at": crate::timefmt::unix(l.at), "ok": l.ok, "message": l.message})),
        })
    }

    fn whatif(&self, device: &str, target: &str, protocol: crate::policy::Protocol) -> Response {
        let target = match Target::parse(target, protocol) {
            Ok(t) => t,
            Err(e) => return Response::err("bad-request", format!("target: {e}"), vec![]),
        };
        let serial = crate::compliance::normalize_serial(device);
        if serial.is_empty() {
            return Response::err("bad-request", "device: empty serial", vec![]);
        }
        let record = self.devices.read().ok().and_then(|d| d.get(&serial));
        let now = SystemTime::now();
        let state = DeviceState {
            serial: serial.clone(),
            record,
            cert_not_before: now - Duration::from_secs(60),
            cert_not_after: now + crate::WHATIF_CERT_LIFETIME,
        };
        let run = self.current();
        let decision = run.engine.decide(&state, &target, now);
        Response::ok(json!({
            "device": state,
            "target": target.to_string(),
            "generation": run.generation,
            "certificate_assumed": true,
            "why": decision.failed().map(|r| r.detail.clone()),
            "decision": decision,
        }))
    }

    fn devices(&self) -> Value {
        self.device_list(&crate::compliance::report::DeviceFilter::default())
    }

    fn device_list(&self, filter: &crate::compliance::report::DeviceFilter) -> Value {
        let cfg = self.current();
        match self.devices.read() {
            Ok(d) => d.list(&cfg.loaded.config, SystemTime::now(), filter),
            Err(_) => json!({ "devices": [] }),
        }
    }

    fn device_show(&self, serial: &str) -> Response {
        let serial = match crate::compliance::checked_serial(serial) {
            Ok(s) => s,
            Err(e) => return Response::err("bad-request", format!("serial: {e}"), vec![]),
        };
        let cfg = self.current();
        match self.devices.read() {
            Ok(d) => Response::ok(d.show(&serial, &cfg.loaded.config, SystemTime::now())),
            Err(_) => Response::err("internal", "device table unavailable", vec![]),
        }
    }

    /// `attestgate device block|risk|unblock|clear`: persisted, an event, and the device's
    /// open flows re-decided at once.
    fn device_override(
        &self,
        serial: &str,
        action: crate::compliance::OverrideAction,
        level: Option<config::RiskLevel>,
        reason: Option<String>,
        until: Option<i64>,
    ) -> Response {
        let serial = match crate::compliance::checked_serial(serial) {
            Ok(s) => s,
            Err(e) => return Response::err("bad-request", format!("serial: {e}"), vec![]),
        };
        let now = SystemTime::now();
        let cfg = self.current();
        let (changes, result) = {
            let Ok(mut d) = self.devices.write() else {
                return Response::err("internal", "device table unavailable", vec![]);
            };
            let next = match crate::compliance::overrides::apply(
                &d.overrides(&serial),
                action,
                level,
                reason.clone(),
                until,
                now,
            ) {
                Ok(n) => n,
                Err(e) => return Response::err("bad-request", e, vec![]),
            };
            let changes = d.set_overrides(&serial, next, &format!("override {}", action.as_str()));
            let known = d.get(&serial).is_some();
            let mut result = d.show(&serial, &cfg.loaded.config, now);
            result["action"] = json!(action.as_str());
            result["changed"] = json!(!changes.is_empty());
            result["known"] = json!(known);
            (changes, result)
        };
        self.events.emit(
            "compliance.override",
            json!({"serial": serial, "action": action.as_str(), "level": level, "reason": reason, "until": until}),
        );
        self.changed(changes);
        Response::ok(result)
    }

    /// Starts the relay, or restarts it when its `[relay]` settings changed. Egress changes
    /// do not restart it (they are swapped into [`crate::egress::ApplianceEgress`]), so
    /// adding a tunnel or an egress drops no flow. A relay that cannot start (an address not
    /// on this host, an unreadable file) leaves the daemon running without it.
    fn reconcile_relay(&self) {
        let cfg = self.current().loaded.config.clone();
        let egress = self.egress.clone();
        let builtin = self.acme_ca();
        let builtin_ca = builtin
            .as_ref()
            .map(|(_, certificate)| crate::gateway::BuiltinCa {
                certificate: certificate.clone(),
                crl: (!cfg.relay.crl.is_empty())
                    .then(|| cfg.appliance.state_dir.join(crate::acme::CRL_FILE)),
            });
        let fingerprint = without_spans(&format!("{:?} {builtin_ca:?}", cfg.relay));
        let Ok(mut slot) = self.relay.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|(f, _)| *f == fingerprint) {
            return;
        }
        if let Some((_, old)) = slot.take() {
            tokio::spawn(old.shutdown(Duration::from_secs(5)));
        }
        // the CRL the relay loads beside the configured ones (written only when it starts)
        if let Some((ca, _)) = builtin.as_ref().filter(|_| !cfg.relay.crl.is_empty()) {
            if let Err(e) = crate::acme::write_crl(ca, &cfg.appliance.state_dir) {
                self.events
                    .emit("acme.error", json!({"error": e, "alert": true}));
            }
        }
        let started =
            crate::gateway::relay_config(&cfg.relay, builtin_ca.as_ref()).and_then(|rc| {
                relay::Relay::bind(rc, self.gateway.clone(), egress).map_err(|e| e.to_string())
            });
        let state = match started {
            Ok(handle) => {
                let state = format!(
                    "listening (HTTP/3 {:?}, HTTP/2 {:?})",
                    handle
                        .local_addrs()
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>(),
                    handle
                        .http2_local_addrs()
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                );
                self.events.emit("relay.started", json!({"state": state}));
                *slot = Some((fingerprint, handle));
                state
            }
            Err(e) => {
                let state = format!("error: {e}");
                // the same failure again (e.g. on every apply) is not news
                if self.relay_state.lock().map(|s| *s != state).unwrap_or(true) {
                    self.events.emit("relay.error", json!({"error": e}));
                }
                state
            }
        };
        if let Ok(mut s) = self.relay_state.lock() {
            *s = state;
        }
    }

    fn ca_list(&self) -> Response {
        let Some((ca, trust)) = self.acme_ca() else {
            return Response::err("not-found", ACME_OFF, vec![]);
        };
        Response::ok(json!({
            "ca": trust.display().to_string(),
            "certificates": ca.issued().into_iter().map(|c| json!({
                "serial": c.serial,
                "device": c.device,
                "issued_at": c.issued_at,
                "not_after": c.not_after,
                "revoked": c.revoked_at.is_some(),
                "revoked_at": c.revoked_at,
                "revocation_reason": c.revocation_reason,
            })).collect::<Vec<_>>(),
        }))
    }

    /// `attestgate ca revoke`: recorded by the CA (the gateway refuses the certificate from the
    /// next request on), then the device's flows and connections on the relay are closed at
    /// once. A device that reconnects with another, valid certificate is served again.
    fn ca_revoke(
        &self,
        device: Option<String>,
        certificate: Option<String>,
        reason: Option<String>,
    ) -> Response {
        let Some((ca, _)) = self.acme_ca() else {
            return Response::err("not-found", ACME_OFF, vec![]);
        };
        let now = SystemTime::now();
        let reason = reason.unwrap_or_else(|| "revoked by the operator".into());
        let (device, revoked) = match (device, certificate) {
            (Some(device), None) => {
                let device = device.trim().to_string();
                if !ca
                    .issued()
                    .iter()
                    .any(|c| c.device.eq_ignore_ascii_case(&device))
                {
                    return Response::err(
                        "not-found",
                        format!("the device CA issued no unexpired certificate to {device:?}"),
                        vec![],
                    );
                }
                match ca.revoke_device(&device, &reason, now) {
                    Ok(serials) => (device, serials),
                    Err(e) => return Response::err("internal", e.to_string(), vec![]),
                }
            }
            (None, Some(hex)) => match ca.revoke_certificate(&hex, &reason, now) {
                Ok(done) => {
                    let key = enroll::ca::normalize_serial(&hex).unwrap_or_default();
                    let record = ca.issued().into_iter().find(|c| c.serial == key);
                    let device = record.map(|c| c.device).unwrap_or_default();
                    (device, if done { vec![key] } else { Vec::new() })
                }
                Err(e @ enroll::ca::CaError::UnknownCertificate(_)) => {
                    return Response::err("not-found", e.to_string(), vec![])
                }
                Err(e) => return Response::err("internal", e.to_string(), vec![]),
            },
            _ => {
                return Response::err(
                    "bad-request",
                    "name either a device or one certificate",
                    vec![],
                )
            }
        };
        // the relay knows the device by the identity it read from the certificate: the
        // identifier the CA wrote into the CN and the PermanentIdentifier
        let flows = if revoked.is_empty() {
            0
        } else {
            match self.relay.lock() {
                Ok(slot) => slot
                    .as_ref()
                    .map_or(0, |(_, relay)| relay.revoke(&device, |_| false)),
                Err(_) => 0,
            }
        };
        if !revoked.is_empty() {
            // then its connections: a QUIC CONNECTION_CLOSE sent at once would discard the
            // queued RESET_STREAM frames (RFC 9000 §10.2: after it, nothing else is sent), and
            // the device would learn of its streams only after its draining period
            if let Some(me) = self.self_ref.get().cloned() {
                let device = device.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(CONNECTION_CLOSE_DELAY).await;
                    let Some(shared) = me.upgrade() else { return };
                    if let Ok(slot) = shared.relay.lock() {
                        if let Some((_, relay)) = slot.as_ref() {
                            relay.revoke_certificate(&device);
                        }
                    };
                });
            }
            self.events.emit(
                "ca.revoked",
                json!({"device": device, "certificates": revoked, "reason": reason, "flows": flows, "trigger": "cli"}),
            );
        }
        Response::ok(json!({
            "device": device,
            "revoked": revoked,
            "reason": reason,
            "flows": flows,
        }))
    }

    /// The built-in device CA and the file the relay trusts it from, when `[acme]` runs.
    fn acme_ca(&self) -> Option<(Arc<enroll::ca::DeviceCa>, PathBuf)> {
        let slot = self.acme.lock().ok()?;
        slot.as_ref()
            .map(|(_, a)| (a.ca.clone(), a.trust_file.clone()))
    }

    /// Starts, restarts or stops the ACME server and its device CA to match `[acme]`; runs
    /// before the relay's reconcile (the relay trusts the CA). Unchanged settings keep the
    /// running server (its nonces and pending orders). One that cannot start (an unreadable
    /// root, a broken imported key) leaves the daemon running without it, with an alert.
    fn reconcile_acme(&self) {
        let cfg = self.current().loaded.config.clone();
        let wanted = cfg.acme.as_ref().filter(|a| a.enabled);
        let fingerprint = without_spans(&format!("{wanted:?} {:?}", cfg.appliance.state_dir));
        let Ok(mut slot) = self.acme.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|(f, _)| *f == fingerprint) {
            return;
        }
        *slot = None;
        if let Some(acme) = wanted {
            let backend: std::sync::Weak<dyn crate::compliance::admin::AdminBackend> =
                match self.self_ref.get() {
                    Some(w) => w.clone(),
                    None => return,
                };
            match crate::acme::start(acme, &cfg.appliance.state_dir, backend, self.events.clone()) {
                Ok(runtime) => {
                    self.events.emit(
                        "acme.started",
                        json!({"directory": runtime.server.directory_url(), "ca": runtime.trust_file.display().to_string()}),
                    );
                    *slot = Some((fingerprint, runtime));
                }
                Err(e) => self
                    .events
                    .emit("acme.error", json!({"error": e, "alert": true})),
            }
        }
        // Revocations only ever tighten: when [acme] goes away the last CA's revocation list
        // stays in force, so a relay still draining (or not yet restarted without the
        // built-in CA) never lets a revoked certificate through again.
        if let Some((_, a)) = slot.as_ref() {
            self.gateway.set_revocations(Some(a.ca.clone()));
        }
    }

    /// Starts, restarts or stops the admin listener to match `[compliance.webhook]`. One that
    /// cannot start (address in use, unreadable secret) leaves the daemon running without it.
    async fn reconcile_admin(&self) {
        let cfg = self.current().loaded.config.clone();
        let webhook = cfg.compliance.webhook.clone();
        let fingerprint = format!("{webhook:?}");
        if let Ok(slot) = self.admin.lock() {
            if slot.as_ref().is_some_and(|(f, _)| *f == fingerprint) {
                return;
            }
        }
        let old = self.admin.lock().ok().and_then(|mut s| s.take());
        drop(old);
        let Some(w) = webhook else {
            if let Ok(mut s) = self.admin_state.lock() {
                *s = "not configured".into();
            }
            return;
        };
        let Some(me) = self.self_ref.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let started =
            crate::compliance::admin::start(&w, me, crate::compliance::admin::jamf_parser()).await;
        let state = match started {
            Ok(listener) => {
                let state = format!("listening on {}", listener.local_addr());
                self.events.emit(
                    "admin.started",
                    json!({"listen": listener.local_addr().to_string()}),
                );
                if let Ok(mut slot) = self.admin.lock() {
                    *slot = Some((fingerprint, listener));
                }
                state
            }
            Err(e) => {
                self.events
                    .emit("admin.error", json!({"error": e, "alert": true}));
                format!("error: {e}")
            }
        };
        if let Ok(mut s) = self.admin_state.lock() {
            *s = state;
        }
    }

    /// Re-decides the open flows; revokes those whose egress no longer holds.
    fn enforce(&self) {
        let Ok(slot) = self.relay.lock() else { return };
        let Some((_, relay)) = slot.as_ref() else {
            return;
        };
        let revoked = self.gateway.enforce(relay, SystemTime::now());
        if revoked > 0 {
            self.events
                .emit("enforcement.revoked", json!({"flows": revoked}));
        }
    }

    fn flows(&self) -> Value {
        let now = SystemTime::now();
        let list: Vec<Value> = match self.relay.lock() {
            Ok(slot) => slot
                .as_ref()
                .map(|(_, r)| r.flows())
                .unwrap_or_default()
                .into_iter()
                .map(|f| {
                    json!({
                        "id": f.id,
                        "device": f.device,
                        "target": format!("{}:{}", f.target.host, f.target.port),
                        "protocol": match f.protocol { relay::Protocol::Udp => "udp", _ => "tcp" },
                        "http": format!("{:?}", f.http),
                        "egress": f.egress,
                        "peer": f.peer.to_string(),
                        "source": f.source.map(|s| s.ip().to_string()),
                        "age_secs": now.duration_since(f.started).unwrap_or_default().as_secs(),
                        "bytes_from_device": f.bytes_from_device,
                        "bytes_to_device": f.bytes_to_device,
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        json!({ "flows": list })
    }

    fn tunnel_statuses(&self) -> Vec<crate::egress::tunnel::TunnelStatus> {
        match self.tunnels.lock() {
            Ok(t) => t.values().filter_map(|(_, h)| h.snapshot()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn tunnel_control(&self, name: &str, action: &str) -> Response {
        let control = match action {
            "up" => Control::Up,
            "down" => Control::Down,
            "rekey" => Control::Rekey,
            other => {
                return Response::err(
                    "bad-request",
                    format!("unknown tunnel action `{other}` (up, down, rekey)"),
                    vec![],
                )
            }
        };
        let Ok(tunnels) = self.tunnels.lock() else {
            return Response::err("internal", "tunnel table unavailable", vec![]);
        };
        match tunnels.get(name) {
            Some((_, h)) if h.send(control) => {
                Response::ok(json!({"tunnel": name, "action": action}))
            }
            Some(_) => Response::err("internal", format!("tunnel {name} is not running"), vec![]),
            None => {
                let names: Vec<&String> = tunnels.keys().collect();
                Response::err(
                    "not-found",
                    format!("no tunnel named `{name}` (tunnels: {names:?})"),
                    vec![],
                )
            }
        }
    }

    /// Starts, restarts and stops tunnels so they match the running configuration. Tunnels
    /// whose settings (and routing table) did not change keep their SAs and routes; a tunnel
    /// that stops has its NAT pool's routing removed before any replacement starts.
    async fn reconcile_tunnels(&self) {
        let cfg = self.current().loaded.config.clone();
        let tables = crate::egress::routes::table_numbers(cfg.egresses.iter().filter_map(|e| {
            matches!(e.kind, config::EgressKind::Tunnel(_)).then_some(e.name.value.as_str())
        }));
        let wanted: BTreeMap<String, String> = cfg
            .egresses
            .iter()
            .filter_map(|e| match &e.kind {
                config::EgressKind::Tunnel(t) => Some((
                    e.name.value.clone(),
                    without_spans(&format!("{t:?} table {:?}", tables.get(&e.name.value))),
                )),
                _ => None,
            })
            .collect();
        let (stopped, missing) = {
            let Ok(mut tunnels) = self.tunnels.lock() else {
                return;
            };
            let mut stopped = Vec::new();
            tunnels.retain(|name, (fingerprint, handle)| {
                let keep = wanted.get(name) == Some(fingerprint);
                if !keep {
                    stopped.push(handle.routing());
                }
                keep
            });
            let missing: Vec<String> = wanted
                .keys()
                .filter(|n| !tunnels.contains_key(*n))
                .cloned()
                .collect();
            (stopped, missing)
        };
        for (pool, table) in stopped {
            if let Err(e) = crate::egress::routes::remove_pool(pool, table).await {
                tracing::warn!(%pool, table, error = %e, "cannot remove a stopped tunnel's routing");
            }
        }
        if missing.is_empty() {
            return;
        }
        let mut subset = cfg.clone();
        subset.egresses.retain(|e| missing.contains(&e.name.value));
        let started = crate::egress::tunnel::start_all(&subset, &tables, self.events.clone());
        if let Ok(mut tunnels) = self.tunnels.lock() {
            for (name, handle) in started {
                let fingerprint = wanted.get(&name).cloned().unwrap_or_default();
                tunnels.insert(name, (fingerprint, handle));
            }
        }
    }

    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status {} => Response::ok(self.status()),
            Request::Apply { path } => self.apply(path.as_deref()).await,
            Request::WhatIf {
                device,
                target,
                protocol,
            } => self.whatif(&device, &target, protocol),
            Request::Devices {} => Response::ok(self.devices()),
            Request::Flows {} => Response::ok(self.flows()),
            Request::Sync {} => Response::ok(self.sync_and_report(None, "cli", json!({})).await),
            Request::Tunnels {} => Response::ok(json!({ "tunnels": self.tunnel_statuses() })),
            Request::Tunnel { name, action } => self.tunnel_control(&name, &action),
            Request::DeviceList { filter } => Response::ok(self.device_list(&filter)),
            Request::DeviceShow { serial } => self.device_show(&serial),
            Request::CaList {} => self.ca_list(),
            Request::CaRevoke {
                device,
                certificate,
                reason,
            } => self.ca_revoke(device, certificate, reason),
            Request::DeviceOverride {
                serial,
                action,
                level,
                reason,
                until,
            } => self.device_override(&serial, action, level, reason, until),
        }
    }
}

/// A configuration value's `Debug` text without the source spans (`span: 12..34`) of its
/// `Spanned` fields: settings fingerprints must not change when only their place in the file
/// did (a comment added above them).
fn without_spans(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(at) = rest.find("span: ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "span: ".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Writes `text` as `dest` atomically: a temporary file in the same directory, synced, renamed.
fn install(text: &str, dest: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.apply-{}",
        dest.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0640()
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

trait Mode0640 {
    fn mode_0640(&mut self) -> &mut Self;
}
impl Mode0640 for std::fs::OpenOptions {
    fn mode_0640(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o640)
    }
}

/// Settings read only at start-up.
fn restart_needed(old: &config::Config, new: &config::Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.appliance.control_socket != new.appliance.control_socket {
        out.push("appliance.control_socket");
    }
    if old.appliance.state_dir != new.appliance.state_dir {
        out.push("appliance.state_dir");
    }
    if old.device_store() != new.device_store() {
        out.push("compliance.store");
    }
    if old.logging.level != new.logging.level || old.logging.format != new.logging.format {
        out.push("logging");
    }
    out
}

/// Binds the control socket, refusing to steal it from a running daemon.
async fn bind(path: &Path) -> Result<(UnixListener, u32), DaemonError> {
    let err = |message: String| DaemonError::Socket {
        path: path.to_path_buf(),
        message,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(err(
                "another attestgate daemon is answering on it; stop that one first".into(),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(e.to_string()))?;
    let owner = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .uid();
    Ok((listener, owner))
}

async fn serve_one(shared: Arc<Shared>, stream: UnixStream, owner: u32) {
    let allowed = stream
        .peer_cred()
        .map(|c| c.uid() == 0 || c.uid() == owner)
        .unwrap_or(false);
    let (read, mut write) = stream.into_split();
    let response = if !allowed {
        tracing::warn!(
            "control socket: refused a client that is neither root nor the daemon's user"
        );
        Response::err("forbidden", "the control socket is for root", vec![])
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read).take(MAX_LINE as u64);
        match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => shared.handle(req).await,
                Err(e) => Response::err("bad-request", format!("not a request: {e}"), vec![]),
            },
            Ok(Err(e)) => Response::err("bad-request", format!("read: {e}"), vec![]),
            Err(_) => Response::err("bad-request", "no request within the timeout", vec![]),
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    let _ = tokio::time::timeout(TIMEOUT, write.write_all(&out)).await;
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config_path: PathBuf, loaded: Loaded) -> Result<(), DaemonError> {
    let cfg = loaded.config.clone();
    std::fs::create_dir_all(&cfg.appliance.state_dir)?;
    let (listener, owner) = bind(&cfg.appliance.control_socket).await?;
    let devices = Arc::new(RwLock::new(DeviceTable::open(&cfg.device_store(), &cfg)));
    let events = Arc::new(EventLog::default());
    events.set_file(cfg.events.file.clone());
    let pools = Arc::new(crate::egress::pool::NatPools::open(
        &cfg.appliance.state_dir,
    ));
    pools.set_events(events.clone());
    pools.configure(&cfg);
    let shared = Arc::new(Shared {
        config_path: config_path.clone(),
        running: RwLock::new(Arc::new(Running {
            engine: PolicyEngine::new(Arc::new(cfg.clone())),
            generation: 1,
            applied_at: SystemTime::now(),
            loaded: Arc::new(loaded),
        })),
        devices: devices.clone(),
        gateway: Arc::new(crate::gateway::Gateway::new(
            Arc::new(PolicyEngine::new(Arc::new(cfg.clone()))),
            devices,
            pools.clone(),
        )),
        egress: Arc::new(crate::egress::ApplianceEgress::new(
            &cfg,
            Some(events.clone()),
        )),
        relay: Mutex::new(None),
        relay_state: Mutex::new("not started".into()),
        events,
        tunnels: Mutex::new(BTreeMap::new()),
        started: SystemTime::now(),
        apply_lock: tokio::sync::Mutex::new(()),
        last_apply: Mutex::new(None),
        socket: cfg.appliance.control_socket.clone(),
        admin: Mutex::new(None),
        acme: Mutex::new(None),
        admin_state: Mutex::new("not configured".into()),
        resync_tx: Mutex::new(None),
        mdm: tokio::sync::Mutex::new(Default::default()),
        store_order: Mutex::new(()),
        sync_lock: tokio::sync::Mutex::new(()),
        self_ref: std::sync::OnceLock::new(),
    });
    let _ = shared.self_ref.set(Arc::downgrade(&shared));
    {
        // a NAT pool that is full reclaims only leases of devices without an open flow
        let weak = Arc::downgrade(&shared);
        shared.gateway.set_busy(Box::new(move |egress: &str| {
            let Some(shared) = weak.upgrade() else {
                return Default::default();
            };
            let Ok(slot) = shared.relay.lock() else {
                return Default::default();
            };
            slot.as_ref()
                .map(|(_, r)| r.flows())
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f.egress == egress)
                .map(|f| f.device)
                .collect()
        }));
    }
    let resyncer = {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Resync>();
        if let Ok(mut slot) = shared.resync_tx.lock() {
            *slot = Some(tx);
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            // webhooks come in bursts: every hint queued meanwhile joins one re-read
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                shared.webhook_reread(batch).await;
            }
        })
    };
    shared.events.set_file(cfg.events.file.clone());
    for w in shared.current().loaded.warnings.0.iter() {
        tracing::warn!("{w}");
    }
    // store failures at open (an unreadable file: every device unknown) are alerts too
    shared.changed(Vec::new());
    shared.sync_and_report(None, "start", json!({})).await;
    // routes and rules of ours (protocol 245, every table) that a previous run left behind
    match crate::egress::routes::remove_leftovers().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed leftover routes and rules of an earlier run"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot remove leftover routes and rules"),
    }
    shared.reconcile_tunnels().await;
    shared.reconcile_acme();
    shared.reconcile_relay();
    shared.reconcile_admin().await;
    shared.events.emit(
        "daemon.started",
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config": config_path.display().to_string(),
            "digest": shared.current().loaded.digest,
            "socket": cfg.appliance.control_socket.display().to_string(),
        }),
    );

    let refresher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let every = shared
                    .current()
                    .loaded
                    .config
                    .compliance
                    .refresh_interval
                    .max(Duration::from_secs(1));
                tokio::time::sleep(every).await;
                shared.sync_and_report(None, "refresh", json!({})).await;
                shared.enforce();
            }
        })
    };

    // Decision at use (DESIGN.md invariant 2): data going stale or a certificate expiring
    // re-decides open flows within a second even when no source reports a change.
    let enforcer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = SystemTime::now();
                let lapsed = shared
                    .devices
                    .write()
                    .map(|mut d| d.expire(now))
                    .unwrap_or_default();
                shared.changed(lapsed);
                shared.enforce();
            }
        })
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let reason = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_one(shared.clone(), stream, owner));
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            },
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-reading the configuration");
                let r = shared.apply(None).await;
                if let Some(e) = r.error {
                    tracing::error!("{}", e.message);
                    for d in e.details { tracing::error!("{d}"); }
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    refresher.abort();
    enforcer.abort();
    resyncer.abort();
    let admin = shared.admin.lock().ok().and_then(|mut a| a.take());
    drop(admin);
    let relay = shared.relay.lock().ok().and_then(|mut r| r.take());
    if let Some((_, relay)) = relay {
        relay.shutdown(Duration::from_secs(2)).await;
    }
    if let Ok(mut t) = shared.tunnels.lock() {
        t.clear(); // aborts the tunnel tasks; their TUN devices go with them
    }
    // the devices' routes go with them; remove ours (rules, pool routes, tables) explicitly
    if let Err(e) = crate::egress::routes::remove_leftovers().await {
        tracing::warn!(error = %e, "cannot remove attestgate's routes and rules");
    }
    shared.gateway.pools.save();
    drop(listener);
    let _ = std::fs::remove_file(&cfg.appliance.control_socket);
    shared
        .events
        .emit("daemon.stopped", json!({"signal": reason}));
    Ok(())
}

#[cfg(test)]
mod span_tests {
    #[test]
    fn fingerprints_ignore_spans_only() {
        let a = r#"Spanned { value: "/etc/a.crt", span: 120..134 }, x: 5"#;
        let b = r#"Spanned { value: "/etc/a.crt", span: 7..21 }, x: 5"#;
        let c = r#"Spanned { value: "/etc/b.crt", span: 7..21 }, x: 5"#;
        assert_eq!(super::without_spans(a), super::without_spans(b));
        assert_ne!(super::without_spans(b), super::without_spans(c));
        assert_eq!(super::without_spans("no spans"), "no spans");
    }
}
