//! attestgate: the appliance daemon and its CLI.
//!
//! Layout (DESIGN.md): `cli` (clap) · `daemon` · `control` (socket protocol) · `policy` (the
//! engine) · `compliance` (sources, device table) · `events` · `output` (tables for people).

mod acme;
mod cli;
mod compliance;
mod control;
mod daemon;
mod egress;
mod events;
mod gateway;
mod idp;
mod output;
mod policy;
mod profile;
mod timefmt;
mod update;

use clap::{CommandFactory, Parser};
use cli::{exit, Cli, Command, ConfigCommand};
use config::{ConfigError, FileChecks};
use control::{ClientError, Request};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// What-if decisions assume a device certificate this fresh (the MDA default lifetime).
pub const WHATIF_CERT_LIFETIME: Duration = Duration::from_secs(14 * 86_400);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ExitCode::from(dispatch(cli))
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("attestgate: cannot start the async runtime: {e}");
            None
        }
    }
}

fn dispatch(cli: Cli) -> u8 {
    match &cli.command {
        Command::Version => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"version": env!("CARGO_PKG_VERSION")})
                );
            } else {
                println!("attestgate {}", env!("CARGO_PKG_VERSION"));
            }
            exit::OK
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "attestgate",
                &mut std::io::stdout(),
            );
            exit::OK
        }
        Command::Man { out_dir } => man(out_dir.as_deref()),
        Command::Update(u) => update::run(u, cli.json),
        Command::Idp(cli::IdpCommand::Entra(e)) => idp::run(e, &cli.config, cli.json),
        Command::Config(ConfigCommand::Check { files, strict }) => {
            let files = if files.is_empty() {
                vec![cli.config.clone()]
            } else {
                files.clone()
            };
            config_check(&files, *strict, cli.json)
        }
        Command::Run {
            log_level,
            log_format,
        } => run(&cli.config, log_level.clone(), *log_format),
        Command::Whatif(args) if args.is_offline() => whatif_offline(&cli, args),
        Command::Profile(args) => profile::run(&cli.config, args),
        _ => client(&cli),
    }
}

fn man(out_dir: Option<&Path>) -> u8 {
    let cmd = Cli::command();
    let Some(dir) = out_dir else {
        return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("attestgate: {e}");
                exit::FAILURE
            }
        };
    };
    let write = |name: String, c: clap::Command| -> std::io::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)
    };
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        write("attestgate".into(), cmd.clone())?;
        for sub in cmd.get_subcommands() {
            let name = format!("attestgate-{}", sub.get_name());
            write(name.clone(), sub.clone().name(name))?;
        }
        Ok(())
    });
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!(
                "attestgate: cannot write man pages to {}: {e}",
                dir.display()
            );
            exit::FAILURE
        }
    }
}

