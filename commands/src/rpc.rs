//! Cap'n Proto RPC plumbing shared by every service and client: serve a
//! bootstrap capability on a bound TCP listener, connect to one, and log in
//! (`connect_master`, `connect_worker`: the bootstrap of every Procurator
//! server is a login capability, see `auth`). Also the limits every
//! connection gets: message size and depth, connections per server, calls
//! in flight per connection.
//!
//! capnp-rpc objects are `!Send`, so both sides run on a tokio `LocalSet`
//! (capnp-rpc's own examples do the same); callers must be inside one.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use crate::master_capnp::{master, master_login};
use crate::worker_capnp::{worker, worker_login};

/// The largest message either side reads, in 8-byte words (128 MiB): the
/// reader refuses a larger segment table before allocating, so this is both
/// the message size and the traversal bound. 100,000 VmSpecs fit ~20 times.
pub const MAX_MESSAGE_WORDS: usize = 16 * 1024 * 1024;

/// Connections one server holds at once; more are closed at accept (with a
/// warning) so a flood of idle sockets cannot exhaust file descriptors.
pub const MAX_CONNECTIONS: usize = 16_384;

/// The listen backlog of [`bind`]: connections the kernel completes before
/// the server accepts them. The default (128) overflows under a burst of
/// connections whenever the server is off the CPU for a moment, and an
/// overflow drops the SYN of whoever comes next (a worker included), who
/// then waits a whole second to retry. The kernel caps it at somaxconn.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a server's listener on `addr` ("host:port") with
/// [`LISTEN_BACKLOG`].
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address to listen on")
    }))
}

/// Limits applied to every incoming message: a hostile peer cannot make us
/// read or walk more than [`MAX_MESSAGE_WORDS`] or nest deeper than 64 levels.
pub fn reader_options() -> capnp::message::ReaderOptions {
    let mut o = capnp::message::ReaderOptions::new();
    o.traversal_limit_in_words(Some(MAX_MESSAGE_WORDS));
    o.nesting_limit(64);
    o
}

/// Counts the calls in flight on one connection (or one session) and refuses
/// a call beyond `max` with an `overloaded` exception: one client cannot
/// queue unbounded work (long-polls, VM operations) on a server.
#[derive(Clone, Debug)]
pub struct InFlight {
    n: Rc<Cell<u32>>,
    max: u32,
}

/// Held while a call runs; dropping it frees the slot.
#[derive(Debug)]
pub struct InFlightGuard(Rc<Cell<u32>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl InFlight {
    pub fn new(max: u32) -> Self {
        InFlight {
            n: Rc::new(Cell::new(0)),
            max,
        }
    }

    /// A slot for one call, or the exception the caller returns.
    pub fn enter(&self) -> Result<InFlightGuard, capnp::Error> {
        if self.n.get() >= self.max {
            return Err(capnp::Error::overloaded(format!(
                "too many calls in flight on this connection (limit {}); wait for answers before sending more",
                self.max
            )));
        }
        self.n.set(self.n.get() + 1);
        Ok(InFlightGuard(Rc::clone(&self.n)))
    }

    pub fn current(&self) -> u32 {
        self.n.get()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {addr} after {secs}s")]
    Timeout { addr: String, secs: u64 },
    #[error("{addr} is a URL, but a host:port address is expected (drop the scheme: {hint})")]
    Url { addr: String, hint: String },
    #[error("{addr} is not a Procurator {expected} ({why})")]
    NotProcurator {
        addr: String,
        expected: &'static str,
        why: &'static str,
    },
    #[error("{addr} is a {actual}, not a {expected}")]
    WrongService {
        addr: String,
        actual: &'static str,
        expected: &'static str,
    },
    #[error("cannot resolve {addr}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("login to {addr} failed: {}", source.extra)]
    Login { addr: String, source: capnp::Error },
    #[error("login to {addr} timed out after {secs}s")]
    LoginTimeout { addr: String, secs: u64 },
    #[error("{addr} refused the login: {message}")]
    Refused { addr: String, message: String },
}

/// How long a connection may stay open without a successful login.
pub const DEFAULT_LOGIN_DEADLINE: Duration = Duration::from_secs(10);

/// Connections that have not logged in yet, held at once: when a new one
/// arrives beyond this, the oldest still waiting is closed. Only the
/// unauthenticated pool is bounded this way, so a flood of idle sockets
/// evicts its own sockets, never a logged-in worker; and a new worker's
/// connection, being the newest, is the last one a flood evicts.
pub const MAX_WAITING_FOR_LOGIN: usize = 1024;

/// Bounds on the connections of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once (logged in or not); more are closed at accept.
    pub max_connections: usize,
    /// Connections not logged in yet; see [`MAX_WAITING_FOR_LOGIN`].
    pub max_waiting: usize,
    /// A connection without a successful login after this long is closed.
    pub login_deadline: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: MAX_CONNECTIONS,
            max_waiting: MAX_WAITING_FOR_LOGIN,
            login_deadline: DEFAULT_LOGIN_DEADLINE,
        }
    }
}

