//! Tests of the kit itself over real loopback TCP: the echo server, the line client and
//! every fault mode of the proxy. Waits are bounded; wall-time assertions are lower bounds
//! only.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use loopback::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tower::{Service, ServiceExt};

/// Upper bound for anything expected to happen; only reached when a test is failing.
const PATIENCE: Duration = Duration::from_secs(2);

/// How long something expected *not* to happen is watched for.
const SILENCE: Duration = Duration::from_millis(300);

/// An echo server behind a proxy, both on loopback.
async fn proxied() -> (EchoServer, FaultProxy) {
    let echo = EchoServer::start().await;
    let proxy = FaultProxy::start(echo.addr()).await;
    (echo, proxy)
}

/// One call through a fresh [`LineClient`], bounded by [`PATIENCE`].
async fn call(addr: SocketAddr, delay_ms: u64, payload: &str) -> io::Result<String> {
    let req = LineRequest::new(addr, delay_ms, payload);
    timeout(PATIENCE, LineClient::new().oneshot(req))
        .await
        .expect("call settles in time")
}

/// A raw connection for tests that need to keep one open across mode changes.
struct Conn(BufReader<TcpStream>);

impl Conn {
    /// Connects to `addr`.
    async fn open(addr: SocketAddr) -> Self {
        let stream = timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self(BufReader::new(stream))
    }

    /// Sends one request line.
    async fn send(&mut self, delay_ms: u64, payload: &str) {
        let line = format!("{delay_ms} {payload}\n");
        self.0
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .expect("write");
    }

    /// Reads one line (empty on EOF), or `None` if nothing arrives within `wait`.
    async fn line_within(&mut self, wait: Duration) -> Option<io::Result<String>> {
        let mut line = String::new();
        let read = timeout(wait, self.0.read_line(&mut line)).await.ok()?;
        Some(read.map(|_| line))
    }

    /// Reads one line, which must arrive within [`PATIENCE`].
    async fn line(&mut self) -> io::Result<String> {
        self.line_within(PATIENCE).await.expect("a line in time")
    }
}

/// Pipelined lines on one connection are answered in request order, a slow one holding back the fast ones behind it; a malformed line gets the error reply.
#[tokio::test]
async fn echo_server_answers_pipelined_lines_in_order() {
    let echo = EchoServer::start().await;
    let mut conn = Conn::open(echo.addr()).await;
    conn.send(100, "slow first").await;
    conn.send(0, "fast second").await;
    conn.send(5, "third").await;
    conn.0.get_mut().write_all(b"oops\n").await.unwrap();
    assert_eq!(conn.line().await.unwrap(), "slow first\n");
    assert_eq!(conn.line().await.unwrap(), "fast second\n");
    assert_eq!(conn.line().await.unwrap(), "third\n");
    assert_eq!(conn.line().await.unwrap(), format!("{MALFORMED_REPLY}\n"));
    assert_eq!(echo.connections(), 1);
}

/// Concurrent calls each get their own connection and reply; a payload with a newline is refused before sending.
#[tokio::test]
async fn line_client_serves_concurrent_calls_and_rejects_newlines() {
    let echo = EchoServer::start().await;
    let client = LineClient::new();
    let calls = (0..20).map(|i| {
        let req = LineRequest::new(echo.addr(), 10, format!("call {i}"));
        tokio::spawn(client.clone().oneshot(req))
    });
    for (i, call) in calls.collect::<Vec<_>>().into_iter().enumerate() {
        let reply = timeout(PATIENCE, call).await.unwrap().unwrap().unwrap();
        assert_eq!(reply, format!("call {i}"));
    }
    assert_eq!(client.calls(), 20);
    assert_eq!(echo.connections(), 20);
    let err = call(echo.addr(), 0, "two\nlines").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

/// A server closing before a full reply line surfaces as `UnexpectedEof`, not a truncated reply.
#[tokio::test]
async fn line_client_reports_a_closed_connection_as_eof() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        // Read the whole request: closing with unread bytes would send an RST, not a FIN.
        stream.read_line(&mut String::new()).await.unwrap();
        stream.get_mut().write_all(b"partial").await.unwrap();
    });
    let err = call(addr, 0, "x").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    timeout(PATIENCE, server).await.unwrap().unwrap();
}

/// The default mode forwards requests and replies unchanged.
#[tokio::test]
async fn pass_forwards_both_ways() {
    let (_echo, proxy) = proxied().await;
    assert_eq!(call(proxy.addr(), 0, "hello").await.unwrap(), "hello");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.fault(), Fault::Pass);
}

/// `Delay` holds each chunk in both directions (a lower bound only).
#[tokio::test]
async fn delay_adds_latency_each_way() {
    let (_echo, proxy) = proxied().await;
    proxy.set(Fault::Delay(Duration::from_millis(100)));
    let started = Instant::now();
    assert_eq!(call(proxy.addr(), 0, "late").await.unwrap(), "late");
    // The request and the reply are each held 100 ms.
    assert!(started.elapsed() >= Duration::from_millis(180));
}

