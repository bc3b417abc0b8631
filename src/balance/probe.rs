//! A held-out balanced endpoint's probes sent in the background
//! ([`EndpointLayer::probe_with`](crate::EndpointLayer::probe_with)): a call of its own
//! through the peer table, so that a peer that stays away costs the callers nothing (as
//! Finagle and linkerd reconnect in the background, and Envoy health-checks). Without
//! one, the next caller's call the balancer sends the endpoint is the probe.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::AllSamples;
use crate::error::BoxError;
use crate::peer::key::PeerKey;
use crate::peer::table::PeerTable;
use crate::service::AdaptiveTimeout;

/// One probe, from its making to its end.
type ProbeCall = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// Makes an endpoint's background probes.
pub(crate) type Probe = Arc<dyn Fn() -> ProbeCall + Send + Sync>;

/// `make`, with its calls' answers and errors boxed.
pub(super) fn boxed<G, Fut, T, E>(make: G) -> Probe
where
    G: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<BoxError>,
{
    Arc::new(move || {
        let call = make();
        Box::pin(async move { call.await.map(drop).map_err(Into::into) })
    })
}

/// Sends a probe of `peer` made by `probe` (if any) in the background, through the table
/// as a call to `peer` (what it finds is recorded on the peer: an answer brings the
/// endpoint back); `false` if there is none to send, or no tokio runtime to send it on.
pub(super) fn send<K: PeerKey>(probe: Option<&Probe>, table: &Arc<PeerTable<K>>, peer: &K) -> bool {
    let (Some(probe), Ok(runtime)) = (probe, tokio::runtime::Handle::try_current()) else {
        return false;
    };
    let (probe, peer) = (probe.clone(), peer.clone());
    let key_fn = move |_: &()| peer.clone();
    let mut svc = AdaptiveTimeout::new(Maker(probe), table.clone(), key_fn, AllSamples);
    runtime.spawn(async move {
        if poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
            let _ = svc.call(()).await;
        }
    });
    true
}

/// The probes' maker as a service, for the layer to run them through.
struct Maker(Probe);

impl Service<()> for Maker {
    type Response = ();
    type Error = BoxError;
    type Future = ProbeCall;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> ProbeCall {
        (self.0)()
    }
}
