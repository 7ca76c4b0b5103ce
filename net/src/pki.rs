//! Site PKI: every site has a certificate authority; every agent (and later every controller)
//! holds a certificate its site's CA issued. Sites are paired by exchanging CA certificates.
//!
//! * A CA certificate has subject `CN=ferry site CA, O=<site>`; its key never leaves the
//!   machine where it was made (`ca.key`, mode 0600).
//! * A node certificate has subject `CN=<node>, O=<site>`, the DNS name [`SERVER_NAME`] (all
//!   ferry processes present it, since a client dials an address, not a name), and both the
//!   server and client authentication purposes. ECDSA P-256.
//! * A peer is identified by its certificate after the TLS handshake has verified the chain:
//!   node and site from the subject, and the issuer must be exactly the subject of the CA
//!   configured for that site ([`Trust::identify`]). A CA whose `O` differs from the site it is
//!   configured for is refused when loading, so one site's CA cannot speak for another.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ferry_wire::Name;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: ferry_wire::name::NameError,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{what} {name:?} already exists")]
    AlreadyExists { what: &'static str, name: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

fn check_name(what: &'static str, name: &str) -> Result<Name> {
    Name::new(name).map_err(|reason| PkiError::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    })
}

trait IoContext<T> {
    fn ctx(self, op: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| PkiError::Io {
            op: op.to_owned(),
            path: path.into(),
            source,
        })
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The TLS server name every ferry node certificate carries and every client asks for.
pub const SERVER_NAME: &str = "ferry-agent";
const CA_CN: &str = "ferry site CA";

fn invalid(msg: impl Into<String>) -> PkiError {
    PkiError::Invalid(msg.into())
}

/// Longest validity `pki ca` and `pki issue` give (about 100 years).
pub const MAX_DAYS: u32 = 36_500;
/// How long before its end a certificate in use is warned about (logs, metrics).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

fn check_days(days: u32) -> Result<()> {
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(invalid(format!(
            "--days {days}: a certificate is valid for 1 to {MAX_DAYS} days"
        )));
    }
    Ok(())
}

/// Creates `dir` and its missing parents, each readable by its owner only (whatever the
/// umask).
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .ctx("create directory", dir)
}

/// When `cert` is valid: (not before, not after), in Unix seconds.
pub fn validity_of(cert: &CertificateDer<'_>) -> Result<(i64, i64)> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| invalid(format!("unparseable certificate: {e}")))?;
    let v = x.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// RFC 3339 (UTC) of Unix seconds `t`, for messages.
fn when(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days as i64);
}

