//! TLS for tests: a fresh test CA (coordd-tls's rcgen helper, the one `coordd
//! tls-gen-test-ca` uses) in a temporary directory, and the flags and client settings
//! that use it.
#![allow(dead_code)]

use std::net::SocketAddr;

use coordd_tls::test_ca::{write_test_ca, TestCaFiles};

/// A test CA and its certificates, removed on drop.
pub struct TestCa {
    pub files: TestCaFiles,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_test_ca(dir.path(), name).expect("write a test CA");
        TestCa { files, _dir: dir }
    }

    fn path(p: &std::path::Path) -> String {
        p.display().to_string()
    }

    /// coordd flags for a TLS client port on `addr` with the node certificate; with
    /// `require_client_cert`, clients must present a certificate of this CA.
    pub fn client_port_flags(&self, addr: SocketAddr, require_client_cert: bool) -> Vec<String> {
        let f = &self.files;
        let mut v = vec![
            "--secure-client-addr".into(),
            addr.to_string(),
            "--tls-cert-file".into(),
            Self::path(&f.node_cert),
            "--tls-key-file".into(),
            Self::path(&f.node_key),
        ];
        if require_client_cert {
            v.extend(["--tls-ca-file".into(), Self::path(&f.ca)]);
        }
        v
    }

    /// coordd flags for mutual TLS between members with this CA's node certificate.
    pub fn peer_flags(&self) -> Vec<String> {
        let f = &self.files;
        vec![
            "--peer-tls-cert-file".into(),
            Self::path(&f.node_cert),
            "--peer-tls-key-file".into(),
            Self::path(&f.node_key),
            "--peer-tls-ca-file".into(),
            Self::path(&f.ca),
        ]
    }

    /// Our client's TLS settings: this CA, and its client certificate.
    pub fn client_tls(&self) -> coordd_client::TlsConfig {
        coordd_client::TlsConfig::new(&self.files.ca)
            .with_client_cert(&self.files.client_cert, &self.files.client_key)
    }

    /// A rustls client config trusting this CA, presenting `identity`'s client
    /// certificate if given (possibly another CA's).
    pub fn rustls_client(
        &self,
        identity: Option<&TestCa>,
    ) -> std::sync::Arc<coordd_tls::rustls::ClientConfig> {
        let id = identity.map(|i| (i.files.client_cert.as_path(), i.files.client_key.as_path()));
        coordd_tls::client_config(&self.files.ca, id).expect("client config")
    }
}

/// An address on 127.0.0.`host` whose port was free a moment ago.
pub fn free_addr_on(host: u8) -> SocketAddr {
    super::ports::free_addr(std::net::Ipv4Addr::new(127, 0, 0, host))
}
