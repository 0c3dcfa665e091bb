//! A throw-away CA for tests and the demo (never for production: its key sits beside the
//! certificates, unencrypted). [`write_test_ca`] writes, into one directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the CA |
//! | `node.pem`, `node-key.pem` | a server certificate for coordd's client and peer ports, usable as a client certificate too (both EKUs); SANs `localhost`, `::1`, `127.0.0.1`..`127.0.0.10` |
//! | `client.pem`, `client-key.pem` | a client certificate (CN `client`) |
//!
//! Two calls make two unrelated CAs (fresh keys), which is how the tests get "a certificate
//! from another CA".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::TlsError;

/// Highest last octet of the 127.0.0.x addresses in the node certificate's SANs.
pub const NODE_LOOPBACK_HOSTS_MAX: u8 = 10;

/// The files [`write_test_ca`] wrote.
#[derive(Debug, Clone)]
pub struct TestCaFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCaFiles {
    /// The file names `write_test_ca` uses in `dir` (whether written or not).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("generating a test certificate: {e}"))
}

/// Generates a fresh CA (`ca_name` as its common name) with a node and a client certificate
/// into `dir` (created if missing).
pub fn write_test_ca(dir: &Path, ca_name: &str) -> Result<TestCaFiles, TlsError> {
    let files = TestCaFiles::in_dir(dir);
    std::fs::create_dir_all(dir).map_err(|e| crate::file_err("directory", dir, e))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;

    let leaf = |cn: &str, sans: Vec<SanType>| -> Result<(String, String), TlsError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut node_sans = vec![
        SanType::DnsName("localhost".try_into().map_err(gen_err)?),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for last in 1..=NODE_LOOPBACK_HOSTS_MAX {
        node_sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(
            127, 0, 0, last,
        ))));
    }
    let (node_cert, node_key) = leaf("coordd node", node_sans)?;
    let (client_cert, client_key) = leaf(
        "client",
        vec![SanType::DnsName("client".try_into().map_err(gen_err)?)],
    )?;

    for (path, text) in [
        (&files.ca, ca_cert.pem()),
        (&files.ca_key, ca_key.serialize_pem()),
        (&files.node_cert, node_cert),
        (&files.node_key, node_key),
        (&files.client_cert, client_cert),
        (&files.client_key, client_key),
    ] {
        std::fs::write(path, text).map_err(|e| crate::file_err("file", path, e))?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client_config, server_config, server_name, TlsAcceptor, TlsConnector};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn handshake(
        server: std::sync::Arc<rustls::ServerConfig>,
        client: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<(), String> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server);
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = crate::accept(&acceptor, s, 2_000)
                .await
                .map_err(|e| e.to_string())?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            s.write_all(&b).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let res = async {
            let mut c = TlsConnector::from(client)
                .connect(server_name("127.0.0.1").unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            c.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            assert_eq!(&b, b"ping");
            Ok::<_, String>(())
        }
        .await;
        let srv = srv.await.unwrap();
        res.and(srv)
    }

    #[tokio::test]
    async fn certificates_of_the_test_ca_handshake_and_another_ca_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let a = write_test_ca(a.path(), "ca a").unwrap();
        let b = write_test_ca(b.path(), "ca b").unwrap();
        // Server auth only.
        let server = server_config(&a.node_cert, &a.node_key, None).unwrap();
        handshake(server.clone(), client_config(&a.ca, None).unwrap())
            .await
            .unwrap();
        assert!(handshake(server, client_config(&b.ca, None).unwrap())
            .await
            .is_err());
        // Mutual: a client certificate of the same CA is required.
        let mutual = server_config(&a.node_cert, &a.node_key, Some(&a.ca)).unwrap();
        handshake(
            mutual.clone(),
            client_config(&a.ca, Some((&a.client_cert, &a.client_key))).unwrap(),
        )
        .await
        .unwrap();
        assert!(
            handshake(mutual.clone(), client_config(&a.ca, None).unwrap())
                .await
                .is_err()
        );
        assert!(handshake(
            mutual,
            client_config(&a.ca, Some((&b.client_cert, &b.client_key))).unwrap()
        )
        .await
        .is_err());
        // A key that does not belong to the certificate.
        assert!(server_config(&a.node_cert, &b.node_key, None).is_err());
    }
}
