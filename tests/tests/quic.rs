//! The agent's QUIC endpoint: mutual TLS between paired sites, the handshake, and peers that
//! misbehave. Real processes, real certificates (made with `ferry-agent pki`), loopback UDP.

use std::time::Duration;

use ferry_agent::config::AgentConfig;
use ferry_agent::daemon::server::load_tls;
use ferry_agent::net;
use ferry_agent::replication::send::Peers;
use ferry_tests::{bin, Pki, Served};
use ferry_wire::msg::{close, Hello};
use serde_json::Value;

fn ping(config: &std::path::Path, addr: std::net::SocketAddr) -> std::process::Output {
    std::process::Command::new(bin("ferry-agent"))
        .arg("--config")
        .arg(config)
        .args(["--json", "ping", &addr.to_string(), "--count", "2"])
        .output()
        .expect("run ping")
}

struct Sites {
    pki: Pki,
    data: tempfile::TempDir,
    served: Served,
    a: std::path::PathBuf,
}

/// Site b serves and trusts site a; site a's node n1 trusts b.
fn sites() -> Sites {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tempdir");
    let b = pki.agent_config("site-b", "m1", &["site-a"], &data.path().join("b"));
    let a = pki.agent_config("site-a", "n1", &["site-b"], &data.path().join("a"));
    let served = Served::start(&b);
    Sites {
        pki,
        data,
        served,
        a,
    }
}

#[test]
fn paired_sites_connect_with_mutual_tls() {
    let s = sites();
    let out = ping(&s.a, s.served.addr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["peer_node"], "m1");
    assert_eq!(v["peer_site"], "site-b");
    assert_eq!(v["version"], ferry_wire::msg::PROTOCOL_VERSION);
    assert_eq!(v["rtt_ms"].as_array().map(Vec::len), Some(2));
}

#[test]
fn unknown_ca_is_refused_both_ways() {
    let s = sites();
    // A node of site c, which b does not trust.
    let c = s
        .pki
        .agent_config("site-c", "x1", &["site-b"], &s.data.path().join("c"));
    let out = ping(&c, s.served.addr);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["error"]["kind"], "peer_refused", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("certificate"),
        "{v}"
    );
    // A node of site a that does not trust b's CA refuses b.
    let wary = s
        .pki
        .agent_config("site-a", "n2", &["site-c"], &s.data.path().join("a2"));
    let out = ping(&wary, s.served.addr);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["error"]["kind"], "peer_refused", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("UnknownIssuer"),
        "{v}"
    );
    // The server is unaffected.
    assert!(ping(&s.a, s.served.addr).status.success());
}

/// Connects as site a's n1 at the TLS level and returns the raw connection.
async fn raw_connection(s: &Sites) -> (quinn::Endpoint, quinn::Connection) {
    let cfg = AgentConfig::load(&s.a).expect("config");
    let (id, trust) = load_tls(&cfg).expect("tls");
    let ep = net::client_endpoint(
        s.served.addr,
        net::client_config(&id, &trust).expect("client config"),
    )
    .expect("endpoint");
    let conn = ep
        .connect(s.served.addr, ferry_agent::pki::SERVER_NAME)
        .expect("connect")
        .await
        .expect("tls handshake");
    (ep, conn)
}

/// `net.initial_window` is the congestion window a replication connection starts with: what
/// it may send in its first round trip on a long link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_starts_with_the_configured_congestion_window() {
    let s = sites();
    let cfg = AgentConfig::load(&s.a).expect("config");
    for initial in [net::DEFAULT_INITIAL_WINDOW, 8 << 20] {
        let (id, trust) = load_tls(&cfg).expect("tls");
        let windows = net::Windows {
            initial,
            ..net::Windows::default()
        };
        let peers = Peers::with(id, trust, windows).expect("peers");
        let (conn, _, _) = peers.connection(s.served.addr).await.expect("connect");
        let cwnd = conn.stats().path.cwnd;
        assert!(
            (initial..initial + (1 << 20)).contains(&cwnd),
            "asked {initial}, started at {cwnd}"
        );
        peers.close().await;
    }
}