/// Writes a new file crash-safely, refusing to replace an existing one.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if path.exists() {
        return Err(PkiError::AlreadyExists {
            what: "file",
            name: path.display().to_string(),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-pki-{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // link(2) fails if `path` appeared meanwhile: never overwrite.
        fs::hard_link(&tmp, path)?;
        fs::remove_file(&tmp)?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.ctx("write", path)
}

/// Paths of a CA in `dir`.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// Creates a site CA in `dir` (`ca.pem`, `ca.key`). Returns the certificate's path.
pub fn create_ca(site: &str, dir: &Path, days: u32) -> Result<PathBuf> {
    let site = check_name("site", site)?;
    check_days(days)?;
    private_dir(dir)?;
    let (cert_path, key_path) = ca_paths(dir);
    let key = KeyPair::generate().map_err(|e| invalid(format!("generate key: {e}")))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| invalid(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, site.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| invalid(format!("sign CA: {e}")))?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

/// Issues a node certificate from the CA in `ca_dir`, writing `<node>.pem` and `<node>.key`
/// into `out_dir`. Returns both paths.
pub fn issue(ca_dir: &Path, node: &str, out_dir: &Path, days: u32) -> Result<(PathBuf, PathBuf)> {
    let node = check_name("node", node)?;
    check_days(days)?;
    let (ca_cert, ca_key) = ca_paths(ca_dir);
    let ca_pem = fs::read_to_string(&ca_cert).ctx("read", &ca_cert)?;
    let ca_key_pem = fs::read_to_string(&ca_key).ctx("read", &ca_key)?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| invalid(format!("{}: not a PEM certificate: {e}", ca_cert.display())))?;
    let site = ca_site(&ca_der)?;
    let (_, ca_end) = validity_of(&ca_der)?;
    let now = now_unix();
    if ca_end <= now {
        return Err(invalid(format!(
            "the site CA {} expired at {}: make a new one (pki ca) and pair the sites again",
            ca_cert.display(),
            when(ca_end)
        )));
    }
    if now + i64::from(days) * 86_400 > ca_end {
        return Err(invalid(format!(
            "--days {days}: the site CA expires at {} ({} days from now), and a certificate \
             it issues cannot outlive it",
            when(ca_end),
            (ca_end - now) / 86_400
        )));
    }
    let signing = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| invalid(format!("{}: not a PEM private key: {e}", ca_key.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, signing).map_err(|e| {
        invalid(format!(
            "{}: unusable CA certificate: {e}",
            ca_cert.display()
        ))
    })?;
    let key = KeyPair::generate().map_err(|e| invalid(format!("generate key: {e}")))?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])
        .map_err(|e| invalid(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node.as_str());
    dn.push(DnType::OrganizationName, site.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| invalid(format!("sign node certificate: {e}")))?;
    private_dir(out_dir)?;
    let cert_path = out_dir.join(format!("{node}.pem"));
    let key_path = out_dir.join(format!("{node}.key"));
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Subject fields of a certificate: (CN, O, raw subject DER, raw issuer DER).
fn subject(cert: &CertificateDer<'_>) -> Result<(String, String, Vec<u8>, Vec<u8>)> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| invalid(format!("unparseable certificate: {e}")))?;
    let field = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let cn = field(&mut x.subject().iter_common_name());
    let o = field(&mut x.subject().iter_organization());
    Ok((
        cn,
        o,
        x.subject().as_raw().to_vec(),
        x.issuer().as_raw().to_vec(),
    ))
}

/// The site a CA certificate belongs to (its `O`).
pub fn ca_site(cert: &CertificateDer<'_>) -> Result<Name> {
    let (cn, o, _, _) = subject(cert)?;
    if cn != CA_CN {
        return Err(invalid(format!("not a ferry site CA (CN is {cn:?})")));
    }
    check_name("site", &o)
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub node: Name,
    pub site: Name,
    /// When the certificate stops being valid (Unix seconds).
    pub not_after: i64,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            node: self.node.clone(),
            site: self.site.clone(),
            not_after: self.not_after,
        }
    }
}

impl Identity {
    /// Loads a node certificate (PEM, possibly with its chain) and its key.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity> {
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| invalid(format!("{}: {e}", cert.display())))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("{}: {e}", cert.display())))?;
        let first = certs
            .first()
            .ok_or_else(|| invalid(format!("{}: no certificate in the file", cert.display())))?;
        let (cn, o, _, _) = subject(first)?;
        let (not_before, not_after) = validity_of(first)?;
        let now = now_unix();
        if now < not_before {
            return Err(invalid(format!(
                "{}: the certificate is not valid before {} (is this machine's clock right?)",
                cert.display(),
                when(not_before)
            )));
        }
        if now >= not_after {
            return Err(invalid(format!(
                "{}: the certificate expired at {}: issue a new one (ferry-agent pki issue) and \
                 restart",
                cert.display(),
                when(not_after)
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| invalid(format!("{}: {e}", key.display())))?;
        Ok(Identity {
            node: check_name("node", &cn)?,
            site: check_name("site", &o)?,
            certs,
            key,
            not_after,
        })
    }

    /// Logs a warning now and every 12 hours while the certificate is within
    /// [`EXPIRY_WARNING_DAYS`] of its end (spawn it beside a daemon).
    pub fn warn_of_expiry(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (not_after, node, site) = (self.not_after, self.node.clone(), self.site.clone());
        async move {
            loop {
                let left = not_after - now_unix();
                if left < EXPIRY_WARNING_DAYS * 86_400 {
                    tracing::warn!(%node, %site, expires = %when(not_after), days_left = left.max(0) / 86_400,
                    "the certificate in use expires soon: issue a new one (ferry-agent pki issue) and restart before then");
                }
                tokio::time::sleep(std::time::Duration::from_secs(12 * 3600)).await;
            }
        }
    }
}

/// The CAs a process trusts, by site.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    cas: Vec<(Name, CertificateDer<'static>, Vec<u8>)>,
}

