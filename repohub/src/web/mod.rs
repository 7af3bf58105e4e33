//! HTTP surface: the router, the viewer (session) extractor, CSRF and
//! security headers, the error page, and helpers shared by the handlers in
//! `account`, `project` and `repo`.

mod account;
mod ci;
mod cluster;
mod pages;
mod project;
mod repo;

use std::convert::Infallible;

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::auth;
use crate::db::{DbError, User};
use crate::git::GitError;
use crate::smart_http;

pub const SESSION_COOKIE: &str = "rh_session";
pub const CSRF_COOKIE: &str = "rh_csrf";
pub const SESSION_TTL_MS: i64 = 30 * 24 * 3600 * 1000;

/// Builds the whole application router on `state`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(project::index))
        .route("/metrics", get(crate::metrics::serve))
        .route("/static/style.css", get(style_css))
        .route("/static/live.js", get(live_js))
        .route("/static/cluster.js", get(cluster::cluster_js))
        .route("/static/cluster.css", get(cluster::cluster_css))
        .route("/-/cluster", get(cluster::cluster))
        .route("/static/copy.js", get(copy_js))
        .route("/signup", get(account::signup_form).post(account::signup))
        .route("/login", get(account::login_form).post(account::login))
        .route("/logout", post(account::logout))
        .route(
            "/settings/tokens",
            get(account::tokens).post(account::create_token),
        )
        .route("/settings/tokens/{id}/delete", post(account::delete_token))
        .route("/new", get(project::new_form).post(project::create))
        .route("/-/admin", get(account::admin_page))
        .route("/-/admin/users/{name}", post(account::set_rights))
        .route("/{project}", get(project::show))
        .route("/{project}/-/repos", post(repo::create))
        .route("/{project}/-/members", post(project::add_member))
        .route("/{project}/-/deploy", post(project::set_deploy))
        .route(
            "/{project}/-/delete",
            get(project::delete_form).post(project::delete),
        )
        .route("/{project}/-/panel/ci", get(project::ci_panel))
        .route("/{project}/-/panel/cluster", get(project::cluster_panel))
        .route("/{project}/-/cluster", get(cluster::project_cluster))
        .route("/{project}/-/vms/{name}", get(cluster::vm))
        .route("/{project}/-/vms/{name}/console", get(cluster::console))
        .route("/{project}/-/jobs/{id}", get(ci::job))
        .route("/{project}/-/jobs/{id}/summary", get(ci::job_summary))
        .route("/{project}/-/jobs/{id}/log", get(ci::job_log))
        .route("/{project}/-/jobs/{id}/cancel", post(ci::cancel_job))
        .route("/{project}/-/jobs/{id}/rerun", post(ci::rerun_job))
        .route("/{project}/{repo}", get(repo::show))
        .route(
            "/{project}/{repo}/delete",
            get(repo::delete_form).post(repo::delete),
        )
        .route(
            "/{project}/{repo}/autonix",
            get(repo::autonix_reload).post(repo::autonix),
        )
        .route("/{project}/{repo}/autonix/commit", post(ci::commit_flake))
        .route("/{project}/{repo}/log/{rev}", get(repo::log))
        .route("/{project}/{repo}/tree/{rev}", get(repo::tree_root))
        .route("/{project}/{repo}/tree/{rev}/{*path}", get(repo::tree))
        .route("/{project}/{repo}/raw/{rev}/{*path}", get(repo::raw))
        .route("/{project}/{repo}/commit/{sha}", get(repo::commit))
        .route("/{project}/{repo}/info/refs", get(smart_http::handle))
        .route(
            "/{project}/{repo}/git-upload-pack",
            post(smart_http::handle),
        )
        .route(
            "/{project}/{repo}/git-receive-pack",
            post(smart_http::handle),
        )
        .fallback(|uri: http::Uri| async move {
            WebError::Missing(format!("no page at {}", bounded_path(uri.path())))
        })
        .layer(from_fn_with_state(state.clone(), csrf_and_headers))
        .layer(from_fn_with_state(
            state.clone(),
            crate::metrics::count_requests,
        ))
        .with_state(state)
}

async fn style_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/style.css"),
    )
}

async fn live_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/live.js"),
    )
}

async fn copy_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/copy.js"),
    )
}

/// The CSRF token forms must carry, put in request extensions by the
/// middleware: derived from the session cookie of a logged-in browser and
/// from the pre-session cookie of an anonymous one, so a token taken from
/// another session (or another browser) never matches.
#[derive(Clone)]
struct CsrfToken(String);

/// The client's address (the TCP peer; repohub does not trust forwarding
/// headers), for per-address rate limits.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub std::net::IpAddr);