fn config_check(files: &[PathBuf], strict: bool, json: bool) -> u8 {
    let mode = if strict {
        FileChecks::Strict
    } else {
        FileChecks::Lenient
    };
    let mut worst = exit::OK;
    let mut reports = Vec::new();
    for file in files {
        match config::load(file, mode) {
            Ok(l) => {
                if json {
                    reports.push(output::check_json(file, None, &l.warnings, Some(&l.digest)));
                } else {
                    for w in &l.warnings.0 {
                        eprintln!("{w}");
                    }
                    println!(
                        "{}: ok ({} warning{})",
                        file.display(),
                        l.warnings.0.len(),
                        if l.warnings.0.len() == 1 { "" } else { "s" }
                    );
                }
            }
            Err(ConfigError::Invalid(d)) => {
                worst = exit::INVALID_CONFIG;
                if json {
                    reports.push(output::check_json(file, None, &d, None));
                } else {
                    eprintln!("{d}");
                    println!(
                        "{}: invalid ({} error{})",
                        file.display(),
                        d.error_count(),
                        if d.error_count() == 1 { "" } else { "s" }
                    );
                }
            }
            Err(e) => {
                worst = exit::INVALID_CONFIG;
                if json {
                    reports.push(output::check_json(
                        file,
                        Some(&e.to_string()),
                        &config::Diagnostics::default(),
                        None,
                    ));
                } else {
                    eprintln!("attestgate: {e}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(reports));
    }
    worst
}

fn init_logging(cfg: &config::Config, level: Option<String>, format: Option<cli::LogFormatArg>) {
    use tracing_subscriber::EnvFilter;
    let filter = level
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| cfg.logging.level.clone());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("attestgate: log filter `{filter}`: {e}; using `info`");
        EnvFilter::new("info")
    });
    let json = match format {
        Some(cli::LogFormatArg::Json) => true,
        Some(cli::LogFormatArg::Text) => false,
        None => cfg.logging.format == config::LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn run(config_path: &Path, level: Option<String>, format: Option<cli::LogFormatArg>) -> u8 {
    let loaded = match config::load(config_path, FileChecks::Strict) {
        Ok(l) => l,
        Err(ConfigError::Invalid(d)) => {
            eprintln!("{d}");
            eprintln!(
                "attestgate: {} is invalid; not starting (nothing is relayed)",
                config_path.display()
            );
            return exit::INVALID_CONFIG;
        }
        Err(e) => {
            eprintln!("attestgate: {e}");
            return exit::INVALID_CONFIG;
        }
    };
    init_logging(&loaded.config, level, format);
    let Some(rt) = runtime() else {
        return exit::FAILURE;
    };
    let path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    match rt.block_on(daemon::run(path, loaded)) {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("attestgate: {e}");
            exit::FAILURE
        }
    }
}

/// The socket to talk to: `--socket`, else the configuration's, else the default.
fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    match config::load(&cli.config, FileChecks::Skip) {
        Ok(l) => l.config.appliance.control_socket,
        Err(_) => PathBuf::from(config::DEFAULT_CONTROL_SOCKET),
    }
}

fn client(cli: &Cli) -> u8 {
    let request = match &cli.command {
        Command::Status => Request::Status {},
        Command::Devices(a) => Request::DeviceList {
            filter: compliance::report::DeviceFilter {
                noncompliant: a.noncompliant,
                group: a.group.clone(),
                source: a.source.clone(),
                risk: a.risk,
            },
        },
        Command::Device(d) => device_request(d),
        Command::Ca(cli::CaCommand::List) => Request::CaList {},
        Command::Ca(cli::CaCommand::Revoke {
            device,
            certificate,
            reason,
        }) => Request::CaRevoke {
            device: device.clone(),
            certificate: certificate.clone(),
            reason: reason.clone(),
        },
        Command::Tunnels => Request::Tunnels {},
        Command::Flows => Request::Flows {},
        Command::Sync => Request::Sync {},
        Command::Tunnel { action, name } => Request::Tunnel {
            name: name.clone(),
            action: action.as_str().to_string(),
        },
        Command::Config(ConfigCommand::Apply { file }) => {
            let file = match file {
                Some(f) => match std::fs::canonicalize(f) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        eprintln!("attestgate: {}: {e}", f.display());
                        return exit::FAILURE;
                    }
                },
                None => None,
            };
            Request::Apply { path: file }
        }
        Command::Whatif(a) => Request::WhatIf {
            device: a.device.clone(),
            target: a.target.clone(),
            protocol: if a.udp {
                policy::Protocol::Udp
            } else {
                policy::Protocol::Tcp
            },
        },
        _ => return exit::FAILURE,
    };
    let socket = socket_path(cli);
    let Some(rt) = runtime() else {
        return exit::FAILURE;
    };
    let response = match rt.block_on(control::call(&socket, &request)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("attestgate: {e}");
            return match e {
                ClientError::NotRunning(_)
                | ClientError::Permission(_)
                | ClientError::Io(..)
                | ClientError::Timeout => exit::UNREACHABLE,
                ClientError::Protocol(_) => exit::FAILURE,
            };
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).unwrap_or_default()
        );
    }
    if let Some(err) = &response.error {
        if !cli.json {
            for d in &err.details {
                eprintln!("{d}");
            }
            eprintln!("attestgate: {}", err.message);
        }
        return if err.code == "invalid-config" {
            exit::INVALID_CONFIG
        } else {
            exit::REFUSED
        };
    }
    if !cli.json {
        let result = response.result.unwrap_or_default();
        match &cli.command {
            Command::Status => print!("{}", output::status(&result)),
            Command::Devices(_) => print!("{}", output::devices(&result)),
            Command::Device(cli::DeviceCommand::Show { .. }) => {
                print!("{}", output::device_show(&result))
            }
            Command::Device(_) => print!("{}", output::device_override(&result)),
            Command::Tunnels => print!("{}", output::tunnels(&result)),
            Command::Flows => print!("{}", output::flows(&result)),
            Command::Ca(cli::CaCommand::List) => print!("{}", output::ca_list(&result)),
            Command::Ca(_) => print!("{}", output::ca_revoked(&result)),
            Command::Sync => println!(
                "synced: {} devices in {} ms",
                result["devices"], result["duration_ms"]
            ),
            Command::Tunnel { action, name } => {
                println!("tunnel {name}: {} requested", action.as_str())
            }
            Command::Config(_) => print!("{}", output::applied(&result)),
            Command::Whatif(_) => print!("{}", output::whatif(&result)),
            _ => {}
        }
    }
    exit::OK
}

