//! Discovery against a tiny real HTTP server on loopback that answers
//! `/v1/health/service/web` like an agent: index 5 with two instances, then index 7 with one.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use colony_client::discover::{HealthWatch, InstanceChange};
use colony_client::layer::balance::Balance;
use colony_client::layer::{Clock, Observe};
use colony_client::policy::balance::BalanceConfig;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const TWO: &str = r#"[
 {"Node":{"Node":"a","Address":"10.0.0.1","Datacenter":"dc1"},"Service":{"ID":"web-1","Service":"web","Address":"","Port":8080},"Checks":[]},
 {"Node":{"Node":"b","Address":"10.0.0.2","Datacenter":"dc1"},"Service":{"ID":"web-2","Service":"web","Address":"","Port":8080,"Meta":{"zone":"z2"}},"Checks":[]}
]"#;
const ONE: &str = r#"[
 {"Node":{"Node":"b","Address":"10.0.0.2","Datacenter":"dc1"},"Service":{"ID":"web-2","Service":"web","Address":"","Port":8080,"Meta":{"zone":"z2"}},"Checks":[]}
]"#;

async fn serve(queries: Arc<Mutex<Vec<String>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let queries = queries.clone();
            tokio::spawn(async move {
                let handler = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let query = request.uri().query().unwrap_or("").to_owned();
                    queries
                        .lock()
                        .expect("not poisoned")
                        .push(format!("{}?{query}", request.uri().path()));
                    let (index, body) = if query.contains("index=0") {
                        ("5", TWO)
                    } else {
                        ("7", ONE)
                    };
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("X-Consul-Index", index)
                                .header("Content-Type", "application/json")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .expect("valid response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    format!("http://{address}")
}

#[tokio::test]
async fn discover_blocking_queries_feed_inserts_and_removals() {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let agent = serve(queries.clone()).await;
    let mut watch = HealthWatch::new(&agent, "web", Duration::from_secs(1));

    let first = watch.next_changes().await.expect("first answer");
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|c| matches!(c, InstanceChange::Insert(_))));
    assert_eq!(watch.index(), 5);

    // The second query waits on index 5 and sees one instance go.
    let balance: Balance<String, u32> = Balance::new(
        BalanceConfig::default(),
        Observe::silent("web"),
        Clock::new(),
        1,
    );
    balance.update(colony_client::layer::balance::Change::Insert(
        "10.0.0.1:8080".into(),
        None,
        1,
    ));
    balance.update(colony_client::layer::balance::Change::Insert(
        "10.0.0.2:8080".into(),
        None,
        2,
    ));
    let applied = watch.feed(&balance, |_| 0).await.expect("second answer");
    assert_eq!(applied, 1);
    assert_eq!(balance.len(), 1);
    assert_eq!(watch.index(), 7);

    let seen = queries.lock().expect("not poisoned").clone();
    assert_eq!(
        seen[0],
        "/v1/health/service/web?passing&index=0&wait=1000ms"
    );
    assert_eq!(
        seen[1],
        "/v1/health/service/web?passing&index=5&wait=1000ms"
    );
}

/// A server that fails the first query with 500, then answers like `serve` (index 5 with
/// two instances, then index 7 with one).
async fn serve_after_a_failure() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("bound");
    let served = Arc::new(Mutex::new(0u32));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let served = served.clone();
            tokio::spawn(async move {
                let handler = service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let n = {
                        let mut served = served.lock().expect("not poisoned");
                        *served += 1;
                        *served
                    };
                    let (status, index, body) = match n {
                        1 => (500, "0", "[]"),
                        2 => (200, "5", TWO),
                        _ => (200, "7", ONE),
                    };
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("X-Consul-Index", index)
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .expect("valid response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    format!("http://{address}")
}

/// The compile-time proof that the stream is a tower `Discover`.
fn is_tower_discover<D: tower::discover::Discover>(discover: D) -> D {
    discover
}

#[tokio::test]
async fn discover_stream_is_a_tower_discover_that_outlives_a_failed_query() {
    use futures_core::Stream;
    use std::pin::Pin;
    let agent = serve_after_a_failure().await;
    let watch = HealthWatch::new(&agent, "web", Duration::from_secs(1));
    let mut discover = is_tower_discover(
        watch.into_discover(Duration::from_millis(50), |instance| instance.zone.clone()),
    );
    macro_rules! next {
        () => {
            std::future::poll_fn(|cx| Pin::new(&mut discover).poll_next(cx)).await
        };
    }
    let mut inserted = Vec::new();
    for _ in 0..2 {
        match next!() {
            Some(Ok(tower::discover::Change::Insert(id, zone))) => inserted.push((id, zone)),
            other => panic!("expected an insert, got {other:?}"),
        }
    }
    inserted.sort();
    assert_eq!(
        inserted,
        vec![
            ("10.0.0.1:8080".to_string(), Some("dc1".to_string())),
            ("10.0.0.2:8080".to_string(), Some("z2".to_string())),
        ]
    );
    match next!() {
        Some(Ok(tower::discover::Change::Remove(id))) => assert_eq!(id, "10.0.0.1:8080"),
        other => panic!("expected the removal, got {other:?}"),
    }
}
