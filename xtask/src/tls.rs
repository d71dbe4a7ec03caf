//! Throwaway mutual-TLS material: a CA, certificates for agents (valid for
//! their underlay address; they serve goal state with them and present them
//! to the controller) and a client certificate for the controller, written
//! as PEM files into a temporary directory.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

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

    /// An agent's certificate for `ip`, its underlay address: the server
    /// side of its goal-state service, and its client identity when it
    /// registers with a controller over https.
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

    /// A client certificate (the controller).
    pub fn client(&self, name: &str) -> anyhow::Result<CertFiles> {
        self.issue(name, vec![], vec![ExtendedKeyUsagePurpose::ClientAuth])
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

    /// The client side: trust this CA, present `client`.
    pub fn client_config(&self, client: &CertFiles) -> anyhow::Result<ClientTlsConfig> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(self.ca_file())?))
            .identity(Identity::from_pem(
                std::fs::read(&client.cert)?,
                std::fs::read(&client.key)?,
            )))
    }
}
