//! Which peer a request goes to, and how a peer is named: a peer's label is bounded and
//! escaped whatever its key's `Debug` writes (userinfo: `tests/tracing/userinfo.rs`).

use crate::support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;

use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, HasPeer, HttpPeer, TimeoutPolicy, MAX_LABEL_BYTES,
};

use support::ms;
use support::requests::get;

#[test]
fn http_peers_compare_hash_and_print_without_userinfo() {
    let with: HttpPeer = "http://admin:hunter2@db:5432".parse().unwrap();
    let without: HttpPeer = "http://db:5432".parse().unwrap();
    let from_request = get("http://u:p@DB:5432/x?y").peer().unwrap();
    assert_eq!(with, without);
    assert_eq!(from_request, without, "hosts compare without case");
    let set: HashSet<_> = [with.clone(), without.clone(), from_request].into();
    assert_eq!(set.len(), 1);
    for shown in [
        with.to_string(),
        format!("{with:?}"),
        with.authority().to_owned(),
    ] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("admin"),
            "{shown}"
        );
    }
    assert_eq!(with.authority(), "db:5432");
    assert_ne!(with, "https://db:5432".parse::<HttpPeer>().unwrap());
    assert_ne!(with, "http://db:5433".parse::<HttpPeer>().unwrap());
}

#[test]
fn a_missing_port_is_the_schemes_default_and_a_trailing_dot_is_the_same_host() {
    let peer = |s: &str| s.parse::<HttpPeer>().unwrap();
    let spellings = [
        "https://api.test",
        "https://api.test:443",
        "https://api.test.:443",
        "https://API.test.",
        "https://api.test:",
    ];
    let mut keys: Vec<HttpPeer> = spellings.iter().map(|s| peer(s)).collect();
    keys.push(get("https://api.test/v1").peer().unwrap());
    keys.push(get("https://api.test:443/v1").peer().unwrap());
    keys.push(get("https://u:p@api.test./v1").peer().unwrap());
    let set: HashSet<_> = keys.iter().cloned().collect();
    assert_eq!(set.len(), 1, "{keys:?}");
    for key in &keys {
        assert!(
            key.to_string().eq_ignore_ascii_case("https://api.test:443"),
            "{key}"
        );
        assert_eq!(key.port(), Some(443));
        assert!(key.host().eq_ignore_ascii_case("api.test"), "{key:?}");
    }
    assert_eq!(peer("http://m.test."), peer("http://m.test:80"));
    assert_eq!(peer("http://m.test").to_string(), "http://m.test:80");
    assert_eq!(peer("ws://m.test"), peer("ws://m.test:80"));
    assert_eq!(peer("wss://m.test"), peer("wss://m.test:443"));
    // Another port, another scheme, another host: another peer.
    assert_ne!(peer("https://api.test"), peer("https://api.test:8443"));
    assert_ne!(peer("https://api.test"), peer("http://api.test"));
    assert_ne!(peer("http://api.test"), peer("https://api.test:80"));
    assert_ne!(peer("https://api.test"), peer("https://api.test.."));
    // No scheme (a `Host` header), no default: the port is only the one written.
    let mut host = get("/x");
    host.headers_mut()
        .insert("host", "api.test".parse().unwrap());
    let by_host = host.peer().unwrap();
    assert_eq!(by_host.port(), None);
    assert_eq!(by_host.to_string(), "api.test");
    assert_ne!(by_host, peer("https://api.test"));
    assert_eq!(peer("svc.local:8080").port(), Some(8080));
    // A port that is no port names no peer.
    assert!("http://api.test:99999".parse::<HttpPeer>().is_err());
    assert!("http://api.test:8o".parse::<HttpPeer>().is_err());
    assert!("http://[::1]".parse::<HttpPeer>().unwrap().to_string() == "http://[::1]:80");
}

#[tokio::test(start_paused = true)]
async fn a_peer_named_with_its_default_port_is_the_peer_of_requests_without_one() {
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: http::Request<()>| {
        std::future::pending::<Result<http::Response<()>, BoxError>>()
    }));
    let key: HttpPeer = "https://api.test:443".parse().unwrap();
    let fifty = TimeoutPolicy::default()
        .min(ms(50))
        .cold_start(ms(50))
        .max(ms(50))
        .silent_after_misses(10);
    handle.set_peer_policy(key.clone(), fifty).unwrap();
    for uri in [
        "https://api.test/v1",
        "https://api.test:443/v1",
        "https://api.test./v1",
    ] {
        let start = Instant::now();
        let err = support::interrupted(svc.clone().oneshot(get(uri)).await);
        assert!(err.is_timeout(), "{uri}: {err}");
        assert_eq!(err.peer(), "https://api.test:443", "{uri}: {err}");
        assert_eq!(start.elapsed(), ms(50), "{uri}: the override applies");
    }
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.len(), 1, "one peer: {snapshot:?}");
    assert_eq!(&*snapshot[0].peer, "https://api.test:443");
    let peer = handle.peer(&key).unwrap();
    assert_eq!(peer.deadline_exceeded, 3, "{peer:?}");
}

