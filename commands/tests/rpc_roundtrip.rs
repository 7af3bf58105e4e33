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
            Ok(_) => RpcFailure::new(
                commands::convert::ErrorCode::Internal,
                "test server creates nothing",
            ),
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
        tokio::task::spawn_local(commands::rpc::serve(
            listener,
            client.client,
            shutdown.clone(),
        ));

        let conn = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        let reply = conn.client.read_request().send().promise.await.unwrap();
        let status = reply.get().unwrap().get_status().unwrap();
        assert_eq!(status.get_worker_id().unwrap().to_str().unwrap(), "w-1");
        assert_eq!(status.get_vm_count(), 3);

        let mut req = conn.client.create_vm_request();
        req.get().init_spec().set_name("Bad Name");
        let reply = req.send().promise.await.unwrap();
        let result = reply.get().unwrap().get_result().unwrap();
        let Err(err) = result_from_capnp(result).unwrap() else {
            panic!("expected an error as data");
        };
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
        let err = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(&addr), "{err}");
    });
}

#[test]
fn connections_over_the_limit_are_closed_and_slots_come_back() {
    commands::rpc::block_on_local(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        let make = |_, _| {
            let c: worker::Client = capnp_rpc::new_client(TestWorker);
            c.client
        };
        tokio::task::spawn_local(commands::rpc::serve_limited(
            listener,
            make,
            2,
            shutdown.clone(),
        ));
        let read = |c: &worker::Client| c.read_request().send().promise;
        let a = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        let b = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        read(&a.client).await.unwrap();
        read(&b.client).await.unwrap();
        // The third connection is accepted and closed at once: its call fails.
        let c = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), read(&c.client))
            .await
            .unwrap()
            .err()
            .unwrap();
        assert_eq!(e.kind, capnp::ErrorKind::Disconnected, "{e}");
        // Closing one frees its slot for a new connection.
        a.close().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let d = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(5))
                .await
                .unwrap();
            if read(&d.client).await.is_ok() {
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
    commands::rpc::block_on_local(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        let client: worker::Client = capnp_rpc::new_client(TestWorker);
        tokio::task::spawn_local(commands::rpc::serve(
            listener,
            client.client,
            shutdown.clone(),
        ));
        let conn = commands::rpc::connect::<worker::Client>(&addr, Duration::from_secs(5))
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
        shutdown.cancel();
    });
}