/// One accepted connection, as its bootstrap capability sees it: its
/// number, its peer, whether it has logged in, and when it closes. Logins on
/// it take turns ([`Conn::login_turn`]), so pipelined guesses on one
/// connection are answered one after the other.
#[derive(Clone, Debug)]
pub struct Conn(Rc<ConnInner>);

#[derive(Debug)]
struct ConnInner {
    id: u64,
    peer: SocketAddr,
    logged_in: Cell<bool>,
    /// Cancelled when the connection's task ends, for whatever reason.
    closed: CancellationToken,
    /// Cancelled by the accept loop to close a connection still waiting to
    /// log in when newer ones need the room.
    evict: CancellationToken,
    turn: tokio::sync::Mutex<()>,
}

impl Conn {
    fn new(id: u64, peer: SocketAddr) -> Conn {
        Conn(Rc::new(ConnInner {
            id,
            peer,
            logged_in: Cell::new(false),
            closed: CancellationToken::new(),
            evict: CancellationToken::new(),
            turn: tokio::sync::Mutex::new(()),
        }))
    }

    /// Numbers the connections of one server, from 1, never repeating.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// Called on a successful login: the connection no longer counts
    /// against the waiting pool and its login deadline no longer applies.
    pub fn mark_logged_in(&self) {
        self.0.logged_in.set(true);
    }

    pub fn is_logged_in(&self) -> bool {
        self.0.logged_in.get()
    }

    /// A token cancelled when the connection ends.
    pub fn closed(&self) -> CancellationToken {
        self.0.closed.clone()
    }

    /// Waits for this connection's earlier logins to be answered: a refused
    /// login holds its turn through its delay.
    pub async fn login_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.turn.lock().await
    }
}

/// Accepts connections until `shutdown` fires; each connection gets its own
/// RpcSystem whose bootstrap capability is `bootstrap`. Must run inside a
/// `LocalSet`. The bootstrap must call [`Conn::mark_logged_in`] for the
/// connection to outlive its login deadline, so this is for servers
/// without logins: every connection counts as logged in.
pub async fn serve(
    listener: TcpListener,
    bootstrap: capnp::capability::Client,
    shutdown: CancellationToken,
) {
    let make = move |c: &Conn| {
        c.mark_logged_in();
        bootstrap.clone()
    };
    serve_per_connection(listener, make, shutdown).await;
}

/// Like [`serve`], but asks `make_bootstrap(connection)` for each
/// connection's bootstrap capability, so a server can tell its callers
/// apart (the control plane binds a worker id to the connection that
/// registered it), with the default [`ConnLimits`].
pub async fn serve_per_connection(
    listener: TcpListener,
    make_bootstrap: impl FnMut(&Conn) -> capnp::capability::Client,
    shutdown: CancellationToken,
) {
    serve_limited(listener, make_bootstrap, ConnLimits::default(), shutdown).await;
}

