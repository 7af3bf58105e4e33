//! A minimal HTTP/1.1 client (hyper) for the two calls ci_service makes
//! over HTTP: pinning a generation's closure in the cache, and the
//! post-receive hook's notification to ci_service itself.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("request to {url} failed")]
    Request {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the answer of {url} failed")]
    Body { url: String, source: hyper::Error },
    #[error("{url} did not answer within {secs}s")]
    Timeout { url: String, secs: u64 },
}

/// Sends one request and returns the status and body.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(header::HeaderName, String)],
    body: Option<(String, Vec<u8>)>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), HttpError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = match body {
        Some((ctype, bytes)) => req
            .header(header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(bytes))),
        None => req.body(Full::new(Bytes::new())),
    }
    .map_err(|_| HttpError::Url(url.to_owned()))?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|source| HttpError::Request {
                url: url.to_owned(),
                source,
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| HttpError::Body {
                url: url.to_owned(),
                source,
            })?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.to_owned(),
            secs: timeout.as_secs(),
        })?
}

/// `Authorization: Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
