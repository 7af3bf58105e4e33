//! Serves a minimal `WorkerApi` over real TCP on loopback through the
//! `Worker` adapter (`service::worker`) and calls it with `WorkerClient`, so
//! the shared plumbing every service uses (serve, connect, login, roles,
//! limits) is exercised end to end. Requests no domain type can express
//! (a bad name, an oversized field) are built by hand: they test the
//! adapter's decoding.

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use commands::auth::Authenticator;
use commands::client::{ClientError, WorkerClient};
use commands::convert::{ErrorCode, RpcFailure, result_from_capnp};
use commands::service::worker::{self as adapter, MAX_IN_FLIGHT, WorkerApi};
use commands::types::{LogTail, Resources, VmId, VmSpec, VmStatus, WorkerStatus};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";

/// Answers `read`, refuses every create, and holds `logs` until the test
/// ends (so calls stay in flight).
struct TestWorker;

impl WorkerApi for TestWorker {
    async fn read(&self) -> Result<WorkerStatus, RpcFailure> {
        Ok(WorkerStatus {
            worker_id: "w-1".parse().unwrap(),
            address: String::new(),
            capacity: Resources::default(),
            allocated: Resources::default(),
            labels: Default::default(),
            vm_count: 3,
            run_dir: String::new(),
            version: String::new(),
            uptime_ms: 0,
        })
    }

    async fn create_vm(&self, _: VmSpec) -> Result<VmStatus, RpcFailure> {
        Err(RpcFailure::new(
            ErrorCode::Internal,
            "test server creates nothing",
        ))
    }

    async fn logs(&self, _: VmId, _: u32) -> Result<LogTail, RpcFailure> {
        std::future::pending().await
    }
}

fn spec() -> VmSpec {
    testkit::fixtures::spec("web-0", "h")
}

/// Runs `test` against a `TestWorker` served with `auth` on a loopback
/// port (the address is its argument), then stops the server.
fn with_worker(auth: Authenticator, test: impl AsyncFnOnce(&str)) {
    commands::rpc::block_on_local(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        let api = Rc::new(TestWorker);
        tokio::task::spawn_local(adapter::serve(listener, api, auth, shutdown.clone()));
        test(&addr).await;
        shutdown.cancel();
    });
}

async fn connect(addr: &str, token: &str) -> Result<WorkerClient, ClientError> {
    WorkerClient::connect(addr, Duration::from_secs(5), token).await
}

/// Calls `probe` until it fails while `held` keeps its calls in flight
/// (not every held call reaches the server at once); returns that failure.
async fn first_refusal<T, E>(held: impl Future, mut probe: impl AsyncFnMut() -> Result<T, E>) -> E {
    let refusal = async {
        loop {
            match probe().await {
                Err(e) => break e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::select! {
        _ = held => panic!("a held call answered"),
        e = tokio::time::timeout(Duration::from_secs(5), refusal) => {
            e.expect("the limit was never reached")
        }
    }
}

#[test]
fn serve_and_connect_over_loopback() {
    with_worker(Authenticator::Open, async |addr| {
        let w = connect(addr, "").await.unwrap();
        let status = w.read().await.unwrap();
        assert_eq!(status.worker_id.as_str(), "w-1");
        assert_eq!(status.vm_count, 3);

        // A well-formed spec reaches the api, whose refusal comes back as data.
        let Err(ClientError::Refused(f)) = w.create_vm(&spec()).await else {
            panic!("expected an error as data");
        };
        assert_eq!(f.code, ErrorCode::Internal);
        assert_eq!(f.message, "test server creates nothing");
        w.close().await;

        // A bad spec is answered as error data naming the field.
        let (conn, _) = commands::rpc::connect_worker(addr, Duration::from_secs(5), "")
            .await
            .unwrap();
        let mut req = conn.client.create_vm_request();
        req.get().init_spec().set_name("Bad Name");
        let reply = req.send().promise.await.unwrap();
        let result = reply.get().unwrap().get_result().unwrap();
        let Err(err) = result_from_capnp(result).unwrap() else {
            panic!("expected an error as data");
        };
        assert!(err.message.contains("name"), "{err}");

        conn.close().await;
    });
}

#[test]
fn connect_to_closed_port_names_the_address() {
    commands::rpc::block_on_local(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = WorkerClient::connect(&addr, Duration::from_secs(2), "")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(&addr), "{err}");
    });
}

#[test]
fn connections_over_the_limit_are_closed_and_slots_come_back() {
    commands::rpc::block_on_local(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        let api = Rc::new(TestWorker);
        let auth = adapter::WorkerAuth::new(Authenticator::Open);
        let make =
            move |c: &commands::rpc::Conn| adapter::login_bootstrap(Rc::clone(&api), &auth, c);
        let limits = commands::rpc::ConnLimits {
            max_connections: 2,
            ..commands::rpc::ConnLimits::default()
        };
        tokio::task::spawn_local(commands::rpc::serve_limited(
            listener,
            make,
            limits,
            shutdown.clone(),
        ));
        let a = connect(&addr, "").await.unwrap();
        let b = connect(&addr, "").await.unwrap();
        a.read().await.unwrap();
        b.read().await.unwrap();
        // The third connection is accepted and closed at once: its login fails.
        let e = tokio::time::timeout(Duration::from_secs(5), connect(&addr, ""))
            .await
            .unwrap()
            .err()
            .unwrap();
        let ClientError::Connect(commands::rpc::RpcError::Login { source, .. }) = &e else {
            panic!("expected a failed login, got {e}");
        };
        assert_eq!(source.kind, capnp::ErrorKind::Disconnected, "{e}");
        // Closing one frees its slot for a new connection.
        a.close().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(d) = connect(&addr, "").await
                && d.read().await.is_ok()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
    });
}

