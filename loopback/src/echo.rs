//! A line-protocol server for tests: each line `"DELAY_MS PAYLOAD\n"` is answered with
//! `"PAYLOAD\n"` after `DELAY_MS` milliseconds, which gives tests a peer with a chosen
//! latency per call.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Loopback;

/// Longest request line the server accepts; a longer one closes the connection.
const MAX_LINE: u64 = 64 * 1024;

/// Replies the server can have pending on one connection before it stops reading more lines.
const MAX_PIPELINED: usize = 1024;

/// The reply to a line that does not start with a decimal delay.
pub const MALFORMED_REPLY: &str = "ERR malformed request";

/// A loopback server speaking the `"DELAY_MS PAYLOAD\n"` line protocol.
///
/// Connections are independent and lines may be pipelined: each line's delay starts when the
/// line is read, so pipelined delays overlap, and replies leave in request order (a reply
/// waits for the replies before it). Delays use [`tokio::time::sleep_until`], so they follow
/// a paused test clock. Dropping the server closes its listener and every connection.
#[derive(Debug)]
pub struct EchoServer {
    server: Loopback,
}

impl EchoServer {
    /// Starts the server on `127.0.0.1:0`. Panics if the listener cannot be bound.
    pub async fn start() -> Self {
        let server = Loopback::start(serve).await;
        Self {
            server: server.expect("bind a loopback listener"),
        }
    }

    /// The address to send requests to.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// How many connections the server has accepted so far.
    pub fn connections(&self) -> usize {
        self.server.accepted()
    }
}

/// Parses one request line (without its newline) into when to reply and what.
fn parse(line: &str, received: Instant) -> (Instant, String) {
    let (delay, payload) = line.split_once(' ').unwrap_or((line, ""));
    match delay.parse::<u64>() {
        Ok(ms) => (received + Duration::from_millis(ms), payload.to_owned()),
        Err(_) => (received, MALFORMED_REPLY.to_owned()),
    }
}

/// Serves one connection: a reader schedules replies, a writer sends them in order.
async fn serve(stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<(Instant, String)>(MAX_PIPELINED);
    let reader = async move {
        let mut lines = BufReader::new(read.take(MAX_LINE));
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with('\n') => break, // EOF mid-line or line too long
                Ok(_) => {}
            }
            // Each line may use the whole length limit.
            lines.get_mut().set_limit(MAX_LINE);
            let request = line.trim_end_matches(['\n', '\r']);
            if tx.send(parse(request, Instant::now())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, mut payload)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            payload.push('\n');
            if write.write_all(payload.as_bytes()).await.is_err() {
                break;
            }
        }
        // All replies sent (or the peer is gone): close our side.
        let _ = write.shutdown().await;
    };
    tokio::join!(reader, writer);
}
