//! `attestgate idp entra sync|check`: the Entra named location and the Conditional Access
//! check, over Microsoft Graph v1.0 with the client-credentials client the Intune source uses
//! (`compliance::http::ApiClient`: token cache, retries honouring `Retry-After`, deadlines,
//! secrets zeroized and never printed). The decisions themselves are in `enroll::idp`, which
//! does no I/O.
//!
//! Requests (Graph v1.0; application permissions Policy.Read.All and
//! Policy.ReadWrite.ConditionalAccess, the least privileged ones the reference lists for
//! these calls):
//!
//! - `POST {login_url}/{tenant}/oauth2/v2.0/token` (client credentials, scope
//!   `{graph_url}/.default`);
//! - `GET /v1.0/identity/conditionalAccess/namedLocations?$filter=displayName eq '…'`;
//! - `POST /v1.0/identity/conditionalAccess/namedLocations` (create) or
//!   `PATCH /v1.0/identity/conditionalAccess/namedLocations/{id}` (update, `@odata.type`
//!   included as the reference requires);
//! - `check`: `GET …/namedLocations` (all) and `GET /v1.0/identity/conditionalAccess/policies`.
//!
//! Next links are followed only inside `graph_url` (they would receive our token).

use crate::cli::{exit, EntraCommand};
use crate::compliance::http::{deadline_from_now, ApiClient, HttpSettings, Secret, TokenRequest};
use crate::compliance::mdm::SourceError;
use config::{ConfigError, EntraIdp, FileChecks};
use enroll::idp::conditional_access::{self, CheckReport, Demand, PolicyPage};
use enroll::idp::named_location::{self, NamedLocation, NamedLocationPage, Plan};
use enroll::idp::{odata_string, query_escape, trusted_addresses, TrustedAddress};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const LOCATIONS: &str = "/v1.0/identity/conditionalAccess/namedLocations";
const POLICIES: &str = "/v1.0/identity/conditionalAccess/policies";
const MAX_PAGES: u32 = 1000;
/// What the app registration needs, for error messages.
const PERMISSIONS: &str = "Policy.Read.All and Policy.ReadWrite.ConditionalAccess";

/// Why an Entra command failed. Never holds the secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("[idp.entra] is not configured in {0}")]
    NotConfigured(String),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{what}: Graph answered HTTP {status} {code}: {message}{hint}")]
    Graph {
        what: String,
        status: u16,
        code: String,
        message: String,
        hint: String,
    },
    #[error("{0}")]
    Plan(#[from] named_location::PlanError),
    #[error("{0}")]
    Usage(String),
}

/// Graph's error body (Microsoft Graph REST API guidelines: `{"error": {"code", "message"}}`).
#[derive(Deserialize)]
struct GraphErrorBody {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A Graph client for one tenant.
#[derive(Debug)]
pub struct EntraGraph {
    graph: String,
    client: ApiClient,
}

fn settings() -> HttpSettings {
    HttpSettings {
        deadline: Duration::from_secs(120),
        max_attempts: 5,
        backoff_base: Duration::from_secs(1),
        ..HttpSettings::default()
    }
}

impl EntraGraph {
    pub fn new(e: &EntraIdp) -> Result<Self, IdpError> {
        let secret = Secret::read(&e.client_secret_file.value)?;
        let graph = e.graph_url.trim_end_matches('/').to_string();
        let client = ApiClient::new(
            TokenRequest {
                url: format!(
                    "{}/{}/oauth2/v2.0/token",
                    e.login_url.trim_end_matches('/'),
                    e.tenant_id.value
                ),
                client_id: e.client_id.clone(),
                secret,
                scope: Some(format!("{graph}/.default")),
            },
            settings(),
        )?;
        Ok(EntraGraph { graph, client })
    }

    /// One request; non-2xx answers become [`IdpError::Graph`] with Graph's code and message.
    async fn call(
        &mut self,
        what: &str,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), IdpError> {
        let (status, bytes) = self
            .client
            .send_json(method, url, body, deadline)
            .await
            .map_err(|e| explain_source(what, e))?;
        if (200..300).contains(&status) {
            return Ok((status, bytes));
        }
        let (code, message) = match serde_json::from_slice::<GraphErrorBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => ("(no Graph error object)".into(), String::new()),
        };
        let hint = match status {
            403 => format!(
                " — the app registration needs the Microsoft Graph application permissions {PERMISSIONS}, with admin consent"
            ),
            404 => " — check graph_url".into(),
            _ => String::new(),
        };
        Err(IdpError::Graph {
            what: what.to_string(),
            status,
            code,
            message: message.chars().take(300).collect(),
            hint,
        })
    }

