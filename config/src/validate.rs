//! Cross-reference checks over the whole model: names that must exist, addresses that must not
//! overlap, outcomes that must stay untrusted, files that must exist and stay private.

use crate::diagnostics::{did_you_mean, Severity, Sink, Span};
use crate::model::*;
use crate::tree::{Node, NodeValue, Spanned};
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::Path;

/// How to treat referenced files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChecks {
    /// Missing files are errors (the daemon, `config apply`, `config check --strict`).
    Strict,
    /// Missing files are warnings: the file may be checked on another host than the appliance.
    /// Secret files that exist with loose permissions are still errors.
    Lenient,
    /// Files are not looked at (unit tests of the schema).
    Skip,
}

/// `root` is the document the model was read from: it tells where things the model does not
/// keep were written, and which names were written but refused.
pub(crate) fn check(cfg: &mut Config, sink: &mut Sink<'_>, files: FileChecks, root: &Node) {
    resolve_fallbacks(cfg);
    names(cfg, sink, root);
    outcomes(cfg, sink, root);
    policies(cfg, sink, root);
    tunnels(cfg, sink);
    listeners(cfg, sink, root);
    acme(cfg, sink, root);
    idp(cfg, sink);
    if files != FileChecks::Skip {
        check_files(cfg, sink, files);
    }
}

/// The node at a key path of the document, if it was written.
fn node_at<'n>(root: &'n Node, keys: &[&str]) -> Option<&'n Node> {
    keys.iter().try_fold(root, |node, key| match &node.value {
        NodeValue::Table(entries) => entries.iter().find(|e| e.key == *key).map(|e| &e.node),
        _ => None,
    })
}

/// True when `[section.NAME]` is written in the file, even if it was refused. A reference to a
/// refused egress or app is not reported again as unknown: the errors at its definition say
/// what is wrong (and the configuration is refused anyway).
fn declared(root: &Node, section: &str, name: &str) -> bool {
    node_at(root, &[section, name]).is_some()
}

/// The `[[policy]]` table `p` was read from. Policies that could not be read are not in the
/// model, so an index into `cfg.policies` can be smaller than the one in the file.
fn policy_node<'n>(root: &'n Node, p: &Policy) -> Option<(usize, &'n Node)> {
    let NodeValue::Array(items) = &node_at(root, &["policy"])?.value else {
        return None;
    };
    items
        .iter()
        .enumerate()
        .find(|(_, item)| node_at(item, &["name"]).is_some_and(|n| n.span == p.name.span))
}

/// `policy[N]`, N counted in the file.
fn policy_path(root: &Node, p: &Policy, model_index: usize) -> String {
    let i = policy_node(root, p).map_or(model_index, |(i, _)| i);
    format!("policy[{i}]")
}

/// A policy without `fallback` takes `[defaults] fallback`.
fn resolve_fallbacks(cfg: &mut Config) {
    for p in &mut cfg.policies {
        if p.fallback.value == Outcome::Egress(String::new()) {
            p.fallback = cfg.defaults.fallback.clone();
        }
    }
}

fn names(cfg: &Config, sink: &mut Sink<'_>, root: &Node) {
    let mut seen: Vec<&Spanned<String>> = Vec::new();
    for (i, p) in cfg.policies.iter().enumerate() {
        if seen.iter().any(|s| s.value == p.name.value) {
            sink.error(
                &p.name.span,
                &format!("{}.name", policy_path(root, p, i)),
                format!("policy name `{}` is used twice", p.name.value),
            )
            .help("policy names appear in decisions and logs; make each unique");
        } else {
            seen.push(&p.name);
        }
    }
}

fn outcome_known(cfg: &Config, o: &Outcome) -> bool {
    match o {
        Outcome::Egress(n) => cfg.egress(n).is_some(),
        Outcome::Deny | Outcome::Direct => true,
    }
}