/// A new call into a blackhole neither completes nor fails; back in `Pass` it completes with its held bytes.
#[tokio::test]
async fn blackhole_stalls_a_call_until_pass_resumes_it() {
    let (_echo, proxy) = proxied().await;
    proxy.set(Fault::Blackhole);
    let mut client = LineClient::new();
    let mut pending = pin!(client.call(LineRequest::new(proxy.addr(), 0, "held")));
    // Neither a reply nor an error (an EOF or reset would end the call with one).
    assert!(timeout(SILENCE, &mut pending).await.is_err());
    assert_eq!(proxy.active(), 1);
    proxy.set(Fault::Pass);
    let reply = timeout(PATIENCE, pending).await.expect("resumed in time");
    assert_eq!(reply.unwrap(), "held");
}

/// `Blackhole` also silences a connection opened before it, without closing it.
#[tokio::test]
async fn blackhole_silences_an_open_connection_without_closing_it() {
    let (_echo, proxy) = proxied().await;
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(0, "before").await;
    assert_eq!(conn.line().await.unwrap(), "before\n");
    proxy.set(Fault::Blackhole);
    conn.send(0, "during").await;
    assert!(
        conn.line_within(SILENCE).await.is_none(),
        "no reply, no EOF"
    );
    proxy.set(Fault::Pass);
    assert_eq!(conn.line().await.unwrap(), "during\n");
}

/// Under `Reset`, new connections are reset on accept, before any upstream connection.
#[tokio::test]
async fn reset_fails_new_calls() {
    let (echo, proxy) = proxied().await;
    proxy.set(Fault::Reset);
    assert!(call(proxy.addr(), 0, "refused").await.is_err());
    assert_eq!(proxy.connections(), 1);
    assert_eq!(echo.connections(), 0, "reset before reaching upstream");
}

/// Switching to `Reset` aborts an open connection with an RST.
#[tokio::test]
async fn reset_aborts_an_open_connection() {
    let (_echo, proxy) = proxied().await;
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(0, "before").await;
    assert_eq!(conn.line().await.unwrap(), "before\n");
    proxy.set(Fault::Reset);
    let err = conn.line().await.expect_err("an RST, not an EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

/// `HalfOpen` lets the request reach upstream but holds the reply until the mode changes.
#[tokio::test]
async fn half_open_takes_requests_but_withholds_replies() {
    let (echo, proxy) = proxied().await;
    proxy.set(Fault::HalfOpen);
    let mut conn = Conn::open(proxy.addr()).await;
    conn.send(0, "unanswered").await;
    assert!(
        conn.line_within(SILENCE).await.is_none(),
        "no reply, no EOF"
    );
    assert_eq!(echo.connections(), 1, "the request reached upstream");
    proxy.set(Fault::Pass);
    assert_eq!(conn.line().await.unwrap(), "unanswered\n");
}

/// `SlowDrip` delivers the whole payload, no faster than its rate allows.
#[tokio::test]
async fn slow_drip_delivers_everything_eventually() {
    let (_echo, proxy) = proxied().await;
    let tick = Duration::from_millis(5);
    proxy.set(Fault::SlowDrip {
        bytes_per_tick: 8,
        tick,
    });
    let payload = "x".repeat(79); // an 80-byte reply: 10 writes, 9 ticks at least
    let started = Instant::now();
    assert_eq!(call(proxy.addr(), 0, &payload).await.unwrap(), payload);
    assert!(started.elapsed() >= tick * 9);
}

/// Dropping the proxy ends its connections, even blackholed ones, and closes its listener.
#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let (_echo, proxy) = proxied().await;
    let addr = proxy.addr();
    proxy.set(Fault::Blackhole);
    let mut conn = Conn::open(addr).await;
    conn.send(0, "orphan").await;
    timeout(PATIENCE, async {
        while proxy.active() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("connection accepted");
    drop(proxy);
    // EOF or reset, but promptly.
    match conn.line().await {
        Ok(line) => assert_eq!(line, ""),
        Err(err) => assert_eq!(err.kind(), io::ErrorKind::ConnectionReset),
    }
    let refused = timeout(PATIENCE, TcpStream::connect(addr)).await.unwrap();
    assert!(refused.is_err(), "listener closed");
}

/// A stopped HTTP server refuses connections on its port, and closes the ones it had; one
/// started again on that port answers.
#[tokio::test]
async fn a_stopped_http_server_refuses_connections_until_started_again_on_its_port() {
    let server = http_server::start(Duration::from_millis(1)).await.unwrap();
    let uri = server.uri("/");
    let client = http_server::client();
    let ok = timeout(PATIENCE, client.request(http_server::get(uri.clone()))).await;
    assert!(ok.unwrap().unwrap().status().is_success());
    let mut open = Conn::open(server.addr()).await;
    let addr = server.stop().await;
    assert_eq!(
        open.line().await.unwrap_or_default(),
        "",
        "connection closed"
    );
    let refused = timeout(PATIENCE, TcpStream::connect(addr)).await.unwrap();
    assert_eq!(
        refused.unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    let _again = http_server::start_at(addr, Duration::from_millis(1))
        .await
        .unwrap();
    let ok = timeout(PATIENCE, client.request(http_server::get(uri))).await;
    assert!(ok.unwrap().unwrap().status().is_success());
}
