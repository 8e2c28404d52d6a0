//! Golden files for the cloud platforms' first-boot parsers. Each directory under tests/aws,
//! tests/gcp and tests/azure is a case: `responses` is what the metadata service answers
//! (served on 127.0.0.1 by `common::Server`, in the shapes the platforms document), Azure's
//! `ovf-env.xml` is the provisioning media's file. `expected` is what the parser makes of it
//! (and `config check`'s lenient validation of a configuration), then every request the client
//! sent — for Azure including the exact health report posted. `UPDATE_GOLDEN=1 cargo test -p
//! image --test cloud_golden` rewrites them; review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{golden, render, Server};
use image::firstboot::http::Client;
use image::firstboot::{aws, azure, gcp};
use std::path::Path;
use std::time::Duration;

fn client(server: &Server, prefix: &str) -> Client {
    let mut c = Client::new(&format!("{}{prefix}", server.base)).unwrap();
    // Enough for one retry after 250 ms (the "busy" cases), short enough for the suite.
    c.retry_for = Duration::from_millis(1500);
    c
}

#[test]
fn aws_imdsv2() {
    golden("aws", 10, |case| {
        let server = Server::start(&case.join("responses"));
        let (mut out, _) = render(aws::read_seed(&client(&server, "")));
        out.push_str(&server.render_requests());
        let out = out.replace(&server.base, "http://127.0.0.1:PORT");
        // IMDSv2 only: every read carries the session token.
        for r in server.requests().iter().filter(|r| r.method == "GET") {
            assert!(
                r.header("X-aws-ec2-metadata-token").is_some(),
                "{case:?}: IMDSv1 GET"
            );
        }
        out
    });
}

#[test]
fn gcp_metadata() {
    golden("gcp", 10, |case| {
        let server = Server::start(&case.join("responses"));
        let mut c = client(&server, "/computeMetadata/v1");
        c.host_header = gcp::HOST.into();
        let (mut out, _) = render(gcp::read_seed(&c));
        out.push_str(&server.render_requests());
        for r in server.requests() {
            assert_eq!(r.header("Metadata-Flavor"), Some("Google"));
            assert_eq!(r.header("Host"), Some(gcp::HOST));
        }
        out
    });
}

#[test]
fn azure_provisioning() {
    golden("azure", 10, |case: &Path| {
        let server = Server::start(&case.join("responses"));
        let ovf = std::fs::read(case.join("ovf-env.xml")).unwrap();
        let (mut out, verdict) = render(azure::parse_ovf_env(&ovf));
        let health = match verdict {
            Ok(()) => azure::Health::Ready,
            Err(e) => azure::Health::failed(&e),
        };
        match azure::report_health(&client(&server, ""), &health) {
            Ok(gs) => out.push_str(&format!(
                "reported: incarnation {} container {} instance {}\n",
                gs.incarnation, gs.container_id, gs.instance_id
            )),
            Err(e) => out.push_str(&format!("report failed: {e}\n")),
        }
        out.push_str(&server.render_requests());
        out.replace(&server.base, "http://127.0.0.1:PORT")
    });
}

#[test]
fn goal_state_shapes() {
    let ns = r#"<GoalState xmlns="http://schemas.microsoft.com/windowsazure"><Incarnation>7</Incarnation>
        <Container><ContainerId>c</ContainerId><RoleInstanceList><RoleInstance>
        <InstanceId>i</InstanceId></RoleInstance></RoleInstanceList></Container></GoalState>"#;
    let gs = azure::parse_goal_state(ns).unwrap();
    assert_eq!(
        (
            gs.incarnation.as_str(),
            gs.container_id.as_str(),
            gs.instance_id.as_str()
        ),
        ("7", "c", "i")
    );
    let missing = "<GoalState><Incarnation>1</Incarnation><Container><ContainerId>c</ContainerId></Container></GoalState>";
    let e = azure::parse_goal_state(missing).unwrap_err().to_string();
    assert!(e.contains("RoleInstance/InstanceId"), "{e}");
    assert!(azure::parse_goal_state("<Other/>").is_err());
    assert!(azure::parse_goal_state("not xml").is_err());
}
