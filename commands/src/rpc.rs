//! Cap'n Proto RPC plumbing shared by every service and client: serve a
//! bootstrap capability on a bound TCP listener, and connect to one.
//!
//! capnp-rpc objects are `!Send`, so both sides run on a tokio `LocalSet`
//! (capnp-rpc's own examples do the same); callers must be inside one.

use std::net::SocketAddr;
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

/// Limits applied to every incoming message: a hostile peer cannot make us
/// walk more than 64 Mi words or nest deeper than 64 levels.
pub fn reader_options() -> capnp::message::ReaderOptions {
    let mut o = capnp::message::ReaderOptions::new();
    o.traversal_limit_in_words(Some(64 * 1024 * 1024));
    o.nesting_limit(64);
    o
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {addr}")]
    Connect { addr: String, source: std::io::Error },
    #[error("timed out connecting to {addr} after {secs}s")]
    Timeout { addr: String, secs: u64 },
    #[error("cannot resolve {addr}")]
    Resolve { addr: String, source: std::io::Error },
}

/// Accepts connections until `shutdown` fires; each connection gets its own
/// RpcSystem whose bootstrap capability is `bootstrap`. Must run inside a
/// `LocalSet`.
pub async fn serve(listener: TcpListener, bootstrap: capnp::capability::Client, shutdown: CancellationToken) {
    serve_per_connection(listener, move |_, _| bootstrap.clone(), shutdown).await;
}

/// Like [`serve`], but asks `make_bootstrap(connection_number, peer)` for
/// each connection's bootstrap capability, so a server can tell its callers
/// apart (the control plane binds a worker id to the connection that
/// registered it). Connection numbers start at 1 and never repeat.
pub async fn serve_per_connection(
    listener: TcpListener,
    mut make_bootstrap: impl FnMut(u64, SocketAddr) -> capnp::capability::Client,
    shutdown: CancellationToken,
) {
    let mut next_conn: u64 = 0;
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
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.compat().split();
        let network = twoparty::VatNetwork::new(
            futures::io::BufReader::new(reader),
            futures::io::BufWriter::new(writer),
            rpc_twoparty_capnp::Side::Server,
            reader_options(),
        );
        next_conn += 1;
        let system = RpcSystem::new(Box::new(network), Some(make_bootstrap(next_conn, peer)));
        let token = shutdown.clone();
        tokio::task::spawn_local(async move {
            tokio::select! {
                r = system => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "rpc connection ended with error");
                },
                () = token.cancelled() => {}
            }
        });
    }
}

/// A connected client plus the handle that ends the connection when dropped.
pub struct Connection<T> {
    pub client: T,
    disconnector: Option<capnp_rpc::Disconnector<rpc_twoparty_capnp::Side>>,
}

impl<T> Connection<T> {
    /// Closes the connection gracefully.
    pub async fn close(mut self) {
        if let Some(d) = self.disconnector.take() {
            let _ = d.await;
        }
    }
}

/// Resolves `addr` ("host:port") to its first socket address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, RpcError> {
    let mut it = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| RpcError::Resolve { addr: addr.to_owned(), source })?;
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
        Err(_) => return Err(RpcError::Timeout { addr: addr.to_owned(), secs: timeout.as_secs() }),
        Ok(Err(source)) => return Err(RpcError::Connect { addr: addr.to_owned(), source }),
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
    Ok(Connection { client, disconnector: Some(disconnector) })
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
