//! TLS settings of a node, from PEM files: peer mutual TLS, TLS of the client
//! API, and who a client certificate names ([`certificate_principal`]).
//!
//! Three uses, one crypto library (rustls with aws-lc, the provider
//! ractor_cluster already brings; never ring):
//!
//! - **Peer mutual TLS** ([`PeerTls`], `--peer-tls-cert`, `--peer-tls-key`,
//!   `--peer-tls-ca`): every node presents its certificate both as a server
//!   and as a client. The server *requires* a client certificate signed by
//!   the CA; the client verifies the server's certificate against the CA and
//!   the host of the peer address it dials (the address in the membership,
//!   not a dial-map rewrite). The same certificates protect the worker
//!   network (ractor_cluster).
//! - **Client API TLS** ([`api_server_config`], `--tls-cert`, `--tls-key`,
//!   `--tls-client-ca`): the node proves itself to clients; with a client CA
//!   it also *asks* for a client certificate, which is optional (callers may
//!   authenticate otherwise, e.g. with bearer tokens) but, when presented,
//!   must be signed by that CA or the handshake fails.
//! - **Who a client is** ([`certificate_principal`]): the verified client
//!   certificate's first URI SAN, else its subject common name.
//!
//! # Invariants
//!
//! * Every configuration is built with an explicit aws-lc provider and
//!   rustls's safe default protocol versions (TLS 1.2 and 1.3); nothing
//!   depends on a process-wide default provider.
//! * A certificate that reaches [`certificate_principal`] was verified
//!   against the client CA during the handshake: rustls fails the handshake
//!   otherwise, and without a client CA no certificate is asked for.
//! * Errors name the flag and the file.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * Files are read once, at start: rotating a certificate means restarting
//!   the node.
//! * No revocation (CRL/OCSP) checks; remove a node's access by changing the CA.
//! * A node's certificate must name the host of its peer address (IP or DNS
//!   SAN) and allow both server and client use (the same certificate is
//!   used in both directions).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result};

/// The ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn invalid(flag: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("--{flag} {}: {e}", path.display()))
}

/// The certificates of a PEM file (a chain: leaf first).
pub fn load_certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(flag, path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(flag, path, e))?;
    if certs.is_empty() {
        return Err(invalid(
            flag,
            path,
            "no certificate (PEM \"CERTIFICATE\") in the file",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid(flag, path, e))
}

/// The trust anchors of a PEM file of CA certificates.
pub fn load_roots(flag: &str, path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(flag, path)? {
        roots.add(cert).map_err(|e| invalid(flag, path, e))?;
    }
    Ok(Arc::new(roots))
}

/// The files of one TLS identity and its trust anchor, as given by flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: std::path::PathBuf,
    /// Private key (PEM).
    pub key: std::path::PathBuf,
    /// CA certificates (PEM) that sign the other side's certificates.
    pub ca: std::path::PathBuf,
}

/// The rustls settings of peer mutual TLS.
#[derive(Clone)]
pub struct PeerTls {
    /// For the peer listener: a client certificate signed by the CA is required.
    pub server: Arc<ServerConfig>,
    /// For dialing peers: presents this node's certificate, verifies the peer's.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls { .. }")
    }
}

impl PeerTls {
    /// Loads `--peer-tls-cert`, `--peer-tls-key` and `--peer-tls-ca`.
    pub fn load(files: &TlsFiles) -> Result<PeerTls> {
        let certs = load_certificates("peer-tls-cert", &files.cert)?;
        let key = load_private_key("peer-tls-key", &files.key)?;
        let roots = load_roots("peer-tls-ca", &files.ca)?;
        fn bad<'a>(flag: &'a str, path: &'a Path) -> impl Fn(tokio_rustls::rustls::Error) -> Error + 'a {
            move |e| invalid(flag, path, e)
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| invalid("peer-tls-ca", &files.ca, e))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(bad("peer-tls-cert", &files.cert))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(bad("peer-tls-key", &files.key))?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(bad("peer-tls-cert", &files.cert))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(bad("peer-tls-key", &files.key))?;
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The same identity and trust without ALPN, for the worker network
    /// (ractor_cluster frames, not HTTP/2).
    pub fn without_alpn(&self) -> PeerTls {
        let mut server = (*self.server).clone();
        server.alpn_protocols.clear();
        let mut client = (*self.client).clone();
        client.alpn_protocols.clear();
        PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }
}

/// The client API listener's TLS settings (`--tls-cert`, `--tls-key`): with
/// `client_ca` (`--tls-client-ca`) a client certificate is asked for,
/// optional, and verified against it when presented.
pub fn api_server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>> {
    let certs = load_certificates("tls-cert", cert)?;
    let private_key = load_private_key("tls-key", key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls-cert", cert, e))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(load_roots("tls-client-ca", ca)?, provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| invalid("tls-client-ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, private_key)
        .map_err(|e| invalid("tls-key", key, e))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The name a TLS client checks the server's certificate against: the host
/// of `addr` (`host:port`, `[v6]:port`).
pub fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::InvalidArgument(format!("{addr:?}: not a host name or IP address for TLS ({e})")))
}