impl Trust {
    /// Adds a CA certificate file for `site` (the site is read from the certificate; when
    /// `expected` is given the two must agree).
    pub fn add_file(&mut self, path: &Path, expected: Option<&Name>) -> Result<Name> {
        let pem = fs::read_to_string(path)
            .map_err(|e| invalid(format!("{}: not a PEM certificate: {e}", path.display())))?;
        self.add_pem(&pem, expected)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    /// Adds a CA certificate given as PEM (see [`Trust::add_file`]).
    pub fn add_pem(&mut self, pem: &str, expected: Option<&Name>) -> Result<Name> {
        let cert = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| invalid(format!("not a PEM certificate: {e}")))?;
        let site = ca_site(&cert)?;
        if let Some(want) = expected {
            if *want != site {
                return Err(invalid(format!(
                    "it is the CA of site {site:?}, not of {want:?}"
                )));
            }
        }
        if self.cas.iter().any(|(s, _, _)| *s == site) {
            return Err(invalid(format!("site {site:?} is configured twice")));
        }
        let (_, _, subject_der, _) = subject(&cert)?;
        self.cas.push((site.clone(), cert, subject_der));
        Ok(site)
    }

    /// The sites trusted.
    pub fn sites(&self) -> impl Iterator<Item = &Name> {
        self.cas.iter().map(|(s, _, _)| s)
    }

    /// Whether site `site` is trusted.
    pub fn has(&self, site: &Name) -> bool {
        self.cas.iter().any(|(s, _, _)| s == site)
    }

    /// The trusted CA certificates.
    pub fn roots(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.cas.iter().map(|(_, c, _)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }

    /// Who a verified peer certificate belongs to: (node, site). Its issuer must be the CA
    /// configured for the site it names.
    pub fn identify(&self, cert: &CertificateDer<'_>) -> Result<(Name, Name)> {
        let (cn, o, _, issuer) = subject(cert)?;
        let node = check_name("node", &cn)?;
        let site = check_name("site", &o)?;
        match self.cas.iter().find(|(s, _, _)| *s == site) {
            Some((_, _, ca_subject)) if *ca_subject == issuer => Ok((node, site)),
            Some(_) => Err(invalid(format!(
                "certificate of {node}@{site} was not issued by site {site}'s CA"
            ))),
            None => Err(invalid(format!("site {site:?} is not a configured peer"))),
        }
    }
}

/// The trust of a long-running process whose paired sites change while it runs (pairing
/// through the controller): read at every new connection, replaced whole.
#[derive(Debug, Clone, Default)]
pub struct TrustCell(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Trust>>>);

impl TrustCell {
    pub fn new(trust: Trust) -> TrustCell {
        TrustCell(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(trust),
        )))
    }

    /// The trust now.
    pub fn get(&self) -> std::sync::Arc<Trust> {
        match self.0.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces it.
    pub fn set(&self, trust: Trust) {
        let t = std::sync::Arc::new(trust);
        match self.0.write() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issue_identify() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = d.path().join("a");
        let b = d.path().join("b");
        create_ca("site-a", &a, 3650).expect("ca a");
        create_ca("site-b", &b, 3650).expect("ca b");
        assert!(matches!(
            create_ca("site-a", &a, 10),
            Err(PkiError::AlreadyExists { .. })
        ));
        let (c, k) = issue(&a, "node1", &a, 365).expect("issue");
        let id = Identity::load(&c, &k).expect("load");
        assert_eq!((id.node.as_str(), id.site.as_str()), ("node1", "site-a"));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&k).expect("stat").permissions());
        assert_eq!(mode & 0o777, 0o600);

        let mut trust = Trust::default();
        trust.add_file(&ca_paths(&a).0, None).expect("add a");
        assert_eq!(
            trust.identify(&id.certs[0]).expect("identify").1.as_str(),
            "site-a"
        );
        let mut only_b = Trust::default();
        only_b.add_file(&ca_paths(&b).0, None).expect("add b");
        assert!(only_b.identify(&id.certs[0]).is_err());
        let expected = Name::new("site-c").expect("name");
        let e = Trust::default()
            .add_file(&ca_paths(&b).0, Some(&expected))
            .expect_err("mismatch");
        assert!(e.to_string().contains("not of"), "{e}");
        assert!(trust.add_file(&ca_paths(&a).0, None).is_err(), "twice");
        assert!(issue(&a, "../x", &a, 1).is_err());
        assert!(
            Trust::default().add_file(&c, None).is_err(),
            "a node cert is not a CA"
        );
    }
}
