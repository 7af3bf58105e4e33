//! Pinning a generation's closure in the binary cache
//! (`PUT /_pcr/pins/<name>`), so the cache keeps it while the generation
//! may run. The one HTTP call ci_service makes to the cache; nix does the
//! uploads themselves.

use std::time::Duration;

use bytes::Bytes;
use commands::http::{HttpClient, HttpError, basic_auth};
use http::{Method, Request, StatusCode, header};

/// How long the cache may take to record a pin.
const PIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a pin did not take; the text is what the job log and the job's
/// error show after "pinning the closure in the cache failed: ".
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("invalid cache URL {0:?}")]
    Url(String),
    /// The cache could not be reached or did not answer in time.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The cache answered and said no.
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: StatusCode,
        body: String,
    },
}

/// `PUT <cache_url>/_pcr/pins/<name>` with `{"paths": [...]}`,
/// authenticated as `pcr` with the cache's upload token when there is one.
pub async fn pin(
    cache_url: &str,
    token: Option<&str>,
    name: &str,
    paths: &[String],
) -> Result<(), PinError> {
    let url = format!("{}/_pcr/pins/{name}", cache_url.trim_end_matches('/'));
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, basic_auth("pcr", t));
    }
    let body = serde_json::to_vec(&serde_json::json!({ "paths": paths })).expect("json");
    let req = req
        .body(Bytes::from(body))
        .map_err(|_| PinError::Url(url.clone()))?;
    let resp = HttpClient::tcp()
        .with_timeout(PIN_TIMEOUT)
        .send(req)
        .await?;
    if !resp.status.is_success() {
        return Err(PinError::Refused {
            body: resp.body_text(usize::MAX),
            url,
            status: resp.status,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::put;
    use std::sync::{Arc, Mutex};

    /// A cache stand-in that records what it was sent and answers `status`.
    async fn cache(status: StatusCode) -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/_pcr/pins/{name}",
            put(
                move |axum::extract::Path(name): axum::extract::Path<String>,
                      headers: http::HeaderMap,
                      body: String| async move {
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    s.lock().unwrap().push((name, auth, body));
                    (status, "no thanks\n")
                },
            ),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (url, seen)
    }

    #[tokio::test]
    async fn pin_sends_the_paths_with_the_token() {
        let (url, seen) = cache(StatusCode::NO_CONTENT).await;
        pin(
            &format!("{url}/"),
            Some("t"),
            "generation-3",
            &["/nix/store/a".into()],
        )
        .await
        .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, "generation-3");
        assert_eq!(seen[0].1, basic_auth("pcr", "t"));
        assert_eq!(seen[0].2, r#"{"paths":["/nix/store/a"]}"#);
    }

    #[tokio::test]
    async fn refusals_and_dead_caches_are_told_apart() {
        let (url, _) = cache(StatusCode::UNAUTHORIZED).await;
        let err = pin(&url, None, "g", &[]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{url}/_pcr/pins/g answered 401 Unauthorized: no thanks")
        );
        let err = pin("http://127.0.0.1:1", None, "g", &[]).await.unwrap_err();
        assert!(matches!(err, PinError::Http(_)), "{err}");
    }
}
