//! A text page served over HTTP/1 on 127.0.0.1 (hyper), and the `GET` that fetches it (the
//! hyper-util client of [`crate::http_server`]): a Prometheus scrape endpoint and its scraper.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tower::BoxError;

use crate::Loopback;

/// The content type of Prometheus' text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// Serves every request with the status and body `answer` gives for it, as Prometheus
/// text. Dropping the returned server stops it.
pub async fn serve<F>(answer: F) -> std::io::Result<Loopback>
where
    F: Fn(&Request<Incoming>) -> (StatusCode, String) + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    Loopback::start(move |stream| {
        let answer = Arc::clone(&answer);
        async move {
            let service = hyper::service::service_fn(move |req| {
                let (status, body) = answer(&req);
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                let text = HeaderValue::from_static(TEXT_FORMAT);
                response.headers_mut().insert(CONTENT_TYPE, text);
                std::future::ready(Ok::<_, Infallible>(response))
            });
            // A connection ends when the client goes away; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

/// `GET uri`; returns the response with its whole body as text.
pub async fn fetch(uri: Uri) -> Result<Response<String>, BoxError> {
    let response = crate::http_server::client()
        .request(crate::http_server::get(uri))
        .await?;
    let (head, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(
        head,
        String::from_utf8(body.to_vec())?,
    ))
}
