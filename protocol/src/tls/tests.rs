use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::io::{Read, Write};

/// A scratch folder for PEM files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("ballast-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write pem");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `openssl req -x509` makes: self-signed, marked as a CA, for `names`.
fn self_signed_ca(names: &[&str], expired: bool) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

/// A CA, and a leaf it issued for `names`: (ca pem, leaf pem, leaf key pem).
fn issued(ca_name: &str, names: &[&str]) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// A CA for peers' certificates (mutual TLS).
fn peer_ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

/// Which end failed a handshake pumped in memory.
#[derive(Debug)]
enum Failed {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Runs the handshake and one message each way between the two ends, in memory.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), Failed> {
    client.writer().write_all(b"ping").expect("client write");
    let mut got_ping = false;
    let mut got_pong = false;
    for _ in 0..16 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client tls out");
        }
        if !wire.is_empty() {
            server.read_tls(&mut &wire[..]).expect("server tls in");
            server.process_new_packets().map_err(Failed::Server)?;
        }
        let mut text = [0u8; 16];
        if let Ok(n) = server.reader().read(&mut text) {
            if &text[..n] == b"ping" && !got_ping {
                got_ping = true;
                server.writer().write_all(b"pong").expect("server write");
            }
        }
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).expect("server tls out");
        }
        if !wire.is_empty() {
            client.read_tls(&mut &wire[..]).expect("client tls in");
            client.process_new_packets().map_err(Failed::Client)?;
        }
        if let Ok(n) = client.reader().read(&mut text) {
            got_pong |= &text[..n] == b"pong";
        }
        if got_ping && got_pong {
            return Ok(());
        }
    }
    panic!("no exchange after 16 rounds (ping {got_ping}, pong {got_pong})");
}

/// The line a peer prints when it refuses the master's certificate, connecting to `addr`.
fn refusal(server: &ServerTls, client: &ClientTls, addr: &str) -> String {
    let mut c = client.session(addr).expect("session");
    let mut s = server.session().expect("session");
    match pump(&mut c, &mut s) {
        Err(Failed::Client(e)) => describe_client_error(addr, &e),
        other => panic!("expected the peer to refuse the master's certificate: {other:?}"),
    }
}

fn server(dir: &Dir, cert: &str, key: &str, client_ca: Option<&str>) -> ServerTls {
    ServerTls::load(&ServerTlsFiles {
        cert: dir.write("server.pem", cert),
        key: dir.write("server.key", key),
        client_ca: client_ca.map(|ca| dir.write("client-ca.pem", ca)),
    })
    .expect("server config")
}

fn client(dir: &Dir, ca: &str, name: Option<&str>) -> ClientTls {
    ClientTls::load(&ClientTlsFiles {
        ca: dir.write("ca.pem", ca),
        server_name: name.map(str::to_string),
        ..ClientTlsFiles::default()
    })
    .expect("client config")
}

#[test]
fn a_pinned_self_signed_ca_certificate_works_whatever_the_address() {
    // `openssl req -x509` output: a CA-flagged certificate, presented as the server's own.
    let dir = Dir::new("pinned");
    let (cert, key) = self_signed_ca(&["localhost"], false);
    let server = server(&dir, &cert, &key, None);
    let client = client(&dir, &cert, None);
    for addr in ["127.0.0.1:7700", "localhost:7700", "[::1]:7700"] {
        let mut c = client.session(addr).expect("session");
        let mut s = server.session().expect("session");
        pump(&mut c, &mut s).unwrap_or_else(|e| panic!("{addr}: {e:?}"));
    }
}

#[test]
fn an_expired_pinned_certificate_is_refused_as_expired() {
    let dir = Dir::new("expired");
    let (cert, key) = self_signed_ca(&["localhost"], true);
    let server = server(&dir, &cert, &key, None);
    let client = client(&dir, &cert, None);
    let line = refusal(&server, &client, "localhost:1");
    assert!(line.contains("has expired"), "{line}");
}

#[test]
fn a_ca_issued_certificate_is_checked_against_the_name() {
    let dir = Dir::new("issued");
    let (ca, leaf, key) = issued("cluster CA", &["master.example"]);
    let server = server(&dir, &leaf, &key, None);
    let good = client(&dir, &ca, Some("master.example"));
    let mut c = good.session("10.0.0.1:7700").expect("session");
    let mut s = server.session().expect("session");
    pump(&mut c, &mut s).expect("valid for the name given");

    let by_address = client(&dir, &ca, None);
    let line = refusal(&server, &by_address, "10.0.0.1:7700");
    assert!(line.contains("--tls-server-name"), "{line}");
}

