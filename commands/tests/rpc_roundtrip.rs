//! Serves a minimal Worker capability over real TCP on loopback with
//! `rpc::serve` and calls it through `rpc::connect`, so the shared plumbing
//! every service uses is exercised end to end.

use std::time::Duration;

use commands::convert::{RpcFailure, error_to_capnp, result_from_capnp, vm_spec_from_capnp};
use commands::worker_capnp::worker;
use tokio_util::sync::CancellationToken;

struct TestWorker;

impl worker::Server for TestWorker {
    async fn read(
        self: capnp::capability::Rc<Self>,
        _: worker::ReadParams,
        mut results: worker::ReadResults,
    ) -> Result<(), capnp::Error> {
        let mut s = results.get().init_status();
        s.set_worker_id("w-1");
        s.set_vm_count(3);
        Ok(())
    }

    async fn create_vm(
        self: capnp::capability::Rc<Self>,
        params: worker::CreateVmParams,
        mut results: worker::CreateVmResults,
    ) -> Result<(), capnp::Error> {
        // A bad spec is answered as error data naming the field.
        let spec = vm_spec_from_capnp(params.get()?.get_spec()?);
        let failure = match spec {
            Ok(_) => RpcFailure::new(commands::convert::ErrorCode::Internal, "test server creates nothing"),
            Err(e) => RpcFailure::from(e),
        };
        error_to_capnp(&failure, results.get().init_result().init_err());
        Ok(())
    }
}

#[test]
fn serve_and_connect_over_loopback() {
    commands::rpc::block_on_local(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        let client: worker::Client = capnp_rpc::new_client(TestWorker);
        tokio::task::spawn_local(commands::rpc::serve(listener, client.client, shutdown.clone()));

        let conn = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(5)).await.unwrap();
        let reply = conn.client.read_request().send().promise.await.unwrap();
        let status = reply.get().unwrap().get_status().unwrap();
        assert_eq!(status.get_worker_id().unwrap().to_str().unwrap(), "w-1");
        assert_eq!(status.get_vm_count(), 3);

        let mut req = conn.client.create_vm_request();
        req.get().init_spec().set_name("Bad Name");
        let reply = req.send().promise.await.unwrap();
        let result = reply.get().unwrap().get_result().unwrap();
        let err = result_from_capnp(result).unwrap().err().expect("an error as data");
        assert!(err.message.contains("name"), "{err}");

        conn.close().await;
        shutdown.cancel();
    });
}

#[test]
fn connect_to_closed_port_names_the_address() {
    commands::rpc::block_on_local(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(2)).await.err().unwrap();
        assert!(err.to_string().contains(&addr), "{err}");
    });
}
