//! Bodiless `http::Request`s through the layer, on tokio's paused clock.

use std::convert::Infallible;

use http::{Request, Response};
use tower::{service_fn, Service};
use tower_adaptive_timeout::{HasPeer, HttpPeer};

/// A `GET` of `uri` without a body.
pub fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

/// The peer key of an http request, as the layer computes it.
pub trait PeerKeyOf {
    /// The key.
    fn peer_key(&self) -> HttpPeer;
}

impl PeerKeyOf for Request<()> {
    fn peer_key(&self) -> HttpPeer {
        HasPeer::peer(self).unwrap()
    }
}

/// A service that answers a request for `/fast` at once and never answers any other.
pub fn fast_or_hang(
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(|req: Request<()>| async move {
        if req.uri().path() != "/fast" {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(()))
    })
}
