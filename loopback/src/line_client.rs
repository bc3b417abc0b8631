//! A tower client for the [`EchoServer`](crate::EchoServer) line protocol: the inner service
//! that integration tests wrap with the adaptive-timeout layer, keyed by [`LineRequest::addr`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tower::Service;

/// Longest reply line the client accepts.
const MAX_REPLY: u64 = 64 * 1024;

/// One call: ask the server at `addr` to answer `payload` after `delay_ms` milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRequest {
    /// The server (or proxy) to call; also the natural peer key.
    pub addr: SocketAddr,
    /// How long the server waits before replying.
    pub delay_ms: u64,
    /// What the server echoes back; must not contain a newline.
    pub payload: String,
}

impl LineRequest {
    /// Builds a request, for brevity in tests.
    pub fn new(addr: SocketAddr, delay_ms: u64, payload: impl Into<String>) -> Self {
        Self {
            addr,
            delay_ms,
            payload: payload.into(),
        }
    }
}

/// A [`Service<LineRequest>`] that opens one TCP connection per call, writes
/// `"DELAY_MS PAYLOAD\n"` and resolves to the reply line without its newline.
///
/// Always ready. A connection closed before a full line arrives is
/// [`io::ErrorKind::UnexpectedEof`]; a reset is whatever the OS reports (usually
/// [`io::ErrorKind::ConnectionReset`]). Dropping the call future closes its connection, as a
/// timed-out or interrupted real client would. Clones share the call counter.
#[derive(Debug, Clone, Default)]
pub struct LineClient {
    calls: Arc<AtomicUsize>,
}

impl LineClient {
    /// A new client.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many calls this client (and its clones) has started.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<LineRequest> for LineClient {
    type Response = String;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<String>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LineRequest) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(round_trip(req))
    }
}

/// One request/reply exchange on a fresh connection.
async fn round_trip(req: LineRequest) -> io::Result<String> {
    if req.payload.contains('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "payload must not contain a newline",
        ));
    }
    let mut stream = TcpStream::connect(req.addr).await?;
    stream.set_nodelay(true)?;
    let line = format!("{} {}\n", req.delay_ms, req.payload);
    stream.write_all(line.as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(stream.take(MAX_REPLY))
        .read_line(&mut reply)
        .await?;
    match reply.strip_suffix('\n') {
        Some(body) => Ok(body.to_owned()),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed before a full reply line (got {reply:?})"),
        )),
    }
}