    async fn get_all<T: DeserializeOwned>(
        &mut self,
        what: &str,
        first: String,
        deadline: Instant,
        next: impl Fn(&T) -> Option<String>,
    ) -> Result<Vec<T>, IdpError> {
        let mut pages = Vec::new();
        let mut url = Some(first);
        while let Some(u) = url.take() {
            if pages.len() as u32 >= MAX_PAGES {
                return Err(IdpError::Usage(format!(
                    "{what}: more than {MAX_PAGES} pages"
                )));
            }
            let (_, body) = self
                .call(what, reqwest::Method::GET, &u, None, deadline)
                .await?;
            let page: T = serde_json::from_slice(&body).map_err(|e| {
                IdpError::Source(SourceError::Decode {
                    url: u.split('?').next().unwrap_or("").to_string(),
                    message: e.to_string(),
                })
            })?;
            if let Some(link) = next(&page) {
                if !link.starts_with(&format!("{}/", self.graph)) {
                    return Err(IdpError::Source(SourceError::Inconsistent(format!(
                        "@odata.nextLink leaves {} (refused: it would receive our token)",
                        self.graph
                    ))));
                }
                url = Some(link);
            }
            pages.push(page);
        }
        Ok(pages)
    }

    pub async fn named_locations(
        &mut self,
        display_name: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<NamedLocation>, IdpError> {
        let url = match display_name {
            Some(n) => format!(
                "{}{LOCATIONS}?$filter={}",
                self.graph,
                query_escape(&format!("displayName eq {}", odata_string(n)))
            ),
            None => format!("{}{LOCATIONS}", self.graph),
        };
        let pages: Vec<NamedLocationPage> = self
            .get_all(
                "reading the named locations",
                url,
                deadline,
                |p: &NamedLocationPage| p.next_link.clone(),
            )
            .await?;
        Ok(pages.into_iter().flat_map(|p| p.value).collect())
    }

    pub async fn policies(
        &mut self,
        deadline: Instant,
    ) -> Result<Vec<conditional_access::Policy>, IdpError> {
        let url = format!("{}{POLICIES}", self.graph);
        let pages: Vec<PolicyPage> = self
            .get_all(
                "reading the Conditional Access policies",
                url,
                deadline,
                |p: &PolicyPage| p.next_link.clone(),
            )
            .await?;
        Ok(pages.into_iter().flat_map(|p| p.value).collect())
    }
}

/// Client-side failures in words an operator can act on.
fn explain_source(what: &str, e: SourceError) -> IdpError {
    let hint = match &e {
        SourceError::Auth { status: 401, message, .. } if message.contains("fresh token") => {
            format!(" — Graph refused the token: check tenant_id, and that the app registration has the application permissions {PERMISSIONS} with admin consent")
        }
        SourceError::Auth { message, .. } => format!(
            " — the token endpoint refused the app registration ({message}): check tenant_id, client_id and the secret in client_secret_file"
        ),
        SourceError::Status { status: 429, attempts, .. } => format!(
            " — Graph kept throttling the requests (HTTP 429) through {attempts} attempts; run it again later"
        ),
        _ => String::new(),
    };
    if hint.is_empty() {
        IdpError::Source(e)
    } else {
        IdpError::Usage(format!("{what}: {e}{hint}"))
    }
}

fn load(config_path: &Path) -> Result<(config::Config, Vec<String>), (u8, String)> {
    match config::load(config_path, FileChecks::Lenient) {
        Ok(l) => {
            // Only the findings about what this command writes; missing relay files are not
            // its business when run away from the appliance.
            let notes = l
                .warnings
                .0
                .iter()
                .filter(|d| d.path.starts_with("idp") || d.path.ends_with("source_addresses"))
                .map(ToString::to_string)
                .collect();
            Ok((l.config, notes))
        }
        Err(ConfigError::Invalid(d)) => Err((exit::INVALID_CONFIG, d.to_string())),
        Err(e) => Err((exit::INVALID_CONFIG, format!("attestgate: {e}"))),
    }
}

pub fn run(cmd: &EntraCommand, config_path: &Path, json: bool) -> u8 {
    let (cfg, notes) = match load(config_path) {
        Ok(c) => c,
        Err((code, msg)) => {
            eprintln!("{msg}");
            return code;
        }
    };
    for n in notes {
        eprintln!("{n}");
    }
    let Some(entra) = cfg.idp.entra.clone() else {
        eprintln!(
            "attestgate: {}",
            IdpError::NotConfigured(config_path.display().to_string())
        );
        return exit::INVALID_CONFIG;
    };
    let Some(rt) = crate::runtime() else {
        return exit::FAILURE;
    };
    let result = match cmd {
        EntraCommand::Sync { dry_run } => rt.block_on(sync(&cfg, &entra, *dry_run, json)),
        EntraCommand::Check { trusted, untrusted } => {
            rt.block_on(check(&cfg, &entra, *trusted, *untrusted, json))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("attestgate: idp entra: {e}");
            match e {
                IdpError::NotConfigured(_) => exit::INVALID_CONFIG,
                _ => exit::FAILURE,
            }
        }
    }
}

fn origin(trusted: &[TrustedAddress], net: &IpNet) -> String {
    trusted
        .iter()
        .find(|t| t.net == *net)
        .map(|t| format!("   ({})", t.from))
        .unwrap_or_default()
}

async fn sync(
    cfg: &config::Config,
    entra: &EntraIdp,
    dry_run: bool,
    json: bool,
) -> Result<u8, IdpError> {
    let (trusted, skipped) = trusted_addresses(cfg);
    // The configuration's warning (printed by `run`) already names each skipped address.
    let desired: BTreeSet<IpNet> = trusted.iter().map(|t| t.net).collect();
    let name = entra.named_location.value.as_str();
    if desired.is_empty() {
        return Err(named_location::PlanError::NothingToTrust.into());
    }
    let mut graph = EntraGraph::new(entra)?;
    let deadline = deadline_from_now(graph.client.settings());
    let found = graph.named_locations(Some(name), deadline).await?;
    let plan = named_location::plan(name, &desired, &found)?;
    let mut id = match &plan {
        Plan::Update { id, .. } | Plan::Unchanged { id, .. } => Some(id.clone()),
        Plan::Create { .. } => None,
    };
    if !dry_run {
        if let Some(body) = plan.body(name, &desired) {
            match &plan {
                Plan::Create { .. } => {
                    let url = format!("{}{LOCATIONS}", graph.graph);
                    let (_, answer) = graph
                        .call(
                            "creating the named location",
                            reqwest::Method::POST,
                            &url,
                            Some(&body),
                            deadline,
                        )
                        .await?;
                    id = serde_json::from_slice::<NamedLocation>(&answer)
                        .ok()
                        .map(|l| l.id);
                }
                Plan::Update { id: location, .. } => {
                    let url = format!("{}{LOCATIONS}/{}", graph.graph, query_escape(location));
                    graph
                        .call(
                            "updating the named location",
                            reqwest::Method::PATCH,
                            &url,
                            Some(&body),
                            deadline,
                        )
                        .await?;
                }
                Plan::Unchanged { .. } => {}
            }
        }
    }
    if json {
        let out = serde_json::json!({
            "named_location": name,
            "id": id,
            "dry_run": dry_run,
            "plan": plan,
            "trusted": trusted,
            "skipped": skipped,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(exit::OK);
    }
    let id_text = id
        .as_deref()
        .map(|i| format!(" (id {i})"))
        .unwrap_or_default();
    let would = |done: &str, planned: &str| {
        if dry_run {
            planned.to_string()
        } else {
            done.to_string()
        }
    };
    match &plan {
        Plan::Unchanged { ranges, .. } => {
            println!("named location \"{name}\"{id_text}: unchanged, {ranges} range(s), trusted");
        }
        Plan::Create { added } => {
            println!(
                "named location \"{name}\"{id_text}: {} with {} range(s), trusted",
                would("created", "would be created"),
                added.len()
            );
            for a in added {
                println!("  + {a}{}", origin(&trusted, a));
            }
        }
        Plan::Update {
            added,
            removed,
            made_trusted,
            ..
        } => {
            println!(
                "named location \"{name}\"{id_text}: {} to {} range(s)",
                would("updated", "would be updated"),
                desired.len()
            );
            for a in added {
                println!("  + {a}{}", origin(&trusted, a));
            }
            for r in removed {
                println!("  - {r}");
            }
            if *made_trusted {
                println!("  marked trusted (it was not)");
            }
            if added.is_empty() && removed.is_empty() && !made_trusted {
                println!("  duplicate ranges rewritten");
            }
        }
    }
    if dry_run {
        println!("dry run: nothing was written");
    }
    Ok(exit::OK)
}

/// A documentation address (RFC 5737) that no named location holds.
fn pick_untrusted(cfg: &config::Config, locations: &[NamedLocation]) -> Option<IpAddr> {
    let public = cfg.egresses.iter().find_map(|e| match &e.kind {
        config::EgressKind::Public(p) => p.source_address,
        _ => None,
    });
    public
        .into_iter()
        .chain(
            ["192.0.2.1", "198.51.100.1", "203.0.113.1"]
                .iter()
                .filter_map(|s| s.parse().ok()),
        )
        .find(|a| !locations.iter().any(|l| l.contains(*a)))
}

fn demand_text(d: &Demand) -> &'static str {
    match d {
        Demand::Nothing => "allowed, no requirement",
        Demand::Controls => "allowed without a managed device (other controls apply)",
        Demand::ManagedDevice => "needs a compliant or hybrid-joined device",
        Demand::Block => "blocked",
    }
}

async fn check(
    cfg: &config::Config,
    entra: &EntraIdp,
    trusted: Option<IpAddr>,
    untrusted: Option<IpAddr>,
    json: bool,
) -> Result<u8, IdpError> {
    let (set, _) = trusted_addresses(cfg);
    let name = entra.named_location.value.as_str();
    let trusted = match trusted {
        Some(a) => a,
        None => set.first().map(|t| t.net.addr()).ok_or_else(|| {
            IdpError::Usage(
                "no trusted egress address in the configuration: give one with --trusted".into(),
            )
        })?,
    };
    let mut graph = EntraGraph::new(entra)?;
    let deadline = deadline_from_now(graph.client.settings());
    let locations = graph.named_locations(None, deadline).await?;
    let policies = graph.policies(deadline).await?;
    let untrusted = match untrusted {
        Some(a) => a,
        None => pick_untrusted(cfg, &locations).ok_or_else(|| {
            IdpError::Usage("every candidate untrusted address is in a named location: give one with --untrusted".into())
        })?,
    };
    if set.iter().any(|t| t.net.contains(&untrusted)) {
        return Err(IdpError::Usage(format!(
            "--untrusted {untrusted} is a trusted egress address"
        )));
    }
    let ours: Vec<&NamedLocation> = locations
        .iter()
        .filter(|l| l.display_name.to_lowercase() == name.to_lowercase())
        .collect();
    let report: CheckReport = conditional_access::check(
        trusted,
        untrusted,
        ours.first().copied(),
        &policies,
        &locations,
    );
    if json {
        let out = serde_json::json!({
            "named_location": ours.first().map(|l| serde_json::json!({"id": l.id, "display_name": l.display_name, "is_trusted": l.is_trusted, "ranges": l.ip_ranges.len()})),
            "evaluation": "attestgate's reading of the policy documents (not Entra's What If)",
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("Conditional Access, as attestgate reads the {} policies (not Entra's own What If evaluation):", policies.len());
        match ours.first() {
            Some(l) => println!(
                "named location \"{}\" (id {}): {}, {} range(s)",
                l.display_name,
                l.id,
                if l.is_trusted {
                    "trusted"
                } else {
                    "NOT trusted"
                },
                l.ip_ranges.len()
            ),
            None => println!("named location \"{name}\": missing"),
        }
        for (label, v) in [
            ("trusted  ", &report.trusted),
            ("untrusted", &report.untrusted),
        ] {
            let inside = if v.in_locations.is_empty() {
                String::new()
            } else {
                format!(
                    " (in {})",
                    v.in_locations
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            println!("{label} {}{inside}: {}", v.address, demand_text(&v.outcome));
            for p in &v.policies {
                let verdict = if p.applies {
                    p.grant.clone()
                } else {
                    "does not apply".into()
                };
                let scope = if p.covers_all_sign_ins {
                    String::new()
                } else {
                    format!(" [{}]", p.scope)
                };
                println!("  policy \"{}\": {} — {verdict}{scope}", p.name, p.why);
            }
        }
        for w in &report.warnings {
            println!("warning: {w}");
        }
        if report.ok {
            println!("result: as intended — the trusted egress gets sign-in without a managed device, anywhere else it is {}", demand_text(&report.untrusted.outcome));
        } else {
            println!("result: NOT as intended");
            for p in &report.problems {
                println!("  - {p}");
            }
        }
    }
    Ok(if report.ok { exit::OK } else { exit::FAILURE })
}
