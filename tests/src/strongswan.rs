//! strongSwan 5.9 peers (charon + swanctl) in namespaces, with userspace ESP (kernel-libipsec:
//! this kernel has no ESP), each with its own strongswan.conf, vici socket and private /run.

use crate::netns::Netns;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How a peer authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    Psk(String),
    /// Certificates: this end's certificate and key, the other end's, and the CA both trust.
    Cert {
        ours: crate::pki::LabCert,
        theirs: crate::pki::LabCert,
        ca: PathBuf,
        /// strongSwan's own signature scheme (its `local.auth`), e.g. `ike:rsa/pss-sha256`;
        /// `pubkey` when `None`. Only strongSwan reads it.
        strongswan_signs: Option<String>,
    },
}

impl Auth {
    /// The same credentials seen from the other end.
    fn mirrored(&self) -> Auth {
        match self {
            Auth::Psk(_) => self.clone(),
            Auth::Cert {
                ours,
                theirs,
                ca,
                strongswan_signs,
            } => Auth::Cert {
                ours: theirs.clone(),
                theirs: ours.clone(),
                ca: ca.clone(),
                strongswan_signs: strongswan_signs.clone(),
            },
        }
    }

    /// The lines of swanctl's `local` and `remote` sections, and the `secrets` section.
    fn swanctl(&self, local_id: &str, remote_id: &str) -> (String, &'static str, String) {
        match self {
            Auth::Psk(secret) => (
                "auth = psk".into(),
                "auth = psk",
                format!(
                    "secrets {{\n  ike-lab {{\n    id-1 = {local_id}\n    id-2 = {remote_id}\n    secret = \"{secret}\"\n  }}\n}}\n"
                ),
            ),
            // the files are put into x509/, private/ and x509ca/ by `Charon::start`
            Auth::Cert {
                strongswan_signs, ..
            } => (
                format!(
                    "auth = {}\n      certs = local.pem",
                    strongswan_signs.as_deref().unwrap_or("pubkey")
                ),
                "auth = pubkey\n      cacerts = ca.pem",
                String::new(),
            ),
        }
    }
}

/// A distinguished name (`O=…, CN=…`) in double quotes, as swanctl.conf wants it.
fn quoted(id: &str) -> String {
    if id.contains('=') {
        format!("\"{id}\"")
    } else {
        id.to_string()
    }
}

/// One side of a site-to-site tunnel, in swanctl terms.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub local_addr: String,
    pub remote_addr: String,
    pub local_id: String,
    pub remote_id: String,
    pub auth: Auth,
    /// `proposals`, e.g. `aes256gcm16-prfsha384-ecp384`.
    pub ike_proposal: String,
    /// `esp_proposals`, e.g. `aes256gcm16`.
    pub esp_proposal: String,
    pub local_ts: String,
    pub remote_ts: String,
    /// Child SA rekey time (`rekey_time`), e.g. `"1h"` or `"5s"`.
    pub child_rekey: String,
    /// IKE SA rekey time of the connection, e.g. `"4h"`.
    pub ike_rekey: String,
}

impl PeerConfig {
    /// The same tunnel seen from the other end.
    pub fn mirrored(&self) -> PeerConfig {
        PeerConfig {
            local_addr: self.remote_addr.clone(),
            remote_addr: self.local_addr.clone(),
            local_id: self.remote_id.clone(),
            remote_id: self.local_id.clone(),
            local_ts: self.remote_ts.clone(),
            remote_ts: self.local_ts.clone(),
            auth: self.auth.mirrored(),
            ..self.clone()
        }
    }

    fn swanctl_conf(&self) -> String {
        let (local, remote, secrets) = self
            .auth
            .swanctl(&quoted(&self.local_id), &quoted(&self.remote_id));
        format!(
            r#"connections {{
  lab {{
    version = 2
    rekey_time = {ike_rekey}
    over_time = 1h
    rand_time = 0s
    local_addrs = {la}
    remote_addrs = {ra}
    proposals = {ike}
    local {{
      {local}
      id = {lid}
    }}
    remote {{
      {remote}
      id = {rid}
    }}
    children {{
      lab {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {esp}
        rekey_time = {rekey}
        life_time = 2h
        rand_time = 0s
      }}
    }}
  }}
}}
{secrets}"#,
            la = self.local_addr,
            ra = self.remote_addr,
            ike = self.ike_proposal,
            lid = quoted(&self.local_id),
            rid = quoted(&self.remote_id),
            lts = self.local_ts,
            rts = self.remote_ts,
            esp = self.esp_proposal,
            rekey = self.child_rekey,
            ike_rekey = self.ike_rekey,
        )
    }
}

/// Settings of a charon beyond the tunnel itself; the defaults leave strongSwan's own.
#[derive(Debug, Clone, Default)]
pub struct CharonOptions {
    /// `charon.fragment_size`: the largest IP datagram of an IKE fragment it sends.
    pub fragment_size: Option<u32>,
    /// `charon.cookie_threshold`: half-open IKE SAs above which it asks for cookies (0: never).
    pub cookie_threshold: Option<u32>,
    /// The connection's `fragmentation` (`yes`, `accept`, `force`, `no`).
    pub fragmentation: Option<&'static str>,
}

