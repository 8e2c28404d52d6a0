//! Azure: the provisioning media and the WireServer's "ready" report, as Microsoft's "Creating
//! generalized images without a provisioning agent" (Azure Linux VM docs, "no-agent") and the
//! OVF environment of waagent describe them.
//!
//! The media is a UDF or ISO 9660 volume holding `ovf-env.xml`: an OVF `Environment` whose
//! `wa:ProvisioningSection` holds a `LinuxProvisioningConfigurationSet` with `HostName`,
//! `UserName`, `SSH/PublicKeys/PublicKey/Value` and `CustomData` (base64; the attestgate
//! configuration). Elements are matched by local name: the prefixes vary (`wa:`, `ns1:`, a
//! default namespace). A password is never used: the console says one was set aside.
//!
//! Then the report: `GET /machine/?comp=goalstate` (`x-ms-version: 2012-11-30`) gives
//! `Incarnation`, `Container/ContainerId` and `Container/RoleInstanceList/RoleInstance/
//! InstanceId`; `POST /machine/?comp=health` sends the `Health` document with `State` `Ready`,
//! or `NotReady` with `Details` (`SubStatus` `ProvisioningFailed` and the error's first line as
//! `Description`, as waagent and cloud-init report a failed provisioning) so that `az vm
//! create` fails at once and shows why instead of timing out.

use super::http::Client;
use super::seed::{
    check_hostname, parse_user_data, MetaData, Seed, SeedError, UserData, MAX_USER_DATA,
};
use base64::Engine as _;

pub const WIRESERVER: &str = "http://168.63.129.16";
/// The WireServer protocol version sent (the no-agent document's).
pub const MS_VERSION: &str = "2012-11-30";
pub const AGENT_NAME: &str = "attestgate-firstboot";
pub const OVF_ENV: &str = "ovf-env.xml";
/// Largest ovf-env.xml read (custom data is at most 64 KiB before base64).
pub const MAX_OVF_ENV: usize = 2 << 20;
/// The SubStatus of a failed provisioning.
pub const FAILED_SUBSTATUS: &str = "ProvisioningFailed";
/// Longest Description sent.
const MAX_DESCRIPTION: usize = 512;

