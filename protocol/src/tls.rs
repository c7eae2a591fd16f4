//! TLS on every connection (issue 12), with rustls: the configurations of both ends from PEM
//! files, the check of the master's certificate, the test that tells a TLS peer from a plaintext
//! one by its first byte, and rustls' errors put in words for a person.
//!
//! TLS 1.3 only. The token handshake runs inside TLS, unchanged: TLS hides the traffic and proves
//! the master's certificate; the token still proves both ends belong to one cluster.
//!
//! A certificate in the `--tls-ca` file that the master presents itself is trusted as is
//! (pinned), after its validity period is checked: `openssl req -x509` makes a self-signed
//! certificate marked as a CA, which a web PKI check refuses as a server's own certificate, and
//! a pinned certificate names exactly one key, so its host names add nothing.

use crate::cause::Cause;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub use rustls::{ClientConnection, ServerConnection};

/// Most bytes read from one PEM file: certificates and keys are a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The first byte of every TLS record a client opens with (a handshake record). No frame of
/// ours starts with it: a frame starts with its length, big-endian, and lengths stop at
/// `MAX_FRAME` (16 MiB), so its first byte is 0 or 1.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Whether a connection whose first byte is `first` speaks TLS.
pub fn starts_tls(first: u8) -> bool {
    first == TLS_HANDSHAKE_BYTE
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {}", path.display(), Cause(cause))]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("{what} {} holds no PEM certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { what: &'static str, path: PathBuf },
    #[error("{what} {} is not valid PEM: {detail}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{what} {} is larger than {} bytes", path.display(), MAX_PEM_BYTES)]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what}: {detail}")]
    Config { what: &'static str, detail: String },
    #[error("no server name for TLS in {addr:?}: pass --tls-server-name")]
    ServerName { addr: String },
    #[error("--tls-cert and --tls-key go together: {0} is missing")]
    Pair(&'static str),
    #[error(
        "--tls-key {} is not the private key of the certificate in --tls-cert {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("--tls-cert {} does not hold a valid X.509 certificate", path.display())]
    BadCertificate { path: PathBuf },
}

/// Where a peer (worker or client command) finds its TLS settings.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles {
    /// Certificates trusted for the master: CAs, or the master's own (pinned).
    pub ca: PathBuf,
    /// The name to check the master's certificate against; default: the host of `--master`.
    pub server_name: Option<String>,
    /// Our certificate and key, for a master that asks for them (`--tls-client-ca`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A peer's TLS settings, loaded once, shared by every connection it opens.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn load(files: &ClientTlsFiles) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let trusted = read_certs("--tls-ca", &files.ca)?;
        let verifier = MasterVerifier::new(trusted, provider.clone())?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error("TLS versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs("--tls-cert", cert)?, read_key("--tls-key", key)?)
                .map_err(|e| pair_error("our certificate and key", cert, key, e))?,
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(TlsError::Pair("--tls-key")),
            (None, Some(_)) => return Err(TlsError::Pair("--tls-cert")),
        };
        let server_name = match &files.server_name {
            Some(name) => Some(parse_server_name(name)?),
            None => None,
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// A new TLS session for the master at `addr` (`host:port`).
    pub fn session(&self, addr: &str) -> Result<ClientConnection, TlsError> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => parse_server_name(host_of(addr))?,
        };
        ClientConnection::new(self.config.clone(), name).map_err(|e| config_error("TLS session", e))
    }
}

/// Where the master finds its TLS settings.
#[derive(Debug, Clone, Default)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, every peer must present a certificate signed by one of these (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The master's TLS settings, loaded once at start.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    mutual: bool,
    /// The served certificate's validity (Unix seconds, not before and not after), if it reads.
    validity: Option<(u64, u64)>,
}

