//! Certificates for tests, made at test time with rcgen (nothing secret is
//! checked in): a CA ([`TestPki::new`]) and leaf certificates it signs
//! ([`TestPki::issue`]), written as PEM files a node or the CLI can be given.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A test certificate authority whose files live in a directory.
pub struct TestPki {
    /// Where the PEM files go.
    dir: PathBuf,
    /// The CA's name, which prefixes every file name.
    name: String,
    /// Signs the leaves.
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's PEM file.
    pub ca_cert: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TestPki {
    /// A new CA named `name`, its certificate written to `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestPki {
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let ca_cert = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_cert, cert.pem()).expect("write the CA certificate");
        TestPki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer: Issuer::new(params, key),
            ca_cert,
        }
    }

    /// A certificate for server and client use, subject CN `common_name`,
    /// naming 127.0.0.1 and localhost, plus `uri` as a URI SAN if given.
    pub fn issue(&self, common_name: &str, uri: Option<&str>) -> IssuedCert {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().expect("an ASCII URI")));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        let stem = format!("{}-{common_name}", self.name);
        let issued = IssuedCert {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write the key");
        issued
    }
}