/// Set on error responses by `WebError`, so the middleware can draw the
/// error page with the viewer's own header (who is logged in, log out) and
/// send "log in first" back to the page that asked for it.
#[derive(Clone, Debug)]
struct ErrorInfo {
    status: StatusCode,
    message: String,
    login_required: bool,
}

/// Gives every anonymous browser a pre-session cookie (what its CSRF token
/// is bound to) and every response the security headers: a CSP that allows
/// only our own scripts and styles (so even an escaping bug could not run
/// injected script), no sniffing, no framing. Error pages are drawn here,
/// with the viewer's header.
async fn csrf_and_headers(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let session = auth::cookie(req.headers(), SESSION_COOKIE)
        .filter(|t| auth::looks_like_token(t))
        .map(str::to_owned);
    let existing = auth::cookie(req.headers(), CSRF_COOKIE)
        .filter(|t| auth::looks_like_token(t))
        .map(str::to_owned);
    let (anon, fresh) = match existing {
        Some(t) => (t, false),
        None => (auth::new_token().unwrap_or_default(), true),
    };
    let bound_to = session.as_deref().unwrap_or(&anon);
    let token = if bound_to.is_empty() {
        String::new()
    } else {
        auth::csrf_token(bound_to)
    };
    req.extensions_mut().insert(CsrfToken(token.clone()));
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    req.extensions_mut().insert(ClientIp(ip));
    let return_to = (req.method() == http::Method::GET)
        .then(|| req.uri().path_and_query().map(|p| p.as_str().to_owned()))
        .flatten();
    let method = req.method().clone();
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && resp.extensions().get::<ErrorInfo>().is_none()
    {
        // The router's own 405 has an empty body. (axum adds the Allow
        // header outside this middleware, to this page as well.)
        let info = ErrorInfo {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!(
                "this address does not answer {method}{}",
                if method == http::Method::GET {
                    ": it is where a form sends what it posts"
                } else {
                    ""
                }
            ),
            login_required: false,
        };
        resp = error_page(&st, session.as_deref(), &token, info, None);
    } else if let Some(info) = resp.extensions_mut().remove::<ErrorInfo>() {
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        resp = error_page(&st, session.as_deref(), &token, info, return_to.as_deref());
        if let Some(v) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    let h = resp.headers_mut();
    if fresh && !anon.is_empty() {
        let secure = if st.secure_cookies { "; Secure" } else { "" };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{CSRF_COOKIE}={anon}; Path=/; HttpOnly; SameSite=Strict{secure}"
        )) {
            h.append(header::SET_COOKIE, v);
        }
    }
    // A handler's stricter policy (raw files: sandbox) wins.
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// The error page for `info`, with the header of whoever holds `session`;
/// "log in first" is a redirect to the login page that comes back to
/// `return_to`.
fn error_page(
    st: &AppState,
    session: Option<&str>,
    csrf: &str,
    info: ErrorInfo,
    return_to: Option<&str>,
) -> Response {
    if info.login_required {
        let to = match return_to.filter(|p| safe_return_to(p)) {
            Some(p) => format!("/login?next={}", enc(p)),
            None => "/login".to_owned(),
        };
        return Redirect::to(&to).into_response();
    }
    let user = session_user(st, session.map(auth::sha256_hex).as_deref());
    let page = pages::ErrorPage {
        title: info.status.canonical_reason().unwrap_or("error").to_owned(),
        nav: nav_for(user.as_ref(), csrf, st.open_signup, return_to),
        status: info.status.as_u16(),
        message: info.message.clone(),
    };
    match page.render() {
        Ok(html) => (info.status, Html(html)).into_response(),
        Err(_) => (info.status, info.message).into_response(),
    }
}

/// The logged-in user of a session (by the hash of its cookie), with the
/// configured admin made an admin.
fn session_user(st: &AppState, session_hash: Option<&str>) -> Option<User> {
    let mut user = session_hash.and_then(|h| st.db.session_user(h).ok().flatten());
    if let (Some(u), Some(admin)) = (&mut user, &st.admin) {
        u.admin |= u.name == **admin;
    }
    user
}

/// The page header for `user`: the handlers' (through [`Viewer::nav`]) and
/// the error pages' alike.
fn nav_for(user: Option<&User>, csrf: &str, signup_open: bool, here: Option<&str>) -> pages::Nav {
    pages::Nav {
        user: user.map(|u| u.name.clone()),
        csrf: csrf.to_owned(),
        signup_open,
        may_create: user.is_some_and(|u| u.admin || u.may_create_projects),
        admin: user.is_some_and(|u| u.admin),
        login_next: login_next(here),
    }
}

