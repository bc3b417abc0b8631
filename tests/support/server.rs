//! A minimal accept loop shared by the test servers, so each server only supplies what it
//! does with one connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A listener on `127.0.0.1:0` whose accept loop runs in a task; every accepted connection is
/// handled in its own task. Dropping it aborts the accept loop and with it every connection
/// task, so no test server outlives its test.
#[derive(Debug)]
pub struct Acceptor {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Acceptor {
    /// Binds `127.0.0.1:0` and spawns the accept loop, running `handle` on each connection.
    ///
    /// Panics if the loopback listener cannot be bound: a test cannot proceed without it.
    pub async fn spawn<F, Fut>(handle: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback listener");
        let addr = listener.local_addr().expect("listener address");
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
                connections.spawn(handle(stream));
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    /// The bound loopback address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections have been accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}
