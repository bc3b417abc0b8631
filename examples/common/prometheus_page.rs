//! A bare HTTP/1.1 loopback server for a Prometheus page, and the `GET /metrics` that
//! scrapes it, shared by `examples/metrics.rs` and `tests/prometheus_scrape.rs`. Both include
//! this file with `#[path]`; it stays out of `common/mod.rs` so the metrics example needs no
//! `http` feature.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves on a loopback port chosen by the OS, one request per connection: reads the
/// request's head, answers with the status and `text/plain` body that `answer(head)` gives,
/// and closes.
pub async fn serve<F>(answer: F) -> std::io::Result<SocketAddr>
where
    F: Fn(&[u8]) -> (&'static str, String) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = answer(&head);
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// `GET /metrics` over a plain TCP connection; returns the whole response, head and body.
pub async fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await?;
    Ok(response)
}