/// The `next` value (encoded) the "Log in" link carries: the page being
/// shown, unless that is the login or signup page itself or not a safe path.
fn login_next(here: Option<&str>) -> String {
    match here {
        Some(p)
            if safe_return_to(p)
                && p != "/"
                && !p.starts_with("/login")
                && !p.starts_with("/signup") =>
        {
            enc(p)
        }
        _ => String::new(),
    }
}

/// A request path short enough to quote in a message.
fn bounded_path(p: &str) -> String {
    match p.char_indices().nth(200) {
        None => p.to_owned(),
        Some((i, _)) => format!("{}…", &p[..i]),
    }
}

/// A place on this site to go back to after logging in: a path, never
/// another origin (`//evil`, `/\\evil`) and nothing a header could not
/// carry.
pub fn safe_return_to(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && !p.starts_with("/\\")
        && p.len() <= 2048
        && p.bytes().all(|b| b.is_ascii_graphic())
}

/// What every form handler takes: the state, who is posting and the form.
/// The handler checks the form's CSRF token itself, once it has checked who
/// may post, so refusals keep their order (login, then access, then CSRF).
pub(super) struct Post<T> {
    pub(super) st: AppState,
    pub(super) v: Viewer,
    pub(super) form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for Post<T> {
    type Rejection = Response;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let v = match Viewer::from_request_parts(&mut parts, st).await {
            Ok(v) => v,
            Err(never) => match never {},
        };
        let req = Request::from_parts(parts, body);
        // A form that cannot be read gets the error page too, saying why.
        let Form(form) = Form::<T>::from_request(req, st).await.map_err(|e| {
            WebError::BadRequest(format!("the form could not be read: {}", e.body_text()))
                .into_response()
        })?;
        Ok(Post {
            st: st.clone(),
            v,
            form,
        })
    }
}

/// A form that carries only its CSRF token (log out, delete a token, run
/// autonix).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct CsrfForm {
    csrf: String,
}

/// A form with its CSRF token and one `name` (a new repository, a new
/// token).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct NameForm {
    csrf: String,
    name: String,
}

/// Who is looking: the logged-in user (if any), the CSRF token to embed,
/// and the client's address.
pub struct Viewer {
    pub user: Option<User>,
    pub csrf: String,
    session_hash: Option<String>,
    pub ip: std::net::IpAddr,
    signup_open: bool,
    /// The page being shown (GET only), for the "Log in" link to return to.
    here: Option<String>,
}

/// By hand: the CSRF token and the session hash are credentials, so they are
/// redacted (the session shows only whether there is one).
impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("user", &self.user)
            .field("ip", &self.ip)
            .field("csrf", &"<redacted>")
            .field(
                "session_hash",
                &self.session_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Infallible> {
        let csrf = parts
            .extensions
            .get::<CsrfToken>()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        let session_hash = auth::cookie(&parts.headers, SESSION_COOKIE)
            .filter(|t| auth::looks_like_token(t))
            .map(auth::sha256_hex);
        let user = session_user(st, session_hash.as_deref());
        let here = (parts.method == http::Method::GET)
            .then(|| parts.uri.path_and_query().map(|p| p.as_str().to_owned()))
            .flatten();
        let ip = parts
            .extensions
            .get::<ClientIp>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0);
        Ok(Viewer {
            user,
            csrf,
            session_hash,
            ip,
            signup_open: st.open_signup,
            here,
        })
    }
}

impl Viewer {
    pub fn nav(&self) -> pages::Nav {
        nav_for(
            self.user.as_ref(),
            &self.csrf,
            self.signup_open,
            self.here.as_deref(),
        )
    }

    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.admin)
    }

    /// The form's token must be the one of this browser's session.
    pub fn check_csrf(&self, form_token: &str) -> Result<(), WebError> {
        if self.csrf.is_empty()
            || !commands::auth::ct_eq(self.csrf.as_bytes(), form_token.as_bytes())
        {
            return Err(WebError::Csrf);
        }
        Ok(())
    }

    pub fn require_user(&self) -> Result<&User, WebError> {
        self.user.as_ref().ok_or(WebError::LoginRequired)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("page not found")]
    NotFound,
    /// A 404 that says what is missing.
    #[error("{0}")]
    Missing(String),
    /// A service behind the page (ci_service) is down or answered
    /// nonsense: 502 with the reason.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("log in first")]
    LoginRequired,
    #[error("{0}")]
    Forbidden(String),
    #[error("invalid or missing CSRF token; reload the page and try again")]
    Csrf,
    #[error("payload too large: {0}")]
    TooLarge(String),
    #[error(transparent)]
    Guard(#[from] crate::guard::GuardError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for WebError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict(what) => WebError::BadRequest(format!("{what} already exists")),
            e => WebError::Internal(commands::report::error_chain(&e)),
        }
    }
}

