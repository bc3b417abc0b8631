//! Health events on tokio's paused clock: a subscriber gets every transition with its typed
//! key, from, to, why and when; one that never reads loses the oldest and slows nothing.

use crate::support;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_adaptive_timeout::events::HEALTH_EVENTS_CAPACITY;
use tower_adaptive_timeout::{HealthEvent, PeerState, TimeoutPolicy};

use support::ms;
use support::peers::{rig, Rig, P};

/// A silence of `P::A` and its recovery: two calls in flight miss, then a probe is answered.
async fn silence_and_recover(rig: &Rig) {
    rig.peers.silence(P::A, true);
    let mut calls = JoinSet::new();
    rig.spawn(&mut calls, P::A);
    rig.spawn(&mut calls, P::A);
    while let Some(ended) = calls.join_next().await {
        assert!(ended.unwrap().0.is_err());
    }
    assert_eq!(rig.state(P::A), PeerState::Silent);
    rig.peers.silence(P::A, false);
    tokio::time::sleep(rig.handle.peer(&P::A).unwrap().next_probe_in).await;
    rig.call(P::A, ms(5)).await.expect("the probe is answered");
    assert_eq!(rig.state(P::A), PeerState::Healthy);
}

fn drain(events: &mut Receiver<HealthEvent<P>>) -> Vec<HealthEvent<P>> {
    let mut all = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => all.push(event),
            Err(TryRecvError::Empty) => return all,
            Err(other) => panic!("{other}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_transition_arrives_typed_and_in_order() {
    let rig = rig(TimeoutPolicy::default().cold_start(ms(100)));
    rig.warm(P::A, ms(5), 3).await;
    let mut events = rig.handle.health_events();
    let start = Instant::now();
    silence_and_recover(&rig).await;
    let seen = drain(&mut events);
    let steps: Vec<_> = seen.iter().map(|e| (e.peer, e.from, e.to)).collect();
    use PeerState::*;
    assert_eq!(
        steps,
        [
            (P::A, Healthy, Suspect),
            (P::A, Suspect, Silent),
            (P::A, Silent, Probing),
            (P::A, Probing, Healthy),
        ]
    );
    assert_eq!(
        seen[1].why,
        "independent misses reached silent_after_misses"
    );
    assert_eq!(seen[3].why, "probe answered");
    assert!(seen.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(
        seen[0].at >= start + ms(100),
        "the first miss, at its deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_never_reads_loses_the_oldest_and_slows_nothing() {
    let rig = rig(TimeoutPolicy::default().cold_start(ms(100)));
    let mut idle = rig.handle.health_events();
    let mut reader = rig.handle.health_events();
    let cycles = HEALTH_EVENTS_CAPACITY / 4 + 10;
    let mut read = 0;
    for _ in 0..cycles {
        let start = Instant::now();
        silence_and_recover(&rig).await;
        // Each silence takes its deadline and a probe backoff, whoever is not reading.
        assert!(Instant::now() - start < ms(200));
        read += drain(&mut reader).len();
    }
    assert_eq!(read, cycles * 4, "a reader that keeps up misses nothing");
    let lost = (cycles * 4 - HEALTH_EVENTS_CAPACITY) as u64;
    assert_eq!(idle.recv().await, Err(RecvError::Lagged(lost)));
    assert_eq!(idle.recv().await.unwrap().from, PeerState::Healthy);
}
