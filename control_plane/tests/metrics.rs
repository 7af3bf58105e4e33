//! The control plane's `/metrics` on `--metrics-listen`, scraped from the
//! real binary with a real HTTP client and parsed as Prometheus text: a
//! publish moves the generation, placement and RPC counters and the VM
//! and worker gauges; a refused call counts as an RPC error; other paths
//! are 404.

use std::time::Duration;

use commands::client::MasterClient;
use commands::service::worker::{WorkerApi, WorkerCap};
use testkit::metrics::{has, scrape_async, value};
use testkit::process::Log;
use testkit::services::{ControlPlaneArgs, start_control_plane};

/// A Worker capability with no methods: registration only needs one.
struct NullWorker;
impl WorkerApi for NullWorker {}

#[test]
fn publish_moves_the_control_plane_metrics() {
    let metrics_addr = testkit::fs::free_port();
    let cp = start_control_plane(
        &ControlPlaneArgs {
            args: vec!["--metrics-listen".into(), metrics_addr.to_string()],
            ..ControlPlaneArgs::default()
        },
        Log::Quiet,
    );
    let url = format!("http://{metrics_addr}/metrics");
    commands::rpc::block_on_local(async {
        let before = scrape_async(&url).await;
        assert_eq!(
            value(
                &before,
                "procurator_control_plane_generations_published_total",
                &[("project", "shop")]
            ),
            0.0
        );
        assert_eq!(
            value(
                &before,
                "procurator_control_plane_workers",
                &[("health", "healthy")]
            ),
            0.0
        );

        let m = MasterClient::connect(&cp.addr, Duration::from_secs(5))
            .await
            .unwrap();
        let reg = testkit::fixtures::registration("w1", "127.0.0.1:1".to_owned(), 8, 4096);
        m.register(&reg, WorkerCap::new(NullWorker)).await.unwrap();
        let specs = [
            testkit::fixtures::spec("a", "h1"),
            testkit::fixtures::spec("b", "h2"),
        ];
        m.publish("shop", "c1", 1, "i1", &specs).await.unwrap();
        // The same intent again is a no-op: no new generation.
        m.publish("shop", "c1", 1, "i1", &specs).await.unwrap();
        // A generation number going backwards is refused: an RPC error.
        assert!(m.publish("shop", "c0", 0, "i0", &specs).await.is_err());

        let after = scrape_async(&url).await;
        let g = "procurator_control_plane_generations_published_total";
        assert_eq!(value(&after, g, &[("project", "shop")]), 1.0);
        assert_eq!(
            value(
                &after,
                "procurator_control_plane_placements_total",
                &[("project", "shop")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &after,
                "procurator_control_plane_active_generation",
                &[("project", "shop")]
            ),
            1.0
        );
        // One event per thing that happened, by kind.
        let events = "procurator_control_plane_events_total";
        for (kind, n) in [
            ("worker-joined", 1.0),
            ("generation-published", 1.0),
            ("vm-placed", 2.0),
        ] {
            assert_eq!(value(&after, events, &[("kind", kind)]), n, "{kind}");
        }
        // Placed on w1, which reports nothing yet: both pending.
        assert_eq!(
            value(
                &after,
                "procurator_control_plane_vms",
                &[("project", "shop"), ("drift", "pending")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &after,
                "procurator_control_plane_workers",
                &[("health", "healthy")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &after,
                "procurator_control_plane_rpc_calls_total",
                &[("method", "publish")]
            ),
            3.0
        );
        assert_eq!(
            value(
                &after,
                "procurator_control_plane_rpc_errors_total",
                &[("method", "publish")]
            ),
            1.0
        );
        assert!(has(
            &after,
            "procurator_control_plane_publish_seconds_count"
        ));
        assert_eq!(
            value(
                &after,
                "procurator_control_plane_publish_seconds_count",
                &[("project", "shop")]
            ),
            2.0
        );

        // Anything but /metrics is not served.
        let client = commands::http::HttpClient::tcp();
        let req = http::Request::get(format!("http://{metrics_addr}/"))
            .body(bytes::Bytes::new())
            .unwrap();
        assert_eq!(client.send(req).await.unwrap().status.as_u16(), 404);
    });
}