#[test]
fn a_certificate_from_another_ca_is_an_unknown_issuer() {
    let dir = Dir::new("other-ca");
    let (_, leaf, key) = issued("cluster CA", &["localhost"]);
    let (other_ca, _, _) = issued("another CA", &["localhost"]);
    let server = server(&dir, &leaf, &key, None);
    let client = client(&dir, &other_ca, None);
    let line = refusal(&server, &client, "localhost:1");
    assert!(
        line.contains("not issued by a certificate in --tls-ca"),
        "{line}"
    );
}

#[test]
fn mutual_tls_refuses_a_peer_without_a_certificate_and_takes_one_with() {
    let dir = Dir::new("mutual");
    let (server_cert, server_key) = self_signed_ca(&["localhost"], false);
    let ca = peer_ca();
    let server = server(&dir, &server_cert, &server_key, Some(&ca.pem()));
    assert!(server.mutual());

    let anonymous = client(&dir, &server_cert, None);
    let mut c = anonymous.session("localhost:1").expect("session");
    let mut s = server.session().expect("session");
    match pump(&mut c, &mut s) {
        Err(Failed::Server(e)) => assert_eq!(e, rustls::Error::NoCertificatesPresented),
        other => panic!("the master must refuse a peer without a certificate: {other:?}"),
    }

    let peer_key = KeyPair::generate().expect("key");
    let peer_cert = CertificateParams::new(vec!["worker-1".to_string()])
        .expect("params")
        .signed_by(&peer_key, &ca)
        .expect("peer cert");
    let with_cert = ClientTls::load(&ClientTlsFiles {
        ca: dir.write("ca.pem", &server_cert),
        server_name: None,
        cert: Some(dir.write("peer.pem", &peer_cert.pem())),
        key: Some(dir.write("peer.key", &peer_key.serialize_pem())),
    })
    .expect("client config");
    let mut c = with_cert.session("localhost:1").expect("session");
    let mut s = server.session().expect("session");
    pump(&mut c, &mut s).expect("a peer with a certificate from the client CA");
}

#[test]
fn files_that_are_missing_or_hold_the_wrong_thing_are_named() {
    let dir = Dir::new("files");
    let missing = ClientTls::load(&ClientTlsFiles {
        ca: dir.0.join("nope.pem"),
        ..ClientTlsFiles::default()
    })
    .expect_err("missing file");
    assert!(
        missing.to_string().starts_with("cannot read --tls-ca"),
        "{missing}"
    );

    let (cert, key) = self_signed_ca(&["localhost"], false);
    let not_a_cert = ClientTls::load(&ClientTlsFiles {
        ca: dir.write("key-as-ca.pem", &key),
        ..ClientTlsFiles::default()
    })
    .expect_err("a key is no certificate");
    assert!(
        not_a_cert.to_string().contains("holds no PEM certificate"),
        "{not_a_cert}"
    );

    let no_key = ServerTls::load(&ServerTlsFiles {
        cert: dir.write("c.pem", &cert),
        key: dir.write("cert-as-key.pem", &cert),
        client_ca: None,
    })
    .expect_err("a certificate is no key");
    assert!(
        no_key.to_string().contains("holds no PEM private key"),
        "{no_key}"
    );

    let half = ClientTls::load(&ClientTlsFiles {
        ca: dir.write("ca.pem", &cert),
        cert: Some(dir.write("peer.pem", &cert)),
        ..ClientTlsFiles::default()
    })
    .expect_err("a certificate without its key");
    assert!(half.to_string().contains("--tls-key is missing"), "{half}");
}

#[test]
fn no_frame_starts_like_tls() {
    // The largest frame's header still starts with 0x01; a TLS client starts with 0x16.
    let header = (crate::codec::MAX_FRAME as u32).to_be_bytes();
    assert!(!starts_tls(header[0]));
    assert!(!starts_tls(0));
    assert!(starts_tls(0x16));
}

#[test]
fn hosts_of_addresses() {
    assert_eq!(host_of("127.0.0.1:7700"), "127.0.0.1");
    assert_eq!(host_of("master.example:7700"), "master.example");
    assert_eq!(host_of("[::1]:7700"), "::1");
    assert_eq!(host_of("::1"), "::1");
    assert_eq!(host_of("localhost"), "localhost");
}

#[test]
fn validity_of_a_generated_certificate() {
    let (cert, _) = self_signed_ca(&["localhost"], true);
    let der = read_certs_from_str(&cert);
    let (before, after) = der::validity(der.as_ref()).expect("validity");
    assert_eq!(before, 1_577_836_800); // 2020-01-01T00:00:00Z
    assert_eq!(after, 1_577_923_200); // 2020-01-02T00:00:00Z
}