fn device_request(d: &cli::DeviceCommand) -> Request {
    use cli::DeviceCommand as D;
    use compliance::OverrideAction as A;
    let now = SystemTime::now();
    let (serial, action, level, reason, until) = match d {
        D::Show { serial } => {
            return Request::DeviceShow {
                serial: serial.clone(),
            }
        }
        D::Block {
            serial,
            expiry,
            reason,
        } => (serial, A::Block, None, reason.clone(), expiry.until(now)),
        D::Risk {
            serial,
            level,
            expiry,
            reason,
        } => (
            serial,
            A::Risk,
            Some(*level),
            reason.clone(),
            expiry.until(now),
        ),
        D::Unblock { serial } => (serial, A::Unblock, None, None, None),
        D::Clear { serial } => (serial, A::Clear, None, None, None),
    };
    Request::DeviceOverride {
        serial: serial.clone(),
        action,
        level,
        reason,
        until,
    }
}

fn whatif_offline(cli: &Cli, a: &cli::WhatifArgs) -> u8 {
    let loaded = match config::load(&cli.config, FileChecks::Skip) {
        Ok(l) => l,
        Err(ConfigError::Invalid(d)) => {
            eprintln!("{d}");
            return exit::INVALID_CONFIG;
        }
        Err(e) => {
            eprintln!("attestgate: {e}");
            return exit::INVALID_CONFIG;
        }
    };
    let proto = if a.udp {
        policy::Protocol::Udp
    } else {
        policy::Protocol::Tcp
    };
    let target = match policy::Target::parse(&a.target, proto) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("attestgate: --target: {e}");
            return exit::USAGE;
        }
    };
    let serial = compliance::normalize_serial(&a.device);
    if serial.is_empty() {
        eprintln!("attestgate: --device: empty serial");
        return exit::USAGE;
    }
    let now = SystemTime::now();
    let record = (!a.unknown).then(|| policy::DeviceRecord {
        managed: a.managed.unwrap_or(true),
        groups: a
            .groups
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect(),
        risk: a.risk.unwrap_or(config::RiskLevel::Secure),
        source: "command line".into(),
        confirmed_at: now - a.age.unwrap_or_default(),
    });
    let not_after = if a.cert_expired {
        now - Duration::from_secs(1)
    } else {
        now + a.cert_expires_in.unwrap_or(WHATIF_CERT_LIFETIME)
    };
    let state = policy::DeviceState {
        serial,
        record,
        cert_not_before: now - Duration::from_secs(60),
        cert_not_after: not_after,
    };
    let engine = policy::PolicyEngine::new(std::sync::Arc::new(loaded.config));
    let decision = engine.decide(&state, &target, now);
    let result = serde_json::json!({
        "device": state,
        "target": target.to_string(),
        "offline": true,
        "certificate_assumed": a.cert_expires_in.is_none() && !a.cert_expired,
        "why": decision.failed().map(|r| r.detail.clone()),
        "decision": decision,
    });
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    } else {
        print!("{}", output::whatif(&result));
    }
    exit::OK
}