#[test]
fn oversized_text_fields_are_refused_with_their_size() {
    with_worker(Authenticator::Open, async |addr| {
        let (conn, _) = commands::rpc::connect_worker(addr, Duration::from_secs(5), "")
            .await
            .unwrap();
        let mut req = conn.client.create_vm_request();
        let long = "x".repeat(commands::convert::MAX_TEXT as usize + 1);
        req.get().init_spec().set_cmdline(&long[..]);
        let reply = req.send().promise.await.unwrap();
        let err = result_from_capnp(reply.get().unwrap().get_result().unwrap())
            .unwrap()
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            "text field has 65537 bytes, more than the 65536 allowed"
        );
    });
}

#[test]
fn a_reader_may_read_but_not_change_and_a_bad_token_is_refused() {
    let tokens = format!("admin {ADMIN}\nreader {READER}\n");
    let auth = Authenticator::parse(&tokens, Path::new("tokens"), adapter::ROLES).unwrap();
    with_worker(auth, async |addr| {
        let reader = connect(addr, READER).await.unwrap();
        assert_eq!(reader.session().unwrap().role, commands::auth::Role::Reader);
        assert_eq!(reader.read().await.unwrap().vm_count, 3);
        let id = VmId::new_v7();
        let denied = |r: Result<_, ClientError>, what: &str| {
            let Err(ClientError::Refused(f)) = r else {
                panic!("a reader was allowed to {what}");
            };
            assert_eq!(f.code, ErrorCode::PermissionDenied);
            assert_eq!(f.message, format!("a reader token may not {what}"));
        };
        denied(reader.create_vm(&spec()).await.map(drop), "create VMs");
        denied(reader.delete_vm(&id).await, "delete VMs");
        denied(reader.pause_vm(&id).await.map(drop), "pause VMs");
        denied(reader.resume_vm(&id).await.map(drop), "resume VMs");

        // The admin's create reaches the api.
        let admin = connect(addr, ADMIN).await.unwrap();
        let Err(ClientError::Refused(f)) = admin.create_vm(&spec()).await else {
            panic!("expected the api's refusal");
        };
        assert_eq!(f.message, "test server creates nothing");

        let Err(ClientError::Connect(e)) = connect(addr, "not-a-token-at-all").await else {
            panic!("a bad token logged in");
        };
        assert!(matches!(e, commands::rpc::RpcError::Refused { .. }), "{e}");
    });
}

#[test]
fn calls_in_flight_are_limited_per_connection() {
    with_worker(Authenticator::Open, async |addr| {
        let w = connect(addr, "").await.unwrap();
        let id = VmId::new_v7();
        // `logs` never answers, so each call holds its slot while the
        // probe reads until the server refuses.
        let held = futures::future::join_all((0..MAX_IN_FLIGHT).map(|_| w.logs(&id, 0)));
        let e = first_refusal(held, async || w.read().await).await;
        let ClientError::Rpc(e) = e else {
            panic!("expected an overloaded exception, got {e}");
        };
        assert_eq!(e.kind, capnp::ErrorKind::Overloaded, "{e}");
        let limit = format!("too many calls in flight on this connection (limit {MAX_IN_FLIGHT})");
        assert!(e.extra.contains(&limit), "{}", e.extra);
        // Another connection has slots of its own.
        let other = connect(addr, "").await.unwrap();
        assert_eq!(other.read().await.unwrap().vm_count, 3);
    });
}

#[test]
fn logging_in_again_on_one_connection_buys_no_more_slots() {
    use commands::worker_capnp::{worker, worker_login};
    with_worker(Authenticator::Open, async |addr| {
        let conn = commands::rpc::connect::<worker_login::Client>(addr, Duration::from_secs(5))
            .await
            .unwrap();
        let login = async || -> worker::Client {
            let reply = conn.client.login_request().send().promise.await.unwrap();
            let result = reply.get().unwrap().get_result().unwrap();
            let session = result_from_capnp(result).unwrap().unwrap();
            session.get_worker().unwrap()
        };
        let (first, second) = (login().await, login().await);
        // The first session holds every slot with calls that never answer.
        let held = futures::future::join_all((0..MAX_IN_FLIGHT).map(|_| {
            let mut req = first.logs_request();
            req.get().set_id(VmId::new_v7().as_str());
            req.send().promise
        }));
        let e = first_refusal(held, async || second.read_request().send().promise.await).await;
        assert_eq!(e.kind, capnp::ErrorKind::Overloaded, "{e}");
        conn.close().await;
    });
}