fn read_certs_from_str(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
}

#[test]
fn a_plaintext_master_answering_tls_is_named() {
    // What a plaintext master sends first: its `Greeting` frame.
    let dir = Dir::new("plaintext");
    let (cert, _) = self_signed_ca(&["localhost"], false);
    let client = client(&dir, &cert, None);
    let mut c = client.session("localhost:7700").expect("session");
    let mut frame = Vec::new();
    crate::codec::encode_frame(
        &crate::FromMaster::Greeting {
            version: crate::PROTOCOL_VERSION,
            nonce: vec![7; 32],
        },
        &mut frame,
    )
    .expect("frame");
    c.read_tls(&mut &frame[..]).expect("read");
    let e = c.process_new_packets().expect_err("not TLS");
    let line = describe_client_error("localhost:7700", &e);
    assert!(line.contains("does not speak TLS"), "{line}");
}

#[test]
fn a_self_signed_certificate_not_in_the_ca_file_is_an_unknown_issuer() {
    // Two `openssl req -x509` certificates: the master presents one, the peer trusts the other.
    let dir = Dir::new("other-self-signed");
    let (cert, key) = self_signed_ca(&["localhost"], false);
    let (other, _) = self_signed_ca(&["localhost"], false);
    let server = server(&dir, &cert, &key, None);
    let client = client(&dir, &other, None);
    let line = refusal(&server, &client, "localhost:1");
    assert!(
        line.contains("not issued by a certificate in --tls-ca"),
        "{line}"
    );
}

#[test]
fn a_key_that_is_not_the_certificates_and_a_broken_certificate_are_named() {
    let dir = Dir::new("mismatch");
    let (cert, _) = self_signed_ca(&["localhost"], false);
    let (_, other_key) = self_signed_ca(&["localhost"], false);
    let mismatch = ServerTls::load(&ServerTlsFiles {
        cert: dir.write("c.pem", &cert),
        key: dir.write("other.key", &other_key),
        client_ca: None,
    })
    .expect_err("a key of another certificate");
    let line = mismatch.to_string();
    assert!(
        line.contains("other.key is not the private key of the certificate in --tls-cert"),
        "{line}"
    );

    let peer = ClientTls::load(&ClientTlsFiles {
        ca: dir.write("ca.pem", &cert),
        cert: Some(dir.write("peer.pem", &cert)),
        key: Some(dir.write("peer.key", &other_key)),
        ..ClientTlsFiles::default()
    })
    .expect_err("our own certificate with another key");
    let line = peer.to_string();
    assert!(
        line.contains("peer.key is not the private key of the certificate in --tls-cert"),
        "{line}"
    );

    // Valid PEM around bytes that are no certificate: named as such, not as a peer's problem.
    let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let (_, key) = self_signed_ca(&["localhost"], false);
    let bad = ServerTls::load(&ServerTlsFiles {
        cert: dir.write("broken.pem", broken),
        key: dir.write("k.pem", &key),
        client_ca: None,
    })
    .expect_err("no certificate in the PEM");
    let line = bad.to_string();
    assert!(
        line.contains("broken.pem does not hold a valid X.509 certificate"),
        "{line}"
    );
    assert!(!line.contains("peer"), "{line}");
}

#[test]
fn the_master_hears_of_its_own_certificate_s_dates() {
    let dir = Dir::new("own-dates");
    let (cert, key) = self_signed_ca(&["localhost"], true);
    let expired = server(&dir, &cert, &key, None);
    // 2020-01-01 to 2020-01-02.
    let line = expired.certificate_warning(1_577_923_200 + 3 * 86_400);
    assert_eq!(
        line.as_deref(),
        Some("the certificate expired 3d00h ago: every peer will refuse it")
    );
    let early = expired
        .certificate_warning(1_577_836_800 - 7_200)
        .expect("not yet valid");
    assert!(early.contains("not valid for another 2h00m"), "{early}");
    let soon = expired
        .certificate_warning(1_577_923_200 - 600)
        .expect("runs out soon");
    assert!(soon.contains("expires in 10m00s"), "{soon}");
    let (fresh_cert, fresh_key) = self_signed_ca(&["localhost"], false);
    let fresh = server(&dir, &fresh_cert, &fresh_key, None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert_eq!(
        fresh.certificate_warning(now),
        None,
        "rcgen's default runs to 4096"
    );
}