/// A replication connection to a peer starts with the window the last large transfer to it
/// measured (its rate times the unloaded round trip, kept in the data directory), where
/// QUIC's own start window would take a dozen round trips to get there on a long link. A
/// small transfer leaves the measurement as it is; an unreadable file is a fresh start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_starts_at_the_window_the_last_large_transfer_to_its_peer_measured() {
    let s = sites();
    let cfg = AgentConfig::load(&s.a).expect("config");
    let relay = ferry_tests::LossyRelay::start(s.served.addr, 0.0, Duration::from_millis(50), 3);
    let to = relay.addr.to_string();
    let mut rng = ferry_tests::rng("learned window");
    let send = |vol: &str, size: usize, rng: &mut rand::rngs::StdRng| {
        let size_arg = size.to_string();
        ferry_tests::agent_json(&s.a, &["volume", "create", vol, "--size", &size_arg]);
        let path = ferry_tests::agent_volume_path(&s.a, vol);
        ferry_tests::write_random(&path, 0, size, rng);
        ferry_tests::agent_json(&s.a, &["snapshot", "create", vol, "s1"]);
        let r = ferry_tests::agent_json(&s.a, &["replicate", vol, "s1", "--to", &to]);
        assert_eq!(r["root"].as_str().map(str::len), Some(64), "{r}");
        r
    };
    let file = ferry_agent::store::paths_file(&cfg.data_dir);
    let known = || -> Value {
        let v: Value =
            serde_json::from_slice(&std::fs::read(&file).expect("paths.json")).expect("json");
        v["peers"][&to].clone()
    };

    // 1. Nothing known: QUIC's window. The transfer (48 MiB through 100 ms) is measured.
    let r = send("big", 48 << 20, &mut rng);
    assert_eq!(
        r["path"]["start_window"],
        net::DEFAULT_INITIAL_WINDOW,
        "{r}"
    );
    let m = known();
    let (rate, rtt_us) = (
        m["rate"].as_u64().expect("rate"),
        m["rtt_us"].as_u64().expect("rtt"),
    );
    assert!(
        (90_000..1_000_000).contains(&rtt_us),
        "unloaded round trip {rtt_us} µs"
    );
    let bdp = (rate as u128 * rtt_us as u128 / 1_000_000) as u64;
    let want = bdp.clamp(net::DEFAULT_INITIAL_WINDOW, cfg.net.learned_window_max);
    assert!(
        want > net::DEFAULT_INITIAL_WINDOW,
        "{rate} B/s at {rtt_us} µs"
    );

    // 2. The next connection to that peer starts there: quinn's congestion window says so.
    let peers = Peers::new(&cfg).expect("peers");
    let (conn, _, _) = peers.connection(relay.addr).await.expect("connect");
    let cwnd = conn.stats().path.cwnd;
    assert!(
        (want..want + (1 << 20)).contains(&cwnd),
        "want {want}, started at {cwnd}"
    );
    peers.close().await;

    // 3. A small transfer starts there too, and teaches nothing.
    let r = send("small", 4 << 20, &mut rng);
    assert_eq!(r["path"]["start_window"], want, "{r}");
    assert_eq!(known(), m);

    // 4. Unreadable measurements: QUIC's window again, and the next large transfer writes
    //    them afresh.
    std::fs::write(&file, b"{ not json").expect("write");
    let r = send("big2", 40 << 20, &mut rng);
    assert_eq!(
        r["path"]["start_window"],
        net::DEFAULT_INITIAL_WINDOW,
        "{r}"
    );
    assert!(known()["rate"].as_u64().is_some_and(|r| r > 0));
}