impl CharonOptions {
    fn charon_lines(&self) -> String {
        let mut out = String::new();
        if let Some(n) = self.fragment_size {
            out.push_str(&format!("  fragment_size = {n}\n"));
        }
        if let Some(n) = self.cookie_threshold {
            out.push_str(&format!("  cookie_threshold = {n}\n"));
        }
        out
    }

    fn connection_lines(&self, swanctl: &str) -> String {
        match self.fragmentation {
            Some(f) => swanctl.replacen(
                "    version = 2\n",
                &format!("    version = 2\n    fragmentation = {f}\n"),
                1,
            ),
            None => swanctl.to_string(),
        }
    }
}

/// A running charon; stopped when dropped.
#[derive(Debug)]
pub struct Charon {
    pub dir: tempfile::TempDir,
    child: Child,
    ns_name: String,
}

impl Charon {
    fn vici(&self) -> String {
        format!("unix://{}", self.dir.path().join("charon.vici").display())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("charon.log")
    }

    /// Starts charon in `ns` and loads `cfg`.
    pub fn start(ns: &Netns, cfg: &PeerConfig) -> Charon {
        Charon::start_with(ns, cfg, &CharonOptions::default())
    }

    /// Starts charon in `ns` with `options` and loads `cfg`.
    pub fn start_with(ns: &Netns, cfg: &PeerConfig, options: &CharonOptions) -> Charon {
        let dir = tempfile::tempdir().unwrap();
        let vici = dir.path().join("charon.vici");
        std::fs::write(
            dir.path().join("strongswan.conf"),
            format!(
                r#"charon {{
  load = random nonce kdf openssl x509 pkcs8 constraints curve25519 chapoly aes sha1 sha2 hmac gcm pem pkcs1 pubkey kernel-libipsec kernel-netlink socket-default vici updown
  install_routes = yes
  retransmit_tries = 3
{charon_options}  plugins {{
    vici {{ socket = unix://{} }}
    kernel-libipsec {{ load = yes }}
  }}
  filelog {{
    stderr {{ default = 1 ike = 2 }}
  }}
}}
"#,
                vici.display(),
                charon_options = options.charon_lines(),
            ),
        )
        .unwrap();
        let swanctl = options.connection_lines(&cfg.swanctl_conf());
        std::fs::write(dir.path().join("swanctl.conf"), swanctl).unwrap();
        if let Auth::Cert { ours, ca, .. } = &cfg.auth {
            // swanctl's credential folders, found through SWANCTL_DIR (see `swanctl`)
            for (sub, from, to) in [
                ("x509", &ours.cert, "local.pem"),
                ("private", &ours.key, "local.key"),
                ("x509ca", ca, "ca.pem"),
            ] {
                std::fs::create_dir_all(dir.path().join(sub)).unwrap();
                std::fs::copy(from, dir.path().join(sub).join(to)).unwrap();
            }
        }
        let log = std::fs::File::create(dir.path().join("charon.log")).unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "unshare", "-m", "sh", "-c"])
            .arg("mount -t tmpfs none /run && exec /usr/lib/ipsec/charon")
            .env("STRONGSWAN_CONF", dir.path().join("strongswan.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let charon = Charon {
            dir,
            child,
            ns_name: ns.name.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !vici.exists() {
            assert!(
                Instant::now() < deadline,
                "charon did not start: {}",
                charon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        charon.swanctl(&[
            "--load-all",
            "--file",
            &charon.dir.path().join("swanctl.conf").display().to_string(),
        ]);
        charon
    }

    /// Runs swanctl against this charon, insisting it succeeds.
    pub fn swanctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "swanctl"])
            .args(args)
            .env("SWANCTL_DIR", self.dir.path())
            .args(["--uri", &self.vici()])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "swanctl {args:?} failed: {text}\ncharon log:\n{}",
            self.log()
        );
        text
    }

    /// Initiates the child SA `lab` (and its IKE SA).
    pub fn initiate(&self) -> String {
        self.swanctl(&["--initiate", "--child", "lab", "--timeout", "20"])
    }

    /// `swanctl --list-sas --raw`, what strongSwan's own test suite matches.
    pub fn list_sas(&self) -> String {
        self.swanctl(&["--list-sas", "--raw"])
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs iperf3 for `secs` seconds from `client` (bound to `from`) to a server on `server` at
/// `to`; returns bits per second received.
pub fn iperf3(server: &Netns, to: &str, client: &Netns, from: &str, secs: u32) -> f64 {
    let mut srv = server.spawn(
        &["iperf3", "-s", "-B", to, "-1"],
        Stdio::null(),
        Stdio::null(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = client.ok(&[
        "iperf3",
        "-c",
        to,
        "-B",
        from,
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}