/// Like [`serve_per_connection`] within `limits`: a connection beyond
/// `max_connections` is closed as soon as it is accepted; one beyond
/// `max_waiting` closes the oldest connection still waiting to log in; and
/// a connection not logged in after `login_deadline` is closed.
pub async fn serve_limited(
    listener: TcpListener,
    mut make_bootstrap: impl FnMut(&Conn) -> capnp::capability::Client,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let mut next_conn: u64 = 0;
    let open = Rc::new(Cell::new(0usize));
    // Oldest first; entries that logged in or closed are dropped lazily.
    let mut waiting: std::collections::VecDeque<Conn> = std::collections::VecDeque::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.get() >= limits.max_connections {
            tracing::warn!(%peer, limit = limits.max_connections, "too many open connections; closing the new one");
            drop(stream);
            continue;
        }
        make_room(&mut waiting, limits.max_waiting);
        next_conn += 1;
        let conn = Conn::new(next_conn, peer);
        let bootstrap = make_bootstrap(&conn);
        if !conn.is_logged_in() {
            waiting.push_back(conn.clone());
        }
        let token = shutdown.clone();
        open.set(open.get() + 1);
        let slot = ConnSlot(Rc::clone(&open), conn.closed());
        let deadline = limits.login_deadline;
        tokio::task::spawn_local(async move {
            let _slot = slot;
            let ended = async {
                tokio::select! {
                    () = token.cancelled() => {}
                    () = conn.0.evict.cancelled() => {
                        tracing::debug!(%peer, "closed a connection waiting to log in: newer ones needed the room");
                    }
                    () = login_deadline(&conn, deadline) => {
                        tracing::info!(%peer, secs = deadline.as_secs_f32(), "closed a connection that did not log in in time");
                    }
                }
            };
            tokio::pin!(ended);
            // An idle connection costs a socket and this task, nothing
            // more: the RPC machinery is built once the peer sends a byte.
            let mut first = [0u8; 1];
            tokio::select! {
                r = stream.peek(&mut first) => if !matches!(r, Ok(1..)) { return },
                () = &mut ended => return,
            }
            let _ = stream.set_nodelay(true);
            let (reader, writer) = stream.compat().split();
            let network = twoparty::VatNetwork::new(
                futures::io::BufReader::new(reader),
                futures::io::BufWriter::new(writer),
                rpc_twoparty_capnp::Side::Server,
                reader_options(),
            );
            let system = RpcSystem::new(Box::new(network), Some(bootstrap));
            tokio::select! {
                r = system => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "rpc connection ended with error");
                },
                () = &mut ended => {}
            }
        });
    }
}

/// Resolves when `deadline` has passed without a login; never otherwise.
async fn login_deadline(conn: &Conn, deadline: Duration) {
    tokio::time::sleep(deadline).await;
    if conn.is_logged_in() {
        std::future::pending::<()>().await;
    }
}

/// Evicts the oldest connections still waiting to log in until one more
/// fits within `max_waiting`; forgets entries that logged in or closed.
fn make_room(waiting: &mut std::collections::VecDeque<Conn>, max_waiting: usize) {
    let still_waiting = |c: &Conn| !c.is_logged_in() && !c.0.closed.is_cancelled();
    if waiting.len() >= max_waiting {
        waiting.retain(still_waiting);
    }
    while waiting.len() >= max_waiting.max(1) {
        if let Some(old) = waiting.pop_front()
            && still_waiting(&old)
        {
            old.0.evict.cancel();
        }
    }
}

/// Frees a connection slot and marks the connection closed when its task ends.
struct ConnSlot(Rc<Cell<usize>>, CancellationToken);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
        self.1.cancel();
    }
}

/// A connected client plus the handle that ends the connection when dropped.
pub struct Connection<T> {
    pub client: T,
    disconnector: Option<capnp_rpc::Disconnector<rpc_twoparty_capnp::Side>>,
}

// By hand: neither the capability nor the disconnector is `Debug`.
impl<T> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("connected", &self.disconnector.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Connection<T> {
    /// The same connection, now carrying the capability a login returned.
    fn with_client<U>(self, client: U) -> Connection<U> {
        Connection {
            client,
            disconnector: self.disconnector,
        }
    }

    /// Separates the capability from the handle that owns the connection.
    pub fn split(self) -> (T, Connection<()>) {
        (
            self.client,
            Connection {
                client: (),
                disconnector: self.disconnector,
            },
        )
    }

    /// Closes the connection gracefully.
    pub async fn close(mut self) {
        if let Some(d) = self.disconnector.take() {
            let _ = d.await;
        }
    }
}

/// Resolves `addr` ("host:port") to its first socket address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, RpcError> {
    // A URL where host:port is expected is a common slip (the HTTP services
    // take URLs); name the fix instead of failing to resolve "http".
    if let Some((_, rest)) = addr.split_once("://") {
        return Err(RpcError::Url {
            addr: addr.to_owned(),
            hint: rest.trim_end_matches('/').to_owned(),
        });
    }
    let mut it = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| RpcError::Resolve {
            addr: addr.to_owned(),
            source,
        })?;
    it.next().ok_or_else(|| RpcError::Resolve {
        addr: addr.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    })
}

/// Connects to `addr` and returns its bootstrap capability as `T`. Must run
/// inside a `LocalSet`; the connection's RpcSystem is spawned onto it.
pub async fn connect<T>(addr: &str, timeout: Duration) -> Result<Connection<T>, RpcError>
where
    T: capnp::capability::FromClientHook,
{
    let sock = resolve(addr).await?;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(sock)).await {
        Err(_) => {
            return Err(RpcError::Timeout {
                addr: addr.to_owned(),
                secs: timeout.as_secs(),
            });
        }
        Ok(Err(source)) => {
            return Err(RpcError::Connect {
                addr: addr.to_owned(),
                source,
            });
        }
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.compat().split();
    let network = Box::new(twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        rpc_twoparty_capnp::Side::Client,
        reader_options(),
    ));
    let mut system = RpcSystem::new(network, None);
    let client: T = system.bootstrap(rpc_twoparty_capnp::Side::Server);
    let disconnector = system.get_disconnector();
    tokio::task::spawn_local(async move {
        if let Err(e) = system.await {
            tracing::debug!(error = %e, "rpc client connection ended with error");
        }
    });
    Ok(Connection {
        client,
        disconnector: Some(disconnector),
    })
}