async fn closed_code(conn: &quinn::Connection) -> (u32, String) {
    match tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("server closes the connection")
    {
        quinn::ConnectionError::ApplicationClosed(c) => (
            u32::try_from(u64::from(c.error_code)).expect("small code"),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("unexpected close: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_peers_are_disconnected() {
    let s = sites();
    // 1. A frame claiming 4 GiB instead of a Hello.
    let (_ep, conn) = raw_connection(&s).await;
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    let (code, reason) = closed_code(&conn).await;
    assert_eq!(code, close::PROTOCOL);
    assert!(reason.contains("exceeds the limit"), "{reason}");

    // 2. A well-framed but malformed message.
    let (_ep, conn) = raw_connection(&s).await;
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    net::write_frame(&mut send, &[0xff; 64])
        .await
        .expect("write");
    let (code, reason) = closed_code(&conn).await;
    assert_eq!(code, close::PROTOCOL);
    assert!(reason.contains("malformed"), "{reason}");

    // 3. A Hello that contradicts the certificate (n1@site-a claiming to be n9).
    let (_ep, conn) = raw_connection(&s).await;
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    let lie = Hello::new("n9".parse().expect("name"), "site-a".parse().expect("name"));
    net::send_msg(&mut send, &lie).await.expect("write");
    let (code, reason) = closed_code(&conn).await;
    assert_eq!(code, close::IDENTITY);
    assert!(reason.contains("certificate is n1@site-a"), "{reason}");

    // 4. A peer that connects and says nothing is dropped at the handshake timeout; meanwhile
    //    and afterwards, well-behaved peers are served.
    let (_ep, silent) = raw_connection(&s).await;
    let a = s.a.clone();
    let addr = s.served.addr;
    let ok = tokio::task::spawn_blocking(move || ping(&a, addr).status.success())
        .await
        .expect("join");
    assert!(ok, "the server must keep serving others");
    let (code, _) = closed_code(&silent).await;
    assert_eq!(code, close::PROTOCOL);
}

#[test]
fn serve_and_pki_errors_are_clear() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = data.path().join("bare.toml");
    std::fs::write(
        &cfg,
        format!("data_dir = {:?}\n", data.path().display().to_string()),
    )
    .expect("write");
    let out = std::process::Command::new(bin("ferry-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("net.cert and net.key"));
    let ca_dir = pki.dir.path().join("s");
    pki.ca("s");
    let out = std::process::Command::new(bin("ferry-agent"))
        .args([
            "--json",
            "pki",
            "ca",
            "s",
            "--dir",
            ca_dir.to_str().expect("utf8"),
        ])
        .output()
        .expect("run");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["error"]["kind"], "already_exists", "{v}");
    let out = std::process::Command::new(bin("ferry-agent"))
        .args([
            "--json",
            "pki",
            "issue",
            "../evil",
            "--ca-dir",
            ca_dir.to_str().expect("utf8"),
            "--out",
            "/tmp",
        ])
        .output()
        .expect("run");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["error"]["kind"], "invalid_name", "{v}");
}

/// A raw QUIC server endpoint with the certificate of node m1 at site-b, and the identity
/// of node n1 at site-a to reach it with: for tests that play one end by hand.
struct RawEnds {
    _data: tempfile::TempDir,
    server: quinn::Endpoint,
    addr: std::net::SocketAddr,
    a_id: ferry_agent::pki::Identity,
    a_trust: ferry_agent::pki::Trust,
}

impl RawEnds {
    fn new() -> RawEnds {
        let pki = Pki::new();
        let data = tempfile::tempdir().expect("tempdir");
        let b = pki.agent_config("site-b", "m1", &["site-a"], &data.path().join("b"));
        let a = pki.agent_config("site-a", "n1", &["site-b"], &data.path().join("a"));
        let (b_id, b_trust) = load_tls(&AgentConfig::load(&b).expect("config")).expect("tls");
        let (a_id, a_trust) = load_tls(&AgentConfig::load(&a).expect("config")).expect("tls");
        let sc = net::server_config(&b_id, &b_trust).expect("server config");
        let server = net::endpoint("127.0.0.1:0".parse().expect("addr"), Some(sc)).expect("server");
        let addr = server.local_addr().expect("addr");
        RawEnds {
            _data: data,
            server,
            addr,
            a_id,
            a_trust,
        }
    }
}

/// A replication connection sends its Hello and its first request without waiting for the
/// peer's Hello (a round trip saved on every new connection to a peer); the peer's Hello is
/// checked when it comes, and one that contradicts the certificate or speaks another version
/// closes the connection with the reason. Against a raw endpoint with site b's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_connection_checks_the_peers_hello_when_it_comes() {
    let ends = RawEnds::new();
    let (server, addr, a_id, a_trust) = (&ends.server, ends.addr, &ends.a_id, &ends.a_trust);
    let v = ferry_wire::msg::PROTOCOL_VERSION;
    let honest = Hello::new("m1".parse().expect("name"), "site-b".parse().expect("name"));
    let cases = [
        ("honest", honest.clone(), None),
        (
            "another node",
            Hello::new("m9".parse().expect("name"), "site-b".parse().expect("name")),
            Some(close::IDENTITY),
        ),
        (
            "a newer version only",
            Hello {
                min_version: v + 1,
                max_version: v + 1,
                ..honest
            },
            Some(close::VERSION),
        ),
    ];
    for (what, answer, closes) in cases {
        let ep = net::client_endpoint(addr, net::client_config(a_id, a_trust).expect("cc"))
            .expect("endpoint");
        let accepting = server.clone();
        let accepted = tokio::spawn(async move {
            let incoming = accepting.accept().await.expect("incoming");
            incoming.await.expect("tls")
        });
        let early = net::connect_early(&ep, addr, a_id, a_trust)
            .await
            .expect(what);
        assert_eq!(
            (early.peer_node.as_str(), early.peer_site.as_str()),
            ("m1", "site-b"),
            "{what}: named by the certificate"
        );
        let conn = accepted.await.expect("join");
        // The client's first request is under way before any answer to its Hello.
        let (mut req, _req_recv) = early.conn.open_bi().await.expect("request stream");
        net::send_msg(
            &mut req,
            &Hello::new("n1".parse().expect("n"), "site-a".parse().expect("s")),
        )
        .await
        .expect("request");
        let (mut send, mut recv) = conn.accept_bi().await.expect("handshake stream");
        let theirs: Hello = net::recv_msg(&mut recv, 4096).await.expect("hello");
        assert_eq!((theirs.min_version, theirs.max_version), (v, v), "{what}");
        net::send_msg(&mut send, &answer).await.expect("answer");
        let checked = early.hello.await.expect("join");
        match closes {
            None => {
                assert!(checked.is_ok(), "{what}: {:?}", checked.err());
                let (_s, mut r) = conn.accept_bi().await.expect("the request's stream");
                let _: Hello = net::recv_msg(&mut r, 4096).await.expect("the request");
            }
            Some(code) => {
                assert!(checked.is_err(), "{what}");
                assert_eq!(
                    closed_code(&conn).await.0,
                    code,
                    "{what}: the peer is told why"
                );
            }
        }
    }
}

/// A process that closes a connection after its work is confirmed waits only until the close
/// has left (`net::close_done`), not for the draining period, and the peer is still told at
/// once with the code, not by its idle timeout (30 s) after the process is gone.
#[tokio::test]
async fn a_closing_connection_tells_the_peer_without_waiting_out_the_drain() {
    let ends = RawEnds::new();
    let (server, addr, a_id, a_trust) = (&ends.server, ends.addr, &ends.a_id, &ends.a_trust);
    let accepting = server.clone();
    let accepted = tokio::spawn(async move {
        let incoming = accepting.accept().await.expect("incoming");
        incoming.await.expect("tls")
    });
    let ep = net::client_endpoint(addr, net::client_config(a_id, a_trust).expect("cc"))
        .expect("endpoint");
    let early = net::connect_early(&ep, addr, a_id, a_trust)
        .await
        .expect("connect");
    let conn = accepted.await.expect("join");
    let (mut hs, mut hr) = conn.accept_bi().await.expect("handshake stream");
    let _: Hello = net::recv_msg(&mut hr, 4096).await.expect("hello");
    let honest = Hello::new("m1".parse().expect("name"), "site-b".parse().expect("name"));
    net::send_msg(&mut hs, &honest).await.expect("answer");
    // Some traffic first, so that the connection has acknowledgements outstanding.
    let (mut send, _recv) = early.conn.open_bi().await.expect("stream");
    send.write_all(&vec![7u8; 4 << 20]).await.expect("write");
    let (_s, mut r) = conn.accept_bi().await.expect("accept");
    let got = r.read_to_end(8 << 20);
    send.finish().expect("finish");
    assert_eq!(got.await.expect("read").len(), 4 << 20);

    assert!(early.hello.await.expect("join").is_ok());
    let t = std::time::Instant::now();
    net::close_done(&early.conn, close::DONE, "done").await;
    let took = t.elapsed();
    drop((early.conn, early.send, send, ep)); // as the process exits
    assert!(
        took < net::CLOSE_FLUSH,
        "close_done took {took:?}: the close packet should leave at once"
    );
    let told = tokio::time::timeout(Duration::from_secs(5), closed_code(&conn))
        .await
        .expect("the peer is told of the close, not left to its idle timeout");
    assert_eq!(told, (close::DONE, "done".to_owned()));
    // Closing a connection already closed returns at once.
    let t = std::time::Instant::now();
    net::close_done(&conn, close::DONE, "again").await;
    assert!(t.elapsed() < Duration::from_millis(50));
}
