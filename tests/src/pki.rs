//! Throwaway mutual-TLS material for tests and the demo: a CA and
//! certificates for agents and the controller (each valid for its underlay address, for server and client
//! auth: agents serve goal state and register with theirs, the controller
//! serves registrations and dials agents with its own), written as PEM
//! files into a temporary directory.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> anyhow::Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("alcor-pki-")
            .tempdir()
            .context("temp dir for certificates")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        Ok(Pki { dir, ca })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `ip`, an underlay address: an agent's (its
    /// goal-state service, and its identity when it registers) or the
    /// controller's (its agents' service, and its identity when it pushes).
    pub fn server(&self, name: &str, ip: IpAddr) -> anyhow::Result<CertFiles> {
        self.issue(
            name,
            vec![ip.to_string()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn issue(
        &self,
        name: &str,
        subject_alt_names: Vec<String>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(subject_alt_names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    /// Flags that make a controller serve its agents with `server`, accept
    /// only agents this CA signed, and trust agents' certificates it signed.
    pub fn controller_args(&self, server: &CertFiles) -> Vec<String> {
        vec![
            "--agent-tls-cert".into(),
            server.cert.display().to_string(),
            "--agent-tls-key".into(),
            server.key.display().to_string(),
            "--agent-tls-ca".into(),
            self.ca_file().display().to_string(),
        ]
    }

    /// Flags that make an agent serve with `server` and accept only clients
    /// this CA signed.
    pub fn agent_args(&self, server: &CertFiles) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            server.cert.display().to_string(),
            "--tls-key".into(),
            server.key.display().to_string(),
            "--tls-client-ca".into(),
            self.ca_file().display().to_string(),
        ]
    }
}