/// A certificate that runs out within this long gets a warning at start.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn load(files: &ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error("TLS versions", e))?;
        let builder = match &files.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("--tls-client-ca", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| config_error("--tls-client-ca", e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| config_error("--tls-client-ca", e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let certs = read_certs("--tls-cert", &files.cert)?;
        let validity = certs.first().and_then(|c| der::validity(c.as_ref()));
        let mut config = builder
            .with_single_cert(certs, read_key("--tls-key", &files.key)?)
            .map_err(|e| pair_error("--tls-cert and --tls-key", &files.cert, &files.key, e))?;
        // Peers reconnect with a full handshake: nothing to gain from tickets for a handful of
        // long-lived connections, and a client command is one connection.
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            mutual: files.client_ca.is_some(),
            validity,
        })
    }

    /// What is wrong with the served certificate's dates at `now_secs` (Unix seconds), in words,
    /// if anything: expired, not valid yet, or running out within [`EXPIRY_WARNING`]. rustls
    /// serves any of them; the peers are the ones that refuse, each with its own line.
    pub fn certificate_warning(&self, now_secs: u64) -> Option<String> {
        let (not_before, not_after) = self.validity?;
        let span = |secs: u64| crate::duration::human_ms(secs.saturating_mul(1_000));
        if now_secs > not_after {
            Some(format!(
                "the certificate expired {} ago: every peer will refuse it",
                span(now_secs - not_after)
            ))
        } else if now_secs < not_before {
            Some(format!(
                "the certificate is not valid for another {}: every peer will refuse it until \
                 then (is this host's clock right?)",
                span(not_before - now_secs)
            ))
        } else if not_after - now_secs < EXPIRY_WARNING.as_secs() {
            Some(format!(
                "the certificate expires in {}: peers will refuse it then",
                span(not_after - now_secs)
            ))
        } else {
            None
        }
    }

    /// A new TLS session for an accepted connection.
    pub fn session(&self) -> Result<ServerConnection, TlsError> {
        ServerConnection::new(self.config.clone()).map_err(|e| config_error("TLS session", e))
    }

    /// Whether peers must present a certificate.
    pub fn mutual(&self) -> bool {
        self.mutual
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(what: &'static str, e: impl fmt::Display) -> TlsError {
    TlsError::Config {
        what,
        detail: e.to_string(),
    }
}

/// Why rustls refused a certificate and key as a pair, in words about the files: its own
/// text ("keys may not be consistent: KeyMismatch", "invalid peer certificate") names neither
/// file and blames a peer for our own certificate.
fn pair_error(what: &'static str, cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::BadEncoding) => {
            TlsError::BadCertificate {
                path: cert.to_path_buf(),
            }
        }
        e => config_error(what, e),
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read = |cause| TlsError::Read {
        what,
        path: path.to_path_buf(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`.
pub fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(what, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            what,
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            what,
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })
}

/// The host of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName {
        addr: name.to_string(),
    })
}

/// The check of the master's certificate: pinned (byte for byte one of the trusted), or issued
/// by a trusted CA for the server name (rustls' web PKI check).
#[derive(Debug)]
struct MasterVerifier {
    pinned: Vec<CertificateDer<'static>>,
    /// `None` when no trusted certificate can act as a CA (only pinning then).
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl MasterVerifier {
    fn new(
        trusted: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<MasterVerifier, TlsError> {
        let mut roots = RootCertStore::empty();
        let (_, _) = roots.add_parsable_certificates(trusted.iter().cloned());
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| config_error("--tls-ca", e))?,
            )
        };
        Ok(MasterVerifier {
            pinned: trusted,
            webpki,
            provider,
        })
    }
}

impl ServerCertVerifier for MasterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            check_validity(end_entity, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| match e {
                    // A self-signed certificate that is not in --tls-ca: what is wrong is who
                    // issued it, not its CA flag (which only pinning forgives).
                    rustls::Error::InvalidCertificate(CertificateError::Other(ref other))
                        if matches!(
                            other.0.downcast_ref::<webpki::Error>(),
                            Some(webpki::Error::CaUsedAsEndEntity)
                        ) =>
                    {
                        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                    }
                    e => e,
                }),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only (the config allows no other version).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A pinned certificate must still be within its validity period.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (not_before, not_after) = der::validity(cert.as_ref()).ok_or_else(bad)?;
    let now = now.as_secs();
    if now < not_before {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > not_after {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// The one line for a TLS failure with the master at `addr`, as the peer sees it.
pub fn describe_client_error(addr: &str, e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    match e {
        E::InvalidCertificate(c) => format!(
            "the master at {addr} presented a certificate we do not trust: {}",
            certificate_problem(c)
        ),
        // Our first read met a plaintext frame (the master's `Greeting`), not a TLS record.
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => format!(
            "the master at {addr} does not speak TLS: drop --tls-ca (or BALLAST_TLS_CA), or \
             start the master with --tls-cert and --tls-key"
        ),
        E::AlertReceived(A::CertificateRequired) => format!(
            "the master at {addr} requires a client certificate: pass --tls-cert and --tls-key"
        ),
        E::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown) => format!(
            "the master at {addr} refused our certificate ({e}): check --tls-cert against its \
             --tls-client-ca"
        ),
        E::AlertReceived(A::CertificateExpired) => {
            format!("the master at {addr} refused our certificate: it has expired")
        }
        other => format!("TLS with the master at {addr} failed: {other}"),
    }
}

/// What is wrong with a certificate, in words.
pub fn certificate_problem(c: &CertificateError) -> String {
    use CertificateError as C;
    match c {
        C::Expired | C::ExpiredContext { .. } => "it has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".into(),
        C::UnknownIssuer => {
            "it is not issued by a certificate in --tls-ca (nor is it one of them)".into()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not valid for the name we connected to (pass --tls-server-name)".into()
        }
        C::BadSignature => "its signature is wrong".into(),
        C::BadEncoding => "it is not a well-formed certificate".into(),
        C::Revoked => "it was revoked".into(),
        other => format!("{other:?}"),
    }
}

/// For tests here and in the other crates: a self-signed certificate for `localhost` written
/// into `dir` (as `c.pem` and `k.pem`), the master's settings with it, and a peer's that trust it.
#[cfg(any(test, feature = "test-support"))]
pub fn test_pair(dir: &Path) -> (ServerTls, ClientTls) {
    std::fs::create_dir_all(dir).expect("certificate dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_path, key_path) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let server = ServerTls::load(&ServerTlsFiles {
        cert: cert_path.clone(),
        key: key_path,
        client_ca: None,
    })
    .expect("server TLS");
    let client = ClientTls::load(&ClientTlsFiles {
        ca: cert_path,
        ..ClientTlsFiles::default()
    })
    .expect("client TLS");
    (server, client)
}

/// Enough DER to read a certificate's validity period; nothing else is parsed here.
mod der {
    /// One element: (tag, contents, the rest after it).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        Some((tag, contents, after))
    }

    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;

    /// (notBefore, notAfter) as seconds since the Unix epoch.
    pub fn validity(cert: &[u8]) -> Option<(u64, u64)> {
        let (SEQUENCE, cert, _) = element(cert)? else {
            return None;
        };
        let (SEQUENCE, tbs, _) = element(cert)? else {
            return None;
        };
        let mut rest = tbs;
        let (tag, _, after) = element(rest)?;
        if tag == VERSION {
            rest = after;
        }
        // serialNumber, signature, issuer, then validity.
        for _ in 0..3 {
            rest = element(rest)?.2;
        }
        let (SEQUENCE, validity, _) = element(rest)? else {
            return None;
        };
        let (t1, before, rest) = element(validity)?;
        let (t2, after, _) = element(rest)?;
        Some((time(t1, before)?, time(t2, after)?))
    }

    /// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`.
    fn time(tag: u8, text: &[u8]) -> Option<u64> {
        let digits = |s: &[u8]| -> Option<u64> {
            s.iter().try_fold(0u64, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
            })
        };
        let (year, rest) = match tag {
            UTC_TIME if text.len() == 13 => {
                let yy = digits(&text[..2])?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
            }
            GENERALIZED_TIME if text.len() == 15 => (digits(&text[..4])?, &text[4..]),
            _ => return None,
        };
        if rest.last() != Some(&b'Z') {
            return None;
        }
        let field = |i: usize| digits(&rest[i..i + 2]);
        let (month, day) = (field(0)?, field(2)?);
        let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
            return None;
        }
        let days = days_from_civil(year, month, day)?;
        Some(days * 86_400 + hour * 3_600 + minute * 60 + second.min(60))
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
        let y = if month <= 2 {
            year.checked_sub(1)?
        } else {
            year
        };
        let era = y / 400;
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        (era * 146_097 + doe).checked_sub(719_468)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn civil_days() {
            assert_eq!(days_from_civil(1970, 1, 1), Some(0));
            assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
            assert_eq!(time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
            assert_eq!(
                time(GENERALIZED_TIME, b"20500101000000Z"),
                Some(2_524_608_000)
            );
            assert_eq!(time(UTC_TIME, b"7001010000Z"), None);
        }

        #[test]
        fn truncated_or_garbage_input_is_none() {
            assert_eq!(validity(&[]), None);
            assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
            assert_eq!(validity(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
        }
    }
}

#[cfg(test)]
mod tests;
