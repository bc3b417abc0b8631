//! The accept loop every server of this crate runs on, so each server only supplies what it
//! does with one connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A server task on an ephemeral 127.0.0.1 port: its accept loop runs in a task, and every
/// accepted connection in a task of its own. Dropping it aborts the accept loop and with it
/// every connection, so no server outlives its test or example. [`Loopback::stop`] does the
/// same and waits until the port refuses connections, so a server can be started again on
/// it ([`Loopback::start_at`]): a process that goes down and comes back.
#[derive(Debug)]
pub struct Loopback {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Loopback {
    /// Binds 127.0.0.1:0 and runs `serve` on each accepted connection (with `TCP_NODELAY`).
    pub async fn start<F, Fut>(serve: F) -> std::io::Result<Loopback>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Loopback::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), serve).await
    }

    /// [`Loopback::start`] on `addr`: the address of a server stopped earlier, to start it
    /// again on the same port.
    pub async fn start_at<F, Fut>(addr: SocketAddr, serve: F) -> std::io::Result<Loopback>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            // Owning the set here means aborting this task drops it, which aborts every
            // connection task too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Transient (e.g. out of descriptors): back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                while connections.try_join_next().is_some() {}
                connections.spawn(serve(stream));
            }
        });
        Ok(Loopback {
            addr,
            accepted,
            task,
        })
    }

    /// Stops the server: closes its listener (new connections are refused) and every
    /// connection it accepted, and returns once they are closed, with the address it
    /// listened on.
    pub async fn stop(mut self) -> SocketAddr {
        self.task.abort();
        // Resolves once the aborted task, and with it the listener and every connection
        // task, is dropped; its only outcome is the cancellation.
        let _ = (&mut self.task).await;
        self.addr
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections have been accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn uri(&self, path: &str) -> http::Uri {
        format!("http://{}{path}", self.addr)
            .parse()
            .expect("a loopback address and a path form a URI")
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}
