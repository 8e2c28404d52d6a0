//! `[appliance]` and `[relay]`.

use super::Reader;
use crate::model::*;
use crate::tree::{array, choice, parsed, Fields, Node, NodeValue};
use std::path::PathBuf;
use std::time::Duration;

impl Reader<'_, '_> {
    pub(super) fn appliance(&mut self, node: &Node) -> Option<Appliance> {
        let f = Fields::open(
            self.sink,
            node,
            "appliance",
            &["name", "state_dir", "control_socket"],
        )?;
        let name = match f.get("name") {
            Some(_) => self.string_key(&f, "name", false).map(|s| s.value),
            None => Some("attestgate".to_string()),
        };
        let state_dir = match f.get("state_dir") {
            Some(e) => self
                .path(&e.node, &f.key_path("state_dir"))
                .map(|p| p.value),
            None => Some(PathBuf::from(DEFAULT_STATE_DIR)),
        };
        let control_socket = match f.get("control_socket") {
            Some(e) => self
                .path(&e.node, &f.key_path("control_socket"))
                .map(|p| p.value),
            None => Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        };
        Some(Appliance {
            name: name?,
            state_dir: state_dir?,
            control_socket: control_socket?,
        })
    }

    pub(super) fn relay(&mut self, node: &Node) -> Option<Relay> {
        let f = Fields::open(
            self.sink,
            node,
            "relay",
            &[
                "http3_listen",
                "http2_listen",
                "certificate",
                "private_key",
                "device_ca",
                "crl",
                "identity",
                "udp_path",
                "header_secret_file",
                "header_name",
                "limits",
            ],
        )?;
        let http3_listen = self.socket_list(&f, "http3_listen", "[::]:443");
        let http2_listen = self.socket_list(&f, "http2_listen", "[::]:443");
        let certificate = self.path_key(&f, "certificate", true);
        let private_key = self.path_key(&f, "private_key", true);
        // optional here: with an enabled [acme] the built-in device CA is trusted by default, so
        // validate::device_cas asks for it only without one
        let device_ca = self.path_list(&f, "device_ca", false);
        let crl = self.path_list(&f, "crl", false);
        const IDS: &[(&str, IdentityField)] = &[
            ("permanent-identifier", IdentityField::PermanentIdentifier),
            ("apple-serial", IdentityField::AppleSerial),
            ("subject-cn", IdentityField::SubjectCn),
            ("subject-serial", IdentityField::SubjectSerial),
        ];
        let identity = match f.get("identity") {
            Some(e) => array(
                self.sink,
                &e.node,
                &f.key_path("identity"),
                true,
                |sink, n, p| choice(sink, n, p, IDS),
            )
            .unwrap_or_default(),
            None => vec![
                IdentityField::PermanentIdentifier,
                IdentityField::AppleSerial,
            ],
        };
        let udp_path = match f.get("udp_path") {
            Some(e) => parsed(
                self.sink,
                &e.node,
                &f.key_path("udp_path"),
                "an absolute path template with {target_host} and {target_port}",
                |s| {
                    if !s.starts_with('/') {
                        Err("must start with `/`".to_string())
                    } else if !s.contains("{target_host}") || !s.contains("{target_port}") {
                        Err(
                            "must contain both {target_host} and {target_port} (RFC 9298 §2)"
                                .to_string(),
                        )
                    } else {
                        Ok(s.to_string())
                    }
                },
            )
            .map(|s| s.value),
            None => Some(DEFAULT_UDP_PATH.to_string()),
        };
        let header_secret = match self.path_key(&f, "header_secret_file", false) {
            Some(file) => {
                let header = match f.get("header_name") {
                    Some(e) => parsed(
                        self.sink,
                        &e.node,
                        &f.key_path("header_name"),
                        "an HTTP header name",
                        |s| {
                            let ok = !s.is_empty()
                                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                            if ok {
                                Ok(s.to_ascii_lowercase())
                            } else {
                                Err("not a valid header name".to_string())
                            }
                        },
                    )
                    .map(|s| s.value),
                    None => Some("x-attestgate-secret".to_string()),
                };
                header.map(|header| HeaderSecret { header, file })
            }
            None => {
                if let Some(e) = f.get("header_name") {
                    self.sink.warning(
                        &e.key_span,
                        &f.key_path("header_name"),
                        "has no effect without header_secret_file",
                    );
                }
                None
            }
        };
        let limits = match f.get("limits") {
            Some(e) => self.relay_limits(&e.node),
            None => self.relay_limits(&Node {
                span: f.span.clone(),
                value: NodeValue::Table(Vec::new()),
            }),
        };
        if http3_listen.is_empty()
            && http2_listen.is_empty()
            && (f.get("http3_listen").is_some() || f.get("http2_listen").is_some())
        {
            self.sink
                .error(
                    &f.span,
                    "relay",
                    "no listener: both http3_listen and http2_listen are empty",
                )
                .expected("at least one listen address");
        }
        Some(Relay {
            http3_listen,
            http2_listen,
            certificate: certificate?,
            private_key: private_key?,
            device_ca,
            crl,
            identity,
            udp_path: udp_path?,
            header_secret,
            limits: limits?,
        })
    }

    pub(super) fn relay_limits(&mut self, node: &Node) -> Option<RelayLimits> {
        let f = Fields::open(
            self.sink,
            node,
            "relay.limits",
            &[
                "max_connections_per_device",
                "max_streams_per_connection",
                "connection_idle_timeout",
                "keepalive_interval",
                "stream_idle_timeout",
                "max_header_bytes",
            ],
        )?;
        let max_connections_per_device =
            self.int_key(&f, "max_connections_per_device", 1, 10_000, 16);
        let max_streams_per_connection =
            self.int_key(&f, "max_streams_per_connection", 1, 100_000, 100);
        let connection_idle_timeout =
            self.duration_key(&f, "connection_idle_timeout", Duration::from_secs(600));
        let keepalive_interval =
            self.duration_key(&f, "keepalive_interval", Duration::from_secs(25));
        let stream_idle = self.duration_key(&f, "stream_idle_timeout", Duration::ZERO);
        let max_header_bytes = self.int_key(&f, "max_header_bytes", 1024, 1 << 20, 16 * 1024);
        if let (Some(idle), Some(keep)) = (connection_idle_timeout, keepalive_interval) {
            if keep >= idle {
                self.sink
                    .error(&f.value_span("keepalive_interval"), "relay.limits.keepalive_interval", "keepalives must come more often than the idle timeout, or idle connections drop")
                    .expected(format!("less than connection_idle_timeout ({})", crate::units::format_duration(idle)));
            }
        }
        Some(RelayLimits {
            max_connections_per_device: u32::try_from(max_connections_per_device?).ok()?,
            max_streams_per_connection: u32::try_from(max_streams_per_connection?).ok()?,
            connection_idle_timeout: connection_idle_timeout?,
            keepalive_interval: keepalive_interval?,
            stream_idle_timeout: stream_idle.map(|d| (!d.is_zero()).then_some(d))?,
            max_header_bytes: u32::try_from(max_header_bytes?).ok()?,
        })
    }
}