/// Who the caller of `request` is by its TLS client certificate: the
/// certificate's first URI subject alternative name, else its subject common
/// name. `None` without a verified client certificate (plain TCP, no client
/// CA configured, or the client sent none).
pub fn certificate_principal<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    principal_of_certificate(certs.first()?)
}

/// The principal named by a DER certificate (see [`certificate_principal`]).
pub fn principal_of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let uri = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) if !uri.is_empty() => Some(uri.to_string()),
            _ => None,
        });
        if uri.is_some() {
            return uri;
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().filter(|s| !s.is_empty()).map(str::to_string));
    common_name
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    use tokio::net::{TcpListener, TcpStream};
    use tonic::transport::server::Connected;

    use super::*;

    fn cert_der(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_principal_is_the_uri_san_else_the_common_name() {
        let uri = |u: &str| SanType::URI(u.try_into().unwrap());
        let dns = |d: &str| SanType::DnsName(d.try_into().unwrap());
        let both = cert_der(
            Some("billing-cn"),
            vec![dns("billing.local"), uri("spiffe://example.org/billing")],
        );
        assert_eq!(
            principal_of_certificate(&both).as_deref(),
            Some("spiffe://example.org/billing")
        );
        let cn_only = cert_der(Some("billing-cn"), vec![dns("billing.local")]);
        assert_eq!(principal_of_certificate(&cn_only).as_deref(), Some("billing-cn"));
        assert_eq!(
            principal_of_certificate(&cert_der(None, vec![dns("x.local")])),
            None
        );
        assert_eq!(principal_of_certificate(b"not a certificate"), None);
    }

    #[test]
    fn server_names_come_from_the_host_of_an_address() {
        assert!(matches!(
            server_name("127.0.0.1:7401").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7401").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("node-1.kairos:7401").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad host:1").is_err());
    }

    /// A CA and a leaf it signs, as PEM files in `dir`.
    struct Pki {
        ca: rcgen::Issuer<'static, KeyPair>,
        ca_pem: String,
    }

    impl Pki {
        fn new() -> Pki {
            let mut params = CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, "test CA");
            let key = KeyPair::generate().unwrap();
            let ca_pem = params.self_signed(&key).unwrap().pem();
            Pki {
                ca: rcgen::Issuer::new(params, key),
                ca_pem,
            }
        }

        fn leaf(
            &self,
            dir: &Path,
            name: &str,
            sans: Vec<SanType>,
        ) -> (std::path::PathBuf, std::path::PathBuf) {
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name);
            params.subject_alt_names = sans;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        }
    }

    /// The request path: a real TLS handshake on loopback, its connection
    /// info put where tonic puts it, and the principal read from the request.
    #[tokio::test]
    async fn certificate_principal_reads_the_verified_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &pki.ca_pem).unwrap();
        let (server_cert, server_key) = pki.leaf(
            dir.path(),
            "server",
            vec![SanType::IpAddress([127, 0, 0, 1].into())],
        );
        let (client_cert, client_key) = pki.leaf(
            dir.path(),
            "client-cn",
            vec![SanType::URI("spiffe://kairos/ci".try_into().unwrap())],
        );
        let server_config = api_server_config(&server_cert, &server_key, Some(&ca_path)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(server_config)
                .accept(tcp)
                .await
                .unwrap();
            let mut request = tonic::Request::new(());
            request.extensions_mut().insert(tls.connect_info());
            (certificate_principal(&request), tls)
        });
        let client_config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(load_roots("ca", &ca_path).unwrap())
            .with_client_auth_cert(
                load_certificates("c", &client_cert).unwrap(),
                load_private_key("k", &client_key).unwrap(),
            )
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _client = tokio_rustls::TlsConnector::from(Arc::new(client_config))
            .connect(server_name(&addr.to_string()).unwrap(), tcp)
            .await
            .unwrap();
        let (principal, _tls) = server.await.unwrap();
        assert_eq!(principal.as_deref(), Some("spiffe://kairos/ci"));
        assert_eq!(
            certificate_principal(&tonic::Request::new(())),
            None,
            "plain TCP: no principal"
        );
    }

    #[test]
    fn errors_name_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = load_certificates("peer-tls-cert", &empty)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("--peer-tls-cert {}: no certificate", empty.display())),
            "{err}"
        );
        let err = load_private_key("peer-tls-key", &dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--peer-tls-key "), "{err}");
    }
}
