//! Interrupts by hand on tokio's paused clock: who fired them and where they were
//! recognized, shutdown reaching every call (untracked ones too), and an interrupt racing a
//! response ending each call exactly once.

use crate::support;

use std::time::Duration;

use tokio::task::JoinSet;
use tower_adaptive_timeout::{Reason, TimeoutPolicy};

use support::peers::{rig, rig_with, P};
use support::{interrupted, ms};

#[tokio::test(start_paused = true)]
async fn manual_interrupts_say_who_fired_and_where_it_was_recognized() {
    let rig = rig(TimeoutPolicy::default());
    let mut set = JoinSet::new();
    rig.spawn(&mut set, P::A);
    tokio::time::sleep(ms(1)).await;
    rig.peers.silence(P::A, true);
    rig.spawn(&mut set, P::A);
    tokio::time::sleep(ms(1)).await;
    let (handle, why) = (&rig.interrupts, "operator drained the host");
    let line = line!() + 1;
    let tracked = handle.interrupt_peer(&P::A, why);
    assert!(tracked);
    let (r, _) = set.join_next().await.unwrap().unwrap();
    let err = interrupted(&r);
    assert_eq!(
        err.reason(),
        &Reason::Manual("operator drained the host".into())
    );
    assert_eq!(
        (err.fired_at().file(), err.fired_at().line()),
        (file!(), line)
    );
    assert!(err.recognized_at().file().ends_with("future.rs"));
    assert!(
        err.to_string().contains("operator drained the host"),
        "{err}"
    );
    set.join_all().await;
    let snap = rig.handle.peer(&P::A).unwrap();
    assert_eq!((snap.manual_interrupts, snap.in_flight), (2, 0));
    assert!(
        !rig.interrupts.interrupt_peer(&P::Nobody, "x"),
        "untracked peer"
    );
}

#[tokio::test(start_paused = true)]
async fn interrupt_all_and_shutdown_reach_every_call_even_untracked_ones() {
    // One peer slot: P::A holds it with a call in flight, so P::B goes untracked.
    let rig = rig_with(TimeoutPolicy::default(), 1);
    rig.peers.silence(P::A, true);
    rig.peers.silence(P::B, true);
    let mut set = JoinSet::new();
    rig.spawn(&mut set, P::A);
    tokio::time::sleep(ms(1)).await;
    rig.spawn(&mut set, P::B);
    tokio::time::sleep(ms(1)).await;
    assert!(rig.handle.peer(&P::B).is_none(), "b is untracked");
    rig.interrupts.shutdown();
    for (r, _) in set.join_all().await {
        assert_eq!(interrupted(&r).reason(), &Reason::Shutdown);
    }
}

#[tokio::test(start_paused = true)]
async fn an_interrupt_racing_a_response_ends_each_call_exactly_once() {
    let rig = rig(TimeoutPolicy::default());
    for offset in 0..40u64 {
        // The answer is due at 20ms; the interrupt fires at 0..40ms (from 1.0ms in 0.1ms steps).
        let mut set = JoinSet::new();
        rig.spawn_delay(&mut set, P::A, ms(20));
        tokio::time::sleep(Duration::from_micros(1_000 + offset * 500)).await;
        rig.interrupts.interrupt_peer(&P::A, "race");
        let (r, _) = set.join_next().await.unwrap().unwrap();
        assert!(r.is_ok() || interrupted(&r).reason() == &Reason::Manual("race".into()));
    }
    let snap = rig.handle.peer(&P::A).unwrap();
    assert_eq!(snap.completed + snap.manual_interrupts, 40, "{snap:?}");
    assert!(
        snap.completed > 0 && snap.manual_interrupts > 0,
        "both sides won some races"
    );
    assert_eq!(snap.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn after_shutdown_new_calls_are_refused_before_the_inner_service() {
    // One peer slot, held by A's call in flight: B goes untracked.
    let rig = rig_with(TimeoutPolicy::default(), 1);
    rig.peers.silence(P::A, true);
    let mut set = JoinSet::new();
    rig.spawn(&mut set, P::A);
    tokio::time::sleep(ms(1)).await;
    let line = line!() + 1;
    rig.interrupts.shutdown();
    let (r, _) = set.join_next().await.unwrap().unwrap();
    assert_eq!(interrupted(&r).reason(), &Reason::Shutdown);
    let arrived = rig.peers.arrivals(P::A).len();
    // Later calls, to the tracked peer, a new one and one over the bound, never start.
    for peer in [P::A, P::B, P::Tail] {
        let r = rig.call(peer, ms(1)).await;
        let err = interrupted(&r);
        assert_eq!(err.reason(), &Reason::Shutdown, "{peer:?}");
        assert_eq!(err.elapsed(), Duration::ZERO);
        assert_eq!(
            (err.fired_at().file(), err.fired_at().line()),
            (file!(), line),
            "the shutdown call is named"
        );
    }
    assert_eq!(rig.peers.arrivals(P::A).len(), arrived);
    assert!(rig.peers.arrivals(P::B).is_empty());
    assert!(rig.peers.arrivals(P::Tail).is_empty());
    assert!(rig.handle.snapshot().iter().all(|p| p.in_flight == 0));
}