impl From<GitError> for WebError {
    fn from(e: GitError) -> Self {
        match e {
            GitError::NotFound => WebError::NotFound,
            GitError::BadInput(n) => WebError::BadRequest(n.to_string()),
            // What the pushed tree holds is the pusher's doing: say why.
            e @ GitError::Export(_) => WebError::BadRequest(commands::report::error_chain(&e)),
            e => WebError::Internal(commands::report::error_chain(&e)),
        }
    }
}

impl From<auth::AuthError> for WebError {
    fn from(e: auth::AuthError) -> Self {
        WebError::Internal(e.to_string())
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> Self {
        WebError::Internal(format!("template: {e}"))
    }
}

/// The page is drawn by the middleware (which knows the viewer); the
/// response carries what it needs, and a plain-text body should it be
/// served without the middleware.
impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        use crate::guard::GuardError;
        let mut retry_after = None;
        let status = match &self {
            WebError::NotFound | WebError::Missing(_) => StatusCode::NOT_FOUND,
            WebError::Unavailable(_) => StatusCode::BAD_GATEWAY,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::LoginRequired => StatusCode::SEE_OTHER,
            WebError::Forbidden(_) | WebError::Csrf => StatusCode::FORBIDDEN,
            WebError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WebError::Guard(GuardError::Limited(d)) => {
                retry_after = Some(d.as_secs().max(1));
                StatusCode::TOO_MANY_REQUESTS
            }
            WebError::Guard(GuardError::Busy) => {
                retry_after = Some(5);
                StatusCode::SERVICE_UNAVAILABLE
            }
            WebError::Guard(GuardError::Join) | WebError::Internal(_) => {
                tracing::error!(error = %self, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let login_required = matches!(self, WebError::LoginRequired);
        let mut resp = if login_required {
            Redirect::to("/login").into_response()
        } else {
            (status, self.to_string()).into_response()
        };
        if let Some(s) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp.extensions_mut().insert(ErrorInfo {
            status,
            message: self.to_string(),
            login_required,
        });
        resp
    }
}

pub type WebResult = Result<Response, WebError>;

pub fn render<T: Template>(t: &T) -> WebResult {
    Ok(Html(t.render()?).into_response())
}

pub fn render_status<T: Template>(status: StatusCode, t: &T) -> WebResult {
    Ok((status, Html(t.render()?)).into_response())
}

/// A project's one-field form (`form`) drawn again with `error` and the
/// `value` typed, as a 400.
fn form_again(
    v: &Viewer,
    project: &str,
    form: &'static pages::OneField,
    value: &str,
    error: String,
) -> WebResult {
    render_status(
        StatusCode::BAD_REQUEST,
        &pages::FormPage {
            title: format!("{} {project}", form.heading),
            nav: v.nav(),
            project: project.to_owned(),
            form,
            error,
            value: value.to_owned(),
        },
    )
}

/// Runs blocking work (git2, argon2) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
}

/// Percent-encoding for one URL path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Encodes each component of a slash-separated path.
pub fn enc_path(p: &str) -> String {
    p.split('/').map(enc).collect::<Vec<_>>().join("/")
}

/// `http://<host>` from the request's Host header, for clone URLs shown to
/// the same client; anything odd falls back to localhost.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// A blob or file size for the pages, with the same units as `pcr`.
pub fn human_size(n: usize) -> String {
    commands::model::human_bytes(n as u64)
}

pub fn session_cookie(token: &str, secure: bool) -> String {
    let s = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{s}",
        SESSION_TTL_MS / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(enc("a b/<c>"), "a%20b%2F%3Cc%3E");
        assert_eq!(enc_path("src/a b.rs"), "src/a%20b.rs");
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(50 * 1024 * 1024), "50.0 MiB");
    }

    #[test]
    fn return_to_stays_on_this_site() {
        assert!(safe_return_to("/p/-/jobs/3?x=1"));
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil",
            "p",
            "/a\nb",
            "/a b",
        ] {
            assert!(!safe_return_to(bad), "{bad}");
        }
    }

    #[test]
    fn base_url_refuses_odd_hosts() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(base_url(&h), "http://127.0.0.1:8080");
        h.insert(header::HOST, HeaderValue::from_static("evil\"><script>"));
        assert_eq!(base_url(&h), "http://localhost");
    }
}
