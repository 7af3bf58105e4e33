//! The Master server over real loopback TCP: long-poll wake-up on publish,
//! identity binding of worker ids to connections, refusal of bad input
//! without state change, getWorker proxying, and rescheduling away from a
//! silent worker.

use std::time::{Duration, Instant};

use commands::client::{ClientError, MasterClient};
use commands::convert::{ErrorCode, RpcFailure};
use commands::model::{Registration, WorkerMetricsView};
use commands::service::worker::{WorkerApi, WorkerCap};
use commands::types::{Labels, Resources, WorkerStatus};
use testkit::fixtures::spec;
use tokio_util::sync::CancellationToken;

/// A Worker capability that answers `read` with its id, so the test can
/// tell that getWorker reached the right worker through the master.
struct EchoWorker {
    id: String,
}

impl WorkerApi for EchoWorker {
    async fn read(&self) -> Result<WorkerStatus, RpcFailure> {
        Ok(WorkerStatus {
            worker_id: self.id.parse().unwrap(),
            address: "echo".into(),
            capacity: Resources::default(),
            allocated: Resources::default(),
            labels: Labels::new(),
            vm_count: 0,
            run_dir: String::new(),
            version: "test".into(),
            uptime_ms: 0,
        })
    }
}

fn reg(id: &str, addr: &str) -> Registration {
    testkit::fixtures::registration(id, addr.into(), 8, 4096)
}

fn code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Refused(f) => f.code,
        other => panic!("expected an error as data, got {other}"),
    }
}

async fn start(config: control_plane::Config) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    tokio::task::spawn_local(control_plane::run(config, listener, shutdown.clone()));
    (addr, shutdown)
}

async fn connect(addr: &str) -> MasterClient {
    MasterClient::connect(addr, Duration::from_secs(5))
        .await
        .unwrap()
}

#[test]
fn master_over_loopback() {
    commands::rpc::block_on_local(async {
        let config = control_plane::Config {
            long_poll_timeout: Duration::from_secs(3),
            heartbeat_timeout: Duration::from_millis(600),
            startup_grace: Duration::ZERO,
            quota_file: None,
            state_dir: None,
        };
        let (addr, shutdown) = start(config).await;
        let w1 = connect(&addr).await;
        let w2 = connect(&addr).await;
        let intruder = connect(&addr).await;
        let cli = connect(&addr).await;
        let cap1 = WorkerCap::new(EchoWorker { id: "w1".into() });
        let cap2 = WorkerCap::new(EchoWorker { id: "w2".into() });
        w1.register(&reg("w1", "10.0.0.1:6000"), cap1.clone())
            .await
            .unwrap();

        // Identity: another connection cannot take a live id or report for it.
        let err = intruder
            .register(&reg("w1", "10.0.0.9:6000"), cap1.clone())
            .await
            .unwrap_err();
        assert_eq!(code(err), ErrorCode::PermissionDenied);
        let err = intruder
            .push_data("w1", 0, &[], &WorkerMetricsView::default())
            .await
            .unwrap_err();
        assert_eq!(code(err), ErrorCode::PermissionDenied);
        let err = cli.get_assignment("nobody", 0, 0).await.unwrap_err();
        assert_eq!(code(err), ErrorCode::NotFound);
        let err = cli.get_assignment("../etc", 0, 0).await.unwrap_err();
        assert_eq!(code(err), ErrorCode::InvalidArgument);

        // A long-poll that is waiting answers as soon as a generation is
        // published, not after its timeout.
        let poll = w1.get_assignment("w1", 0, 0);
        let publish = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t = Instant::now();
            let o = cli
                .publish(
                    "default",
                    "c1",
                    1,
                    "i1",
                    &[spec("web-0", "a"), spec("web-1", "a")],
                )
                .await
                .unwrap();
            (o, t)
        };
        let (a, (outcome, published_at)) = tokio::join!(poll, publish);
        let a = a.unwrap();
        assert!(
            published_at.elapsed() < Duration::from_secs(1),
            "long-poll waited for its timeout"
        );
        assert!(a.changed && a.generation == 1 && a.vms.len() == 2, "{a:?}");
        assert_eq!(outcome.placed, 2);

        // Bad input is refused and changes nothing.
        let err = cli
            .publish("default", "c2", 2, "i2", &[spec("x", "a"), spec("x", "b")])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("duplicate VM name"), "{err}");
        let err = cli
            .publish("default", "c0", 0, "i0", &[])
            .await
            .unwrap_err();
        assert_eq!(code(err), ErrorCode::InvalidArgument);
        let err = cli
            .publish("default", "c1", 1, "other", &[])
            .await
            .unwrap_err();
        assert_eq!(code(err), ErrorCode::AlreadyExists);
        // Replicas of one group that disagree on their update policy.
        let policy = |max_parallel| {
            Some(commands::types::UpdatePolicy {
                group: "web".into(),
                max_parallel,
                min_healthy_ms: 0,
                auto_revert: false,
            })
        };
        let err = cli
            .publish(
                "default",
                "c2",
                2,
                "i2",
                &[
                    testkit::fixtures::spec_with("web-0", "a", |f| f.update = policy(1)),
                    testkit::fixtures::spec_with("web-1", "a", |f| f.update = policy(2)),
                ],
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("web-1 and web-0 carry different update policies for group \"web\""),
            "{err}"
        );
        // A spec that does not validate cannot even be expressed with the
        // client's types: `commands::service::master`'s tests send one raw
        // and check that it is refused before it reaches the control plane.
        let repeat = cli.publish("default", "c1", 1, "i1", &[]).await.unwrap();
        assert!(repeat.noop);
        let status = cli.status().await.unwrap();
        assert_eq!(status.active("default").map(|g| g.number), Some(1));
        assert_eq!(status.vms.len(), 2);

        // getWorker proxies to the capability the worker registered.
        let proxied = cli.worker("w1").await.unwrap();
        let st = proxied.read().await.unwrap();
        assert_eq!(st.worker_id.as_str(), "w1");

        // w2 joins and heartbeats; w1 falls silent and its VMs move to w2.
        w2.register(&reg("w2", "10.0.0.2:6000"), cap2)
            .await
            .unwrap();
        let first = w2.get_assignment("w2", 0, 0).await.unwrap();
        assert!(
            first.vms.is_empty(),
            "stable: nothing moved to the new worker"
        );
        let heartbeat = async {
            for _ in 0..20 {
                w2.push_data("w2", 1, &[], &WorkerMetricsView::default())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let moved = async {
            let t = Instant::now();
            let a = w2
                .get_assignment("w2", first.generation, first.revision)
                .await
                .unwrap();
            (a, t.elapsed())
        };
        let ((a, waited), ()) = tokio::join!(moved, heartbeat);
        assert_eq!(a.vms.len(), 2, "{a:?}");
        assert!(
            waited < Duration::from_millis(1500),
            "moved after {waited:?}"
        );
        let status = cli.status().await.unwrap();
        let w1h = status.workers.iter().find(|w| w.worker_id == "w1").unwrap();
        assert!(!w1h.healthy);
        assert!(status.vms.iter().all(|v| v.worker_id == "w2"));

        shutdown.cancel();
    });
}
