//! The one small HTTP/1 client of the workspace (hyper), over TCP or a unix
//! socket: ci_service's cache pin and push hook, repohub's calls to
//! ci_service (through `ci_api::CiClient`) and the worker's REST calls to
//! cloud-hypervisor all go through it. It only moves bytes: every request
//! has a deadline and every buffered answer a size limit, and its errors
//! say which of connect, exchange, body, deadline or size went wrong, so a
//! caller can map them onto its own error type.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;

/// How long a request may take unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer body `send` buffers unless the caller says otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What went wrong with one request. Each variant names the target (the
/// URL, or `unix:<socket><path>` for a unix socket).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("request to {target} failed")]
    Exchange {
        target: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the answer of {target} failed")]
    Body {
        target: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{target} did not answer within {ms} ms")]
    Timeout { target: String, ms: u64 },
    #[error("the answer of {target} is larger than {limit} bytes")]
    TooLarge { target: String, limit: usize },
}

/// A whole answer: status, headers and the buffered body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as text for an error message: lossy UTF-8, trimmed, cut to
    /// `max` bytes so a huge error page does not flood a log.
    pub fn body_text(&self, max: usize) -> String {
        let cut = &self.body[..self.body.len().min(max)];
        String::from_utf8_lossy(cut).trim().to_owned()
    }
}

/// An HTTP/1 client with a deadline per request and a limit on buffered
/// bodies. `C` is the connector: TCP (`HttpClient::tcp`) or a unix socket
/// (`HttpClient::unix`). Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct HttpClient<C = HttpConnector> {
    client: Client<C, Full<Bytes>>,
    timeout: Duration,
    body_limit: usize,
}

impl HttpClient<HttpConnector> {
    /// A client for `http://` URLs.
    pub fn tcp() -> Self {
        Self::with_client(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl HttpClient<UnixConnector> {
    /// A client for unix sockets (requests carry `unix_uri`s). Idle
    /// connections are not pooled: a caller that talks to hundreds of
    /// sockets rarely uses one twice in a row, and a pooled connection to
    /// a dead server only fails later.
    pub fn unix() -> Self {
        Self::with_client(
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(UnixConnector),
        )
    }
}

/// The URI of `path` (e.g. `/api/v1/vm.info`) on the unix socket `socket`.
pub fn unix_uri(socket: &Path, path: &str) -> Uri {
    hyperlocal::Uri::new(socket, path).into()
}

/// `Authorization: Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `Authorization: Bearer <secret>`.
pub fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// How a URI is named in errors: the URL itself, or for a unix socket
/// (whose host is the hex-encoded socket path) `unix:<socket><path>`.
fn describe(uri: &Uri) -> String {
    if uri.scheme_str() == Some("unix")
        && let Some(host) = uri.host()
        && let Some(socket) = decode_hex(host)
    {
        return format!("unix:{socket}{}", uri.path());
    }
    uri.to_string()
}

fn decode_hex(s: &str) -> Option<String> {
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

impl<C> HttpClient<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn with_client(client: Client<C, Full<Bytes>>) -> Self {
        HttpClient {
            client,
            timeout: DEFAULT_TIMEOUT,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// The deadline of each request (`send`: the whole exchange; `open`:
    /// until the answer's head).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest body `send` buffers; a larger one is `TooLarge`.
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn timed_out(&self, target: String) -> HttpError {
        HttpError::Timeout {
            target,
            ms: self.timeout.as_millis() as u64,
        }
    }

    async fn head(
        &self,
        target: &str,
        req: Request<Bytes>,
    ) -> Result<http::Response<Incoming>, HttpError> {
        self.client
            .request(req.map(Full::new))
            .await
            .map_err(|source| {
                let target = target.to_owned();
                if source.is_connect() {
                    HttpError::Connect { target, source }
                } else {
                    HttpError::Exchange { target, source }
                }
            })
    }

    /// Sends `req` and buffers the answer; any HTTP status is `Ok`. The
    /// whole exchange is bounded by the timeout, the body by the limit.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response, HttpError> {
        let target = describe(req.uri());
        let exchange = async {
            let resp = self.head(&target, req).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, self.body_limit)
                .collect()
                .await
                .map_err(|source| {
                    if source.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge {
                            target: target.clone(),
                            limit: self.body_limit,
                        }
                    } else {
                        HttpError::Body {
                            target: target.clone(),
                            source,
                        }
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.timed_out(target.clone()))?
    }

    /// Sends `req` and returns the answer with its body unread, for
    /// streaming; only the connection and the head are bounded by the
    /// timeout (a followed log may stay open for minutes).
    pub async fn open(&self, req: Request<Bytes>) -> Result<http::Response<Incoming>, HttpError> {
        let target = describe(req.uri());
        tokio::time::timeout(self.timeout, self.head(&target, req))
            .await
            .map_err(|_| self.timed_out(target.clone()))?
    }
}

/// Parses an `http://` URL for a request.
pub fn parse_url(url: &str) -> Result<Uri, HttpError> {
    url.parse().map_err(|_| HttpError::Url(url.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on a unix socket answering `answer` raw.
    async fn serve_once(socket: &Path, answer: &'static [u8]) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
        });
    }

    /// Serves `answer` once on `socket` and asks it for `path` with `client`.
    async fn ask_once(
        client: HttpClient<UnixConnector>,
        socket: &Path,
        path: &str,
        answer: &'static [u8],
    ) -> Result<Response, HttpError> {
        serve_once(socket, answer).await;
        client.send(get(unix_uri(socket, path))).await
    }

    fn get(uri: Uri) -> Request<Bytes> {
        Request::get(uri)
            .header(http::header::HOST, "localhost")
            .body(Bytes::new())
            .unwrap()
    }

    #[tokio::test]
    async fn unix_socket_answers_are_buffered_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock");
        let r = ask_once(
            HttpClient::unix(),
            &sock,
            "/x",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnope\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.body_text(100), "nope");

        let big = dir.path().join("b.sock");
        let err = ask_once(
            HttpClient::unix().with_body_limit(4),
            &big,
            "/y",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HttpError::TooLarge { limit: 4, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "the answer of unix:{}/y is larger than 4 bytes",
                big.display()
            )
        );
    }

    #[tokio::test]
    async fn connect_failures_and_deadlines_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        let err = HttpClient::unix()
            .send(get(unix_uri(&missing, "/")))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");

        // A server that accepts and never answers.
        let hang = dir.path().join("hang.sock");
        let listener = tokio::net::UnixListener::bind(&hang).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let err = HttpClient::unix()
            .with_timeout(Duration::from_millis(100))
            .send(get(unix_uri(&hang, "/")))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Timeout { ms: 100, .. }), "{err}");

        let err = HttpClient::tcp()
            .send(get(parse_url("http://127.0.0.1:1/x").unwrap()))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn auth_headers() {
        assert_eq!(basic_auth("pcr", "t"), "Basic cGNyOnQ=");
        assert_eq!(bearer("s"), "Bearer s");
    }
}