/// What a login returned besides the capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub role: crate::auth::Role,
    /// The worker id a worker token is bound to.
    pub worker_id: Option<String>,
}

fn login_failed(addr: &str, source: capnp::Error) -> RpcError {
    RpcError::Login {
        addr: addr.to_owned(),
        source,
    }
}

/// The first four bytes of an HTTP answer ("HTTP") read as a Cap'n Proto
/// frame header give this segment count (the header stores count − 1).
const HTTP_AS_SEGMENT_COUNT: &str = "1347703881";

/// What a failed login says about the peer. A server that is not Cap'n
/// Proto answers bytes that do not frame (an HTTP server answers "HTTP/1.1
/// 400", read as a huge segment count); the other Procurator service
/// answers the login call with "unimplemented", its bootstrap interface
/// being the other login. Both are named instead of capnp's wording.
fn classify_login_failure(
    addr: &str,
    expected: &'static str,
    other: &'static str,
    source: capnp::Error,
) -> RpcError {
    let text = &source.extra;
    if text.contains(HTTP_AS_SEGMENT_COUNT) {
        return RpcError::NotProcurator {
            addr: addr.to_owned(),
            expected,
            why: "it answered HTTP",
        };
    }
    if text.contains("Too many segments")
        || text.contains("Message ends prematurely")
        || text.contains("too large")
    {
        return RpcError::NotProcurator {
            addr: addr.to_owned(),
            expected,
            why: "it does not speak Cap'n Proto",
        };
    }
    if source.kind == capnp::ErrorKind::Unimplemented {
        return RpcError::WrongService {
            addr: addr.to_owned(),
            actual: other,
            expected,
        };
    }
    login_failed(addr, source)
}

/// Awaits a login reply within `timeout`.
async fn await_login<T>(
    addr: &str,
    (expected, other): (&'static str, &'static str),
    timeout: Duration,
    promise: capnp::capability::Promise<capnp::capability::Response<T>, capnp::Error>,
) -> Result<capnp::capability::Response<T>, RpcError>
where
    T: capnp::traits::Owned,
{
    match tokio::time::timeout(timeout, promise).await {
        Err(_) => Err(RpcError::LoginTimeout {
            addr: addr.to_owned(),
            secs: timeout.as_secs(),
        }),
        Ok(r) => r.map_err(|e| classify_login_failure(addr, expected, other, e)),
    }
}

fn refused(addr: &str, f: crate::convert::RpcFailure) -> RpcError {
    RpcError::Refused {
        addr: addr.to_owned(),
        message: f.message,
    }
}

fn convert_failed(addr: &str, e: crate::convert::ConvertError) -> RpcError {
    login_failed(addr, capnp::Error::failed(e.to_message()))
}

/// The role a session reply names, refused when this build does not know it.
fn session_role(
    addr: &str,
    role: Result<crate::common_capnp::Role, capnp::NotInSchema>,
) -> Result<crate::auth::Role, RpcError> {
    role.map(crate::auth::Role::from_capnp)
        .map_err(|e| convert_failed(addr, crate::convert::ConvertError::UnknownEnum(e.0)))
}

/// What a login gives: the connection carrying the capability, and the session.
pub type Login<T> = Result<(Connection<T>, SessionInfo), RpcError>;

/// Connects with `$login` (a `*_login::Client`), sends `token` and returns
/// the capability `$get` takes from the session, with the session's role and
/// the worker id `$worker_id` reads from it. A macro because the
/// master and worker login interfaces are distinct generated types with no
/// common trait to be generic over.
macro_rules! login {
    // A session not bound to a worker id.
    ($addr:ident, $timeout:ident, $token:ident, $login:ty, $kinds:expr, $get:ident) => {
        login!($addr, $timeout, $token, $login, $kinds, $get, |_session| {
            None
        })
    };
    ($addr:ident, $timeout:ident, $token:ident, $login:ty, $kinds:expr, $get:ident, |$session:ident| $worker_id:expr) => {{
        let conn = connect::<$login>($addr, $timeout).await?;
        let mut req = conn.client.login_request();
        req.get().set_token($token);
        let reply = await_login($addr, $kinds, $timeout, req.send().promise).await?;
        let reply = reply.get().map_err(|e| login_failed($addr, e))?;
        let $session = crate::convert::result_from_capnp(
            reply.get_result().map_err(|e| login_failed($addr, e))?,
        )
        .map_err(|e| convert_failed($addr, e))?
        .map_err(|f| refused($addr, f))?;
        let capability = $session.$get().map_err(|e| login_failed($addr, e))?;
        let info = SessionInfo {
            role: session_role($addr, $session.get_role())?,
            worker_id: $worker_id,
        };
        Ok((conn.with_client(capability), info))
    }};
}