fn unknown_outcome(
    cfg: &Config,
    sink: &mut Sink<'_>,
    root: &Node,
    o: &Spanned<Outcome>,
    path: &str,
) {
    let Outcome::Egress(name) = &o.value else {
        return;
    };
    if declared(root, "egress", name) {
        return;
    }
    let candidates: Vec<&str> = cfg
        .egresses
        .iter()
        .map(|e| e.name.value.as_str())
        .chain(RESERVED_OUTCOMES)
        .collect();
    let suggestion = did_you_mean(name, candidates.iter().copied());
    sink.error(&o.span, path, format!("unknown egress `{name}`"))
        .expected(format!("one of: {}", candidates.join(", ")))
        .help_opt(suggestion.map(|s| format!("did you mean `{s}`?")));
}

fn is_trusted(cfg: &Config, o: &Outcome) -> bool {
    match o {
        Outcome::Egress(n) => cfg.egress(n).is_some_and(Egress::is_trusted),
        Outcome::Deny | Outcome::Direct => false,
    }
}

fn untrusted_names(cfg: &Config) -> String {
    cfg.egresses
        .iter()
        .filter(|e| !e.is_trusted())
        .map(|e| e.name.value.as_str())
        .chain(RESERVED_OUTCOMES)
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcomes(cfg: &Config, sink: &mut Sink<'_>, root: &Node) {
    for (o, path) in [
        (&cfg.defaults.egress, "defaults.egress"),
        (&cfg.defaults.fallback, "defaults.fallback"),
    ] {
        if !outcome_known(cfg, o) {
            unknown_outcome(cfg, sink, root, o, path);
        } else if is_trusted(cfg, o) {
            sink.error(&o.span, path, format!("`{}` is a trusted egress; a default must never hand out trusted addresses (fail closed)", o.value))
                .expected(format!("an untrusted outcome: {}", untrusted_names(cfg)));
        }
    }
}

fn policies(cfg: &Config, sink: &mut Sink<'_>, root: &Node) {
    let app_names: Vec<&str> = cfg.apps.iter().map(|a| a.name.value.as_str()).collect();
    let mut covered: Vec<&str> = Vec::new();
    let any_trusted = cfg
        .policies
        .iter()
        .any(|p| is_trusted(cfg, &p.egress.value));
    for (i, p) in cfg.policies.iter().enumerate() {
        let path = policy_path(root, p, i);
        for (j, app) in p.apps.iter().enumerate() {
            if cfg.app(&app.value).is_none() && !declared(root, "apps", &app.value) {
                let suggestion = did_you_mean(&app.value, app_names.iter().copied());
                sink.error(
                    &app.span,
                    &format!("{path}.apps[{j}]"),
                    format!("unknown app `{}`", app.value),
                )
                .expected(if app_names.is_empty() {
                    "an app defined as [apps.NAME] (none is defined)".to_string()
                } else {
                    format!("one of: {}", app_names.join(", "))
                })
                .help_opt(suggestion.map(|s| format!("did you mean `{s}`?")));
            }
            if p.apps[..j].iter().any(|a| a.value == app.value) {
                sink.warning(
                    &app.span,
                    &format!("{path}.apps[{j}]"),
                    format!("app `{}` is listed twice", app.value),
                );
            }
        }
        if !outcome_known(cfg, &p.egress.value) {
            unknown_outcome(cfg, sink, root, &p.egress, &format!("{path}.egress"));
        }
        if !outcome_known(cfg, &p.fallback.value) {
            unknown_outcome(cfg, sink, root, &p.fallback, &format!("{path}.fallback"));
        } else if is_trusted(cfg, &p.fallback.value) {
            sink.error(
                &p.fallback.span,
                &format!("{path}.fallback"),
                format!(
                    "`{}` is a trusted egress; the fallback is for devices that failed the policy",
                    p.fallback.value
                ),
            )
            .expected(format!("an untrusted outcome: {}", untrusted_names(cfg)));
        }
        if !p.managed && is_trusted(cfg, &p.egress.value) {
            // at `managed = false`, which the key path and the help name
            let span = policy_node(root, p)
                .and_then(|(_, node)| node_at(node, &["managed"]))
                .map_or_else(|| p.egress.span.clone(), |n| n.span.clone());
            sink.error(
                &span,
                &format!("{path}.managed"),
                format!(
                    "policy `{}` sends unmanaged devices to the trusted egress `{}`",
                    p.name.value, p.egress.value
                ),
            )
            .expected("managed = true for a trusted egress (tunnel or internet)")
            .help("remove `managed = false`, or name an untrusted egress");
        }
        let shadowed =
            !p.apps.is_empty() && p.apps.iter().all(|a| covered.contains(&a.value.as_str()));
        if shadowed {
            sink.warning(
                &p.name.span,
                &format!("{path}.name"),
                format!(
                    "policy `{}` never applies: every app it names is taken by an earlier policy",
                    p.name.value
                ),
            );
        }
        covered.extend(p.apps.iter().map(|a| a.value.as_str()));
    }
    if any_trusted && cfg.compliance.compliant_groups.is_empty() {
        let span = cfg
            .policies
            .iter()
            .find(|p| is_trusted(cfg, &p.egress.value))
            .map(|p| p.egress.span.clone())
            .unwrap_or(0..0);
        sink.error(&span, "compliance.compliant_groups", "no group means compliant, so no device can ever get a trusted egress")
            .expected("compliant_groups = [\"…\"] under [compliance], naming the MDM groups of compliant devices");
    }
    if any_trusted && cfg.compliance.sources.is_empty() {
        let span = cfg
            .policies
            .iter()
            .find(|p| is_trusted(cfg, &p.egress.value))
            .map(|p| p.egress.span.clone())
            .unwrap_or(0..0);
        sink.warning(
            &span,
            "compliance.sources",
            "no compliance source: every device is unknown and takes its policy's fallback",
        );
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn tunnels(cfg: &Config, sink: &mut Sink<'_>) {
    let tunnels: Vec<(&Egress, &Tunnel)> = cfg
        .egresses
        .iter()
        .filter_map(|e| match &e.kind {
            EgressKind::Tunnel(t) => Some((e, t.as_ref())),
            _ => None,
        })
        .collect();
    for (i, (egress, t)) in tunnels.iter().enumerate() {
        let path = format!("egress.{}", egress.name.value);
        let pool = &t.nat_pool;
        if !t.local_ts.is_empty() && !t.local_ts.iter().any(|ts| ts.contains(&pool.value)) {
            sink.error(&pool.span, &format!("{path}.nat_pool"), format!(
                "NAT pool {} lies outside the local traffic selectors ({}), so its traffic would never enter the tunnel",
                pool.value,
                t.local_ts.iter().map(|t| t.value.to_string()).collect::<Vec<_>>().join(", ")
            ))
            .expected("a subnet inside one of local_ts");
        }
        if pool.value.hosts().next().is_none() {
            sink.error(
                &pool.span,
                &format!("{path}.nat_pool"),
                format!("NAT pool {} has no usable address", pool.value),
            )
            .expected("a subnet with at least one host address, e.g. a /30 or larger");
        }
        for l in &t.local_ts {
            for r in &t.remote_ts {
                if overlaps(&l.value, &r.value) {
                    sink.error(
                        &r.span,
                        &format!("{path}.remote_ts"),
                        format!(
                            "remote traffic selector {} overlaps the local one {}",
                            r.value, l.value
                        ),
                    )
                    .expected("local and remote subnets that do not overlap");
                }
            }
        }
        for (other, o) in &tunnels[..i] {
            if overlaps(&pool.value, &o.nat_pool.value) {
                sink.error(
                    &pool.span,
                    &format!("{path}.nat_pool"),
                    format!(
                        "NAT pool {} overlaps {} of tunnel `{}`",
                        pool.value, o.nat_pool.value, other.name.value
                    ),
                )
                .expected("NAT pools that do not overlap: the source address must name one tunnel");
            }
            if o.remote_address.value == t.remote_address.value {
                sink.error(
                    &t.remote_address.span,
                    &format!("{path}.remote_address"),
                    format!(
                        "peer {} is already the peer of tunnel `{}`",
                        t.remote_address.value, other.name.value
                    ),
                )
                .help(
                    "one IKE SA per peer: put both subnets in the traffic selectors of one tunnel",
                );
            }
        }
    }
    for egress in &cfg.egresses {
        if let EgressKind::Internet(inet) = &egress.kind {
            for a in &inet.source_addresses {
                if let Some((tun, _)) = tunnels
                    .iter()
                    .find(|(_, t)| t.nat_pool.value.contains(&a.value))
                {
                    sink.error(
                        &a.span,
                        &format!("egress.{}.source_addresses", egress.name.value),
                        format!(
                            "{} lies in the NAT pool of tunnel `{}`",
                            a.value, tun.name.value
                        ),
                    );
                }
            }
        }
    }
}

fn listeners(cfg: &Config, sink: &mut Sink<'_>, root: &Node) {
    if let Some(w) = &cfg.compliance.webhook {
        if cfg.relay.http2_listen.contains(&w.listen) {
            let span = node_at(root, &["compliance", "webhook", "listen"])
                .map_or_else(|| w.certificate.span.clone(), |n| n.span.clone());
            sink.error(
                &span,
                "compliance.webhook.listen",
                format!("{} is also a relay HTTP/2 listener", w.listen),
            )
            .expected("a separate admin address or port, e.g. 0.0.0.0:8443");
        }
    }
}

/// `[acme]` is served on the admin listener, and without it the relay needs a device CA.
fn acme(cfg: &Config, sink: &mut Sink<'_>, root: &Node) {
    let enabled = cfg.acme.as_ref().filter(|a| a.enabled);
    if let Some(a) = enabled {
        if cfg.compliance.webhook.is_none() {
            let span = node_at(root, &["acme", "enabled"])
                .map_or_else(|| a.base_url.span.clone(), |n| n.span.clone());
            sink.error(
                &span,
                "acme",
                "the ACME server is served on the admin listener, which is not configured",
            )
            .expected("a [compliance.webhook] table (listen, certificate, private_key, auth)")
            .help("or set `enabled = false` in [acme]");
        }
    }
    if enabled.is_none() && cfg.relay.device_ca.is_empty() {
        let relay = node_at(root, &["relay"]);
        let written = relay.and_then(|r| node_at(r, &["device_ca"]));
        let span = written
            .or(relay)
            .map_or_else(|| cfg.relay.certificate.span.clone(), |n| n.span.clone());
        let d = sink.error(
            &span,
            "relay.device_ca",
            if written.is_some() {
                "the list is empty"
            } else {
                "required key is missing"
            },
        );
        d.expected("one or more file paths")
            .help("add `device_ca = …` to [relay], or enable [acme] to trust its built-in CA");
    }
}

fn check_files(cfg: &Config, sink: &mut Sink<'_>, mode: FileChecks) {
    let mut public: Vec<(&Spanned<std::path::PathBuf>, String)> = Vec::new();
    let mut secret: Vec<(&Spanned<std::path::PathBuf>, String)> = Vec::new();
    let r = &cfg.relay;
    public.push((&r.certificate, "relay.certificate".into()));
    secret.push((&r.private_key, "relay.private_key".into()));
    public.extend(
        r.device_ca
            .iter()
            .map(|p| (p, "relay.device_ca".to_string())),
    );
    public.extend(r.crl.iter().map(|p| (p, "relay.crl".to_string())));
    if let Some(h) = &r.header_secret {
        secret.push((&h.file, "relay.header_secret_file".into()));
    }
    for e in &cfg.egresses {
        if let EgressKind::Tunnel(t) = &e.kind {
            let path = format!("egress.{}", e.name.value);
            match &t.auth {
                TunnelAuth::Psk { file } => secret.push((file, format!("{path}.psk_file"))),
                TunnelAuth::Certificate {
                    certificate,
                    private_key,
                    peer_ca,
                } => {
                    public.push((certificate, format!("{path}.certificate")));
                    secret.push((private_key, format!("{path}.private_key")));
                    public.extend(peer_ca.iter().map(|p| (p, format!("{path}.peer_ca"))));
                }
            }
        }
    }
    for s in &cfg.compliance.sources {
        let path = format!("compliance.sources.{}", s.name.value);
        match &s.kind {
            SourceKind::JamfPro {
                client_secret_file, ..
            }
            | SourceKind::Intune {
                client_secret_file, ..
            } => secret.push((client_secret_file, format!("{path}.client_secret_file"))),
            SourceKind::File { path: p } => public.push((p, format!("{path}.path"))),
        }
    }
    if let Some(e) = &cfg.idp.entra {
        secret.push((&e.client_secret_file, "idp.entra.client_secret_file".into()));
    }
    if let Some(w) = &cfg.compliance.webhook {
        public.push((&w.certificate, "compliance.webhook.certificate".into()));
        secret.push((&w.private_key, "compliance.webhook.private_key".into()));
        match &w.auth {
            WebhookAuth::Basic { password_file, .. } => {
                secret.push((password_file, "compliance.webhook.password_file".into()))
            }
            WebhookAuth::Header { token_file, .. } => {
                secret.push((token_file, "compliance.webhook.token_file".into()))
            }
        }
    }
    if let Some(a) = &cfg.acme {
        public.extend(
            a.attestation_roots
                .iter()
                .map(|p| (p, "acme.attestation_roots".to_string())),
        );
        if let Some(i) = &a.ca_import {
            public.push((&i.certificate, "acme.ca_certificate".into()));
            secret.push((&i.private_key, "acme.ca_private_key".into()));
        }
    }
    for (p, key) in public {
        file_exists(sink, &p.value, &p.span, &key, mode);
    }
    for (p, key) in secret {
        if file_exists(sink, &p.value, &p.span, &key, mode) {
            secret_private(sink, &p.value, &p.span, &key);
        }
    }
    for e in &cfg.egresses {
        if let EgressKind::Tunnel(t) = &e.kind {
            tunnel_certificate(sink, &format!("egress.{}", e.name.value), t);
        }
    }
}

/// `[idp.entra]`: the addresses the named location will hold must be ones Entra can see, and
/// the untrusted public egress's address must never be among them.
fn idp(cfg: &Config, sink: &mut Sink<'_>) {
    let Some(entra) = &cfg.idp.entra else {
        return;
    };
    let mut visible = 0usize;
    for e in &cfg.egresses {
        if let EgressKind::Internet(i) = &e.kind {
            for a in &i.source_addresses {
                match not_internet_visible(a.value) {
                    None => visible += 1,
                    Some(why) => {
                        let _ = sink
                            .warning(
                                &a.span,
                                &format!("egress.{}.source_addresses", e.name.value),
                                format!(
                                    "{} is {why}: Entra never sees it, so `idp entra sync` leaves it out of the named location",
                                    a.value
                                ),
                            )
                            .help("if a cloud maps it 1:1 to a public address (an AWS Elastic IP, an Azure or GCP public IP), list that address in [idp.entra] extra_addresses");
                    }
                }
            }
        }
    }
    let public: Vec<(&str, IpAddr)> = cfg
        .egresses
        .iter()
        .filter_map(|e| match &e.kind {
            EgressKind::Public(p) => p.source_address.map(|a| (e.name.value.as_str(), a)),
            _ => None,
        })
        .collect();
    let mut seen: Vec<IpAddr> = Vec::new();
    for (i, a) in entra.extra_addresses.iter().enumerate() {
        let path = format!("idp.entra.extra_addresses[{i}]");
        if let Some((name, _)) = public.iter().find(|(_, p)| *p == a.value) {
            sink.error(
                &a.span,
                &path,
                format!(
                    "{} is the source address of the untrusted egress `{name}`: trusting it would let any device present a trusted address",
                    a.value
                ),
            )
            .expected("addresses only trusted egress traffic leaves from");
        } else if let Some(why) = not_internet_visible(a.value) {
            sink.error(
                &a.span,
                &path,
                format!("{} is {why}: Entra never sees it", a.value),
            )
            .expected("a public address that trusted egress traffic reaches the internet from");
        } else if seen.contains(&a.value) {
            let _ = sink.warning(&a.span, &path, format!("{} is listed twice", a.value));
        } else {
            seen.push(a.value);
            visible += 1;
        }
    }
    if visible == 0 {
        let _ = sink
            .warning(
                &entra.tenant_id.span,
                "idp.entra",
                "no address to trust: `idp entra sync` will refuse to write an empty named location",
            )
            .help("add an internet egress with public source_addresses, or list the public addresses in [idp.entra] extra_addresses");
    }
}

/// A tunnel's certificate, private key and peer CAs load, the key belongs to the
/// certificate, and the certificate names `local_id` (the peer checks that, RFC 4945 §3.1).
/// Files that do not exist were reported above.
fn tunnel_certificate(sink: &mut Sink<'_>, path: &str, t: &Tunnel) {
    let TunnelAuth::Certificate {
        certificate,
        private_key,
        peer_ca,
    } = &t.auth
    else {
        return;
    };
    let mut files = [certificate, private_key].into_iter().chain(peer_ca);
    if !files.all(|f| f.value.is_file()) {
        return;
    }
    let cas: Vec<&Path> = peer_ca.iter().map(|p| p.value.as_path()).collect();
    let problem =
        match ike::cert::CertAuth::from_files(&certificate.value, &private_key.value, &cas) {
            Err(e) => {
                // point at the file the problem is in
                let shown = match &e {
                    ike::cert::CertError::Invalid { what, .. } => what.clone(),
                    ike::cert::CertError::Read { path, .. } => path.clone(),
                    ike::cert::CertError::Sign(_) => String::new(),
                };
                let at = [("private_key", private_key), ("certificate", certificate)]
                    .into_iter()
                    .chain(peer_ca.iter().map(|p| ("peer_ca", p)))
                    .find(|(_, p)| p.value.display().to_string() == shown);
                let (key, at) = at.unwrap_or(("certificate", certificate));
                Some((key, at, e.to_string()))
            }
            Ok(auth) => auth
                .check_identity(&t.local_id)
                .err()
                .map(|e| ("certificate", certificate, e)),
        };
    if let Some((key, at, problem)) = problem {
        let _ = sink
            .error(&at.span, &format!("{path}.{key}"), problem)
            .expected(
                "a PEM certificate whose subject or subjectAltName is local_id, its private key \
                 (PKCS#8, SEC1 or PKCS#1; ECDSA P-256/P-384 or RSA), and the peer's CA certificates",
            );
    }
}

fn file_exists(sink: &mut Sink<'_>, path: &Path, span: &Span, key: &str, mode: FileChecks) -> bool {
    let severity = if mode == FileChecks::Strict {
        Severity::Error
    } else {
        Severity::Warning
    };
    let problem = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => return true,
        Ok(_) => format!("{} is not a regular file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{} does not exist", path.display())
        }
        Err(e) => format!("{} cannot be read: {e}", path.display()),
    };
    let finding = match severity {
        Severity::Error => sink.error(span, key, problem),
        Severity::Warning => sink.warning(span, key, format!("{problem} on this host")),
    };
    let _ = finding.expected(
        "an existing file (relative paths are resolved from the configuration file's directory)",
    );
    false
}

#[cfg(unix)]
fn secret_private(sink: &mut Sink<'_>, path: &Path, span: &Span, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            sink.error(
                span,
                key,
                format!(
                    "secret file {} is accessible by group or others (mode {mode:04o})",
                    path.display()
                ),
            )
            .expected("a file only its owner can read (mode 0600 or 0400)")
            .help(format!("chmod 600 {}", path.display()));
        }
    }
}

#[cfg(not(unix))]
fn secret_private(_: &mut Sink<'_>, _: &Path, _: &Span, _: &str) {}