/// Parses `ovf-env.xml`. The instance id is left for the caller (the VM's DMI UUID).
pub fn parse_ovf_env(bytes: &[u8]) -> Result<Seed, SeedError> {
    let bad = |reason: String| SeedError::Malformed {
        file: OVF_ENV.into(),
        reason,
    };
    let text = super::seed::text(OVF_ENV, bytes, MAX_OVF_ENV)?;
    let doc = roxmltree::Document::parse(&text).map_err(|e| bad(format!("not XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Environment" {
        return Err(bad(format!(
            "the root element is {:?}, not Environment",
            root.tag_name().name()
        )));
    }
    let set = child(root, "ProvisioningSection")
        .and_then(|p| child(p, "LinuxProvisioningConfigurationSet"))
        .ok_or_else(|| bad("no ProvisioningSection/LinuxProvisioningConfigurationSet".into()))?;
    let value = |name: &str| child(set, name).map(node_text).filter(|v| !v.is_empty());
    let mut notes = Vec::new();
    let local_hostname = value("HostName");
    if let Some(host) = &local_hostname {
        check_hostname(host).map_err(|reason| bad(format!("HostName: {reason}")))?;
    }
    if let Some(user) = value("UserName") {
        notes.push(format!(
            "admin user name {user:?}: its SSH keys are installed for the appliance's login"
        ));
    }
    if value("UserPassword").is_some() {
        notes.push("a password was given and set aside: attestgate logins use SSH keys".into());
    }
    let mut public_keys = Vec::new();
    let keys = child(set, "SSH").and_then(|s| child(s, "PublicKeys"));
    for (n, key) in keys
        .into_iter()
        .flat_map(|k| k.children())
        .filter(|k| k.tag_name().name() == "PublicKey")
        .enumerate()
    {
        match child(key, "Value").map(node_text).filter(|v| !v.is_empty()) {
            Some(v) => public_keys.push(v),
            None => notes.push(format!(
                "SSH public key {} has no Value (keys only in the goal state's certificates \
                 are not read), skipped",
                n + 1
            )),
        }
    }
    let user_data = match value("CustomData") {
        None => UserData::Absent,
        Some(b64) => {
            // Base64 may be folded over lines (RFC 2045 §6.8 style); the alphabet is RFC 4648 §4.
            let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            if compact.len() > MAX_USER_DATA / 3 * 4 + 4 {
                return Err(SeedError::TooLarge {
                    file: "CustomData".into(),
                    size: compact.len() / 4 * 3,
                    max: MAX_USER_DATA,
                });
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|e| bad(format!("CustomData is not base64: {e}")))?;
            parse_user_data(&raw)?
        }
    };
    Ok(Seed {
        meta: MetaData {
            instance_id: None,
            local_hostname,
            public_keys,
        },
        user_data,
        files: Vec::new(),
        notes,
    })
}

/// What the goal state says that the health report needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalState {
    pub incarnation: String,
    pub container_id: String,
    pub instance_id: String,
}

pub fn parse_goal_state(xml: &str) -> Result<GoalState, SeedError> {
    let bad = |reason: String| SeedError::Malformed {
        file: "goal state".into(),
        reason,
    };
    let doc = roxmltree::Document::parse(xml).map_err(|e| bad(format!("not XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "GoalState" {
        return Err(bad(format!(
            "the root element is {:?}",
            root.tag_name().name()
        )));
    }
    let get = |node: Option<roxmltree::Node>, what: &str| {
        node.map(node_text)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("no {what}")))
    };
    let container = child(root, "Container");
    Ok(GoalState {
        incarnation: get(child(root, "Incarnation"), "Incarnation")?,
        container_id: get(
            container.and_then(|c| child(c, "ContainerId")),
            "Container/ContainerId",
        )?,
        instance_id: get(
            container
                .and_then(|c| child(c, "RoleInstanceList"))
                .and_then(|l| child(l, "RoleInstance"))
                .and_then(|r| child(r, "InstanceId")),
            "Container/RoleInstanceList/RoleInstance/InstanceId",
        )?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Provisioning failed: why, shown by `az vm create`.
    NotReady {
        description: String,
    },
}

impl Health {
    /// NotReady with the first line of `error` (and the line after it when the first ends
    /// with `:`, as "…invalid, not installed:" does before the checker's first error).
    pub fn failed(error: &str) -> Health {
        let mut lines = error.lines().map(str::trim).filter(|l| !l.is_empty());
        let mut first = lines.next().unwrap_or("failed").to_string();
        if first.ends_with(':') {
            if let Some(next) = lines.next() {
                first = format!("{first} {next}");
            }
        }
        let mut description: String = first.chars().take(MAX_DESCRIPTION).collect();
        if description.len() < first.len() {
            description.push('…');
        }
        Health::NotReady { description }
    }
}

/// The `Health` document of the no-agent guide, with waagent's `Details` when not ready.
pub fn health_xml(gs: &GoalState, health: &Health) -> String {
    let (state, details) = match health {
        Health::Ready => ("Ready", String::new()),
        Health::NotReady { description } => (
            "NotReady",
            format!(
                "<Details><SubStatus>{FAILED_SUBSTATUS}</SubStatus><Description>{}</Description></Details>",
                escape(description)
            ),
        ),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\
         <GoalStateIncarnation>{}</GoalStateIncarnation>\
         <Container><ContainerId>{}</ContainerId>\
         <RoleInstanceList><Role><InstanceId>{}</InstanceId>\
         <Health><State>{state}</State>{details}</Health>\
         </Role></RoleInstanceList></Container></Health>\n",
        escape(&gs.incarnation),
        escape(&gs.container_id),
        escape(&gs.instance_id),
    )
}

/// Fetches the goal state and posts `health` to the WireServer at `client`.
pub fn report_health(client: &Client, health: &Health) -> Result<GoalState, SeedError> {
    let err = |path: &str, reason: String| SeedError::Service {
        service: format!("Azure WireServer {}", client.url(path)),
        reason,
    };
    let headers = [
        ("x-ms-version", MS_VERSION),
        ("x-ms-agent-name", AGENT_NAME),
    ];
    let path = "/machine/?comp=goalstate";
    let resp = client
        .send_retrying("GET", path, &headers, None)
        .map_err(|e| err(path, e.to_string()))?;
    if resp.status != 200 {
        return Err(err(path, format!("HTTP {}", resp.status)));
    }
    let xml = String::from_utf8(resp.body).map_err(|_| err(path, "not UTF-8".into()))?;
    let gs = parse_goal_state(&xml)?;
    let body = health_xml(&gs, health);
    let path = "/machine/?comp=health";
    let post_headers = [
        headers[0],
        headers[1],
        ("Content-Type", "text/xml;charset=utf-8"),
    ];
    let resp = client
        .send_retrying("POST", path, &post_headers, Some(body.as_bytes()))
        .map_err(|e| err(path, e.to_string()))?;
    if !(200..300).contains(&resp.status) {
        return Err(err(path, format!("HTTP {}", resp.status)));
    }
    Ok(gs)
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// An element's text (its text and CDATA children), trimmed.
fn node_text(node: roxmltree::Node) -> String {
    node.children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect::<String>()
        .trim()
        .to_string()
}

/// XML 1.0 §2.4: `&` and `<` must be escaped in character data; `>` too for `]]>`.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn failed_description_is_the_first_line() {
        assert_eq!(
            Health::failed("\nfirst <line> & more\nsecond"),
            Health::NotReady {
                description: "first <line> & more".into()
            }
        );
        assert_eq!(
            Health::failed("invalid, not installed:\n  f:1:1: error: x\nmore"),
            Health::NotReady {
                description: "invalid, not installed: f:1:1: error: x".into()
            }
        );
        let gs = GoalState {
            incarnation: "1".into(),
            container_id: "c".into(),
            instance_id: "i".into(),
        };
        let xml = health_xml(&gs, &Health::failed("a <b> & c"));
        assert!(
            xml.contains("<Description>a &lt;b&gt; &amp; c</Description>"),
            "{xml}"
        );
        // The document parses.
        roxmltree::Document::parse(&xml).unwrap();
    }
}
