//! The goal-state port is the keys to the datacenter: with TLS material the
//! agent only takes goal state from clients whose certificate the configured
//! CA signed; without it, it will not listen beyond loopback unless told to.

use std::{net::SocketAddr, path::Path, process::Command};

use alcor_proto::{
    control::ListRequest, schema::goal_state_provisioner_client::GoalStateProvisionerClient,
};
use alcor_tests::{
    Agent, AgentOptions, Netns,
    agent::{bin, connect_in},
    goalstate::*,
    privileged, unique_prefix,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

struct Pem {
    cert: String,
    key: String,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn leaf(ca: &Ca, names: &[&str]) -> Pem {
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_clients_signed_by_the_configured_ca_may_push() {
    if !privileged("only_clients_signed_by_the_configured_ca_may_push") {
        return;
    }
    let prefix = unique_prefix("tls");
    let host = Netns::new(format!("{prefix}-h")).unwrap();
    host.exec("ip", &["addr", "add", "198.18.7.1/24", "dev", "lo"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("controllers");
    let stranger = ca("somebody else");
    let server = leaf(&trusted, &["198.18.7.1"]);
    let args = vec![
        "--tls-cert".into(),
        write(dir.path(), "server.pem", &server.cert),
        "--tls-key".into(),
        write(dir.path(), "server.key", &server.key),
        "--tls-client-ca".into(),
        write(dir.path(), "ca.pem", &trusted.pem),
    ];
    let listen: SocketAddr = "198.18.7.1:50001".parse().unwrap();
    let agent = Agent::start(
        &host,
        AgentOptions {
            args,
            grpc_listen: Some(listen),
            ..Default::default()
        },
    )
    .await;

    let tls = |client: Option<&Pem>| {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&trusted.pem))
            .domain_name("198.18.7.1");
        match client {
            Some(pem) => config.identity(Identity::from_pem(&pem.cert, &pem.key)),
            None => config,
        }
    };
    let push = async |tls: ClientTlsConfig, id: &str| {
        let channel = connect_in(&host.path(), listen, Some(tls)).await?;
        GoalStateProvisionerClient::new(channel)
            .push_network_resource_states(v1(vec![vpc(id, 100, "10.0.0.0/16")], vec![], vec![]))
            .await
            .map_err(anyhow::Error::from)
    };

    assert!(
        push(tls(None), "vpc-anonymous").await.is_err(),
        "no client certificate"
    );
    let foreign = leaf(&stranger, &["controller"]);
    assert!(
        push(tls(Some(&foreign)), "vpc-stranger").await.is_err(),
        "certificate from another CA"
    );
    let mut control = agent.control().await;
    let vpcs = control
        .list_vpcs(ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .vpcs;
    assert!(
        vpcs.is_empty(),
        "refused clients must not reach goal state: {vpcs:?}"
    );

    let controller = leaf(&trusted, &["controller"]);
    let reply = push(tls(Some(&controller)), "vpc-trusted")
        .await
        .expect("trusted push")
        .into_inner();
    assert_eq!(reply.operation_statuses[0].operation_status, 0);
    let vpcs = control
        .list_vpcs(ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .vpcs;
    assert_eq!(
        vpcs.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        ["vpc-trusted"]
    );
}

#[test]
fn without_tls_the_agent_refuses_a_non_loopback_address() {
    let output = Command::new(bin("alcor-agent"))
        .args([
            "--grpc-listen",
            "0.0.0.0:50001",
            "--state-dir",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve goal state on 0.0.0.0:50001 without mutual TLS"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
}