/// Connects to a control plane and logs in with `token` (empty when the
/// caller has none: a server without a token file accepts that). The one
/// way every client reaches `Master`.
pub async fn connect_master(addr: &str, timeout: Duration, token: &str) -> Login<master::Client> {
    login!(
        addr,
        timeout,
        token,
        master_login::Client,
        ("control plane", "worker"),
        get_master,
        |session| crate::convert::text(session.get_worker_id())
            .map_err(|e| convert_failed(addr, e))
            .map(|id| Some(id).filter(|s| !s.is_empty()))?
    )
}

/// Connects to a worker and logs in with `token` (see [`connect_master`]).
pub async fn connect_worker(addr: &str, timeout: Duration, token: &str) -> Login<worker::Client> {
    login!(
        addr,
        timeout,
        token,
        worker_login::Client,
        ("worker", "control plane"),
        get_worker
    )
}

/// Runs `f` on a fresh current-thread runtime inside a `LocalSet`: what a
/// CLI `main` or a non-RPC thread uses to make Cap'n Proto calls.
pub fn block_on_local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_failures_name_the_peer_that_is_not_what_was_expected() {
        let say = |e: capnp::Error| {
            classify_login_failure("h:1", "control plane", "worker", e).to_string()
        };
        // What capnp reports when an HTTP server answers the bootstrap.
        let http = capnp::Error::failed(format!("Too many segments: {HTTP_AS_SEGMENT_COUNT}"));
        assert_eq!(
            say(http),
            "h:1 is not a Procurator control plane (it answered HTTP)"
        );
        let other = capnp::Error::failed("Too many segments: 70000".into());
        assert_eq!(
            say(other),
            "h:1 is not a Procurator control plane (it does not speak Cap'n Proto)"
        );
        let unimplemented = capnp::Error::unimplemented("Method not implemented.".into());
        assert_eq!(say(unimplemented), "h:1 is a worker, not a control plane");
        // Anything else keeps capnp's words.
        let gone = capnp::Error::disconnected("Peer disconnected.".into());
        assert_eq!(say(gone), "login to h:1 failed: Peer disconnected.");
    }

    #[tokio::test]
    async fn a_url_for_an_address_gets_the_address_to_use() {
        let e = resolve("http://127.0.0.1:7000/").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "http://127.0.0.1:7000/ is a URL, but a host:port address is expected (drop the scheme: 127.0.0.1:7000)"
        );
    }

    #[test]
    fn a_message_over_the_size_limit_is_refused_before_its_body_is_read() {
        // Segment table: one segment of MAX + 1 words; no body follows.
        let mut header = Vec::new();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&u32::try_from(MAX_MESSAGE_WORDS + 1).unwrap().to_le_bytes());
        let Err(e) = capnp::serialize::read_message(&mut header.as_slice(), reader_options())
        else {
            panic!("an oversized message was accepted");
        };
        assert!(
            matches!(e.kind, capnp::ErrorKind::MessageTooLarge(_)),
            "{e}"
        );
        // At the limit it is accepted as far as the header goes (then the
        // missing body is what fails).
        let mut header = Vec::new();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        let Err(e) = capnp::serialize::read_message(&mut header.as_slice(), reader_options())
        else {
            panic!("a message without a body was accepted");
        };
        assert!(
            !matches!(e.kind, capnp::ErrorKind::MessageTooLarge(_)),
            "{e}"
        );
    }

    #[test]
    fn in_flight_slots_are_counted_and_freed() {
        let f = InFlight::new(2);
        let a = f.enter().unwrap();
        let b = f.enter().unwrap();
        let e = f.enter().unwrap_err();
        assert_eq!(e.kind, capnp::ErrorKind::Overloaded);
        assert!(e.extra.contains("limit 2"), "{}", e.extra);
        drop(a);
        assert_eq!(f.current(), 1);
        let _c = f.enter().unwrap();
        drop(b);
        assert_eq!(f.current(), 1);
    }
}