/// A key whose `Debug` writes whatever it holds, raw.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Raw(String);

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The label the layer gives a peer keyed by `key`, as its snapshot and its errors show it.
async fn label_of<K>(key: K) -> (String, String)
where
    K: tower_adaptive_timeout::PeerKey,
{
    let k = key.clone();
    let layer = AdaptiveTimeoutLayer::builder(move |_: &()| k.clone())
        .policy(TimeoutPolicy::default().cold_start(ms(10)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(())
    }));
    let err = svc.oneshot(()).await.unwrap_err();
    let err = err
        .downcast_ref::<tower_adaptive_timeout::Interrupted>()
        .unwrap();
    let snap = handle.peer(&key).unwrap();
    assert!(
        std::ptr::eq(snap.peer.as_ptr(), err.peer().as_ptr()),
        "one label, shared"
    );
    (snap.peer.to_string(), err.to_string())
}

#[tokio::test(start_paused = true)]
async fn labels_are_bounded_escaped_and_cut_on_a_char_boundary() {
    // 64 KiB of control bytes: its Debug form alone is 384 KiB.
    let (label, err) = label_of("\u{1}".repeat(64 << 10)).await;
    assert!(label.len() <= MAX_LABEL_BYTES, "{} bytes", label.len());
    assert!(label.ends_with('…'), "{label}");
    assert!(label.starts_with("\\u{1}\\u{1}"), "{label}");
    assert!(err.len() < 2 * MAX_LABEL_BYTES + 200, "{err}");

    // A Debug that writes raw control characters and right-to-left overrides: escaped.
    let (label, _) = label_of(Raw("db\n7\u{1b}[31m\u{202e}x\u{2028}".into())).await;
    assert_eq!(label, "db\\n7\\u{1b}[31m\\u{202e}x\\u{2028}");

    // Multi-byte characters are never split.
    let (label, _) = label_of(Raw("é".repeat(1000))).await;
    assert!(label.len() <= MAX_LABEL_BYTES);
    assert!(
        label.trim_end_matches('…').chars().all(|c| c == 'é'),
        "{label}"
    );

    // A label that fits is kept whole; a string key loses its quotes only.
    let fits = "a".repeat(MAX_LABEL_BYTES);
    assert_eq!(label_of(fits.clone()).await.0, fits);
    assert_eq!(
        label_of(String::from("10.0.0.7:9000")).await.0,
        "10.0.0.7:9000"
    );
    assert_eq!(label_of(7u32).await.0, "7");
}

/// Spellings of a few peers: the same peer written several ways, and peers that differ
/// from it only in scheme, port or host.
const SPELLINGS: [&str; 9] = [
    "http://a.test:80/x",
    "http://a.test/y",
    "http://A.TEST:80/",
    "http://u:p@a.test:80/",
    "https://a.test:80/",
    "http://a.test:81/",
    "http://b.test:80/",
    "http://a.test.:80/",
    "a.test:80",
];

#[test]
fn a_request_goes_to_a_peer_only_if_its_key_is_that_peer() {
    let request = |s: &str| {
        http::Request::builder()
            .uri(s)
            .body(())
            .expect("a valid URI")
    };
    let mut told = 0;
    for a in SPELLINGS {
        let peer = request(a).peer().expect("a peer");
        for b in SPELLINGS {
            let req = request(b);
            if req.goes_to(&peer) {
                told += 1;
                assert_eq!(req.peer().as_ref(), Some(&peer), "{b} told to go to {a}");
            }
        }
    }
    // Every spelling is told it goes to its own peer, without its key built.
    assert!(told >= SPELLINGS.len(), "{told}");
    // A request keyed by its `Host` header is never told.
    let hosted = http::Request::builder()
        .uri("/x")
        .header(http::header::HOST, "a.test:80")
        .body(())
        .unwrap();
    let peer = hosted.peer().expect("the Host header's peer");
    assert!(!hosted.goes_to(&peer));
}

#[tokio::test(start_paused = true)]
async fn one_service_calling_peers_in_turn_counts_each_call_on_its_own_peer() {
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(()))
    }));
    // Each spelling in turn, twice over: the service's last peer changes between most
    // calls, and repeats between some (the same peer written differently, or twice).
    for uri in SPELLINGS
        .iter()
        .chain(&SPELLINGS)
        .chain(&["http://a.test/z"; 3])
    {
        let response = svc.ready().await.unwrap().call(get(uri)).await;
        assert!(response.is_ok(), "{uri}");
    }
    let calls = |peer: &str| {
        let key: HttpPeer = peer.parse().unwrap();
        handle.peer(&key).map_or(0, |p| p.completed)
    };
    assert_eq!(calls("http://a.test:80"), 2 * 5 + 3);
    assert_eq!(calls("https://a.test:80"), 2);
    assert_eq!(calls("http://a.test:81"), 2);
    assert_eq!(calls("http://b.test:80"), 2);
    assert_eq!(calls("a.test:80"), 2, "no scheme: a peer of its own");
    assert_eq!(handle.snapshot().len(), 5);
}
