//! Certificates made on the spot (rcgen): a throw-away CA issuing member and client
//! certificates (`concord dev --tls`, tests), and the self-signed certificate of
//! `--auto-tls`. Keys are ECDSA P-256, written with mode 0600.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::{Identity, TlsError};

fn gen(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn params(common_name: &str, hosts: &[String]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    Ok(params)
}

/// A certificate authority whose key is held in memory to issue certificates.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
    /// The CA's certificate (what `--trusted-ca-file` and `--cacert` name).
    pub cert_file: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA named `name`, its certificate written to `dir/<file_stem>.pem`.
    pub fn create(dir: &Path, name: &str, file_stem: &str) -> Result<Ca, TlsError> {
        let mut params = params(name, &[])?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(gen)?;
        let cert = params.self_signed(&key).map_err(gen)?;
        let cert_file = dir.join(format!("{file_stem}.pem"));
        write(&cert_file, &cert.pem(), false)?;
        Ok(Ca {
            cert,
            key,
            cert_file,
        })
    }

    /// A certificate for `common_name`, valid for `hosts` (DNS names or IP addresses) and
    /// usable both as a server and as a client certificate, written to
    /// `dir/<common_name>.pem` and `dir/<common_name>-key.pem`.
    pub fn issue(
        &self,
        dir: &Path,
        common_name: &str,
        hosts: &[String],
    ) -> Result<Identity, TlsError> {
        let mut params = params(common_name, hosts)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(gen)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(gen)?;
        let identity = Identity {
            cert_file: dir.join(format!("{common_name}.pem")),
            key_file: dir.join(format!("{common_name}-key.pem")),
        };
        write(&identity.key_file, &key.serialize_pem(), true)?;
        write(&identity.cert_file, &cert.pem(), false)?;
        Ok(identity)
    }
}

/// `--auto-tls`: a self-signed certificate for `hosts` in `dir` (`cert.pem`,
/// `key.pem`), made once and reused at later starts, as etcd does. No CA signed it:
/// clients either skip verification (it then encrypts without authenticating) or pin it
/// (trust the certificate file itself as their CA).
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<Identity, TlsError> {
    let identity = Identity {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    if identity.cert_file.exists() && identity.key_file.exists() {
        return Ok(identity);
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut params = params("concord auto-tls", hosts)?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&key).map_err(gen)?;
    write(&identity.key_file, &key.serialize_pem(), true)?;
    write(&identity.cert_file, &cert.pem(), false)?;
    Ok(identity)
}

/// The host names a certificate for a URL's host needs: the host itself, and
/// `localhost`/`127.0.0.1` for a loopback or wildcard address.
pub fn hosts_for(url_hosts: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    let mut add = |h: &str| {
        if !hosts.iter().any(|x| x == h) {
            hosts.push(h.to_string());
        }
    };
    for h in url_hosts {
        let h = h.trim_start_matches('[').trim_end_matches(']').to_string();
        match h.as_str() {
            "0.0.0.0" | "::" | "" => {}
            other => add(other),
        }
    }
    add("localhost");
    add("127.0.0.1");
    add("::1");
    hosts
}
