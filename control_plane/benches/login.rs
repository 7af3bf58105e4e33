//! What authentication costs, against an in-process control plane on
//! loopback. Prints, for a token file of 4 and of 1,000 tokens: a fresh
//! connection + login + getClusterStatus (what every `pcr` run does), and
//! getClusterStatus on an open session (what the login adds nothing to);
//! and a refused login (slowed down on purpose).
//!
//! `cargo bench -p control_plane --bench login`

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use commands::auth::{Authenticator, Role};
use commands::client::MasterClient;
use tokio_util::sync::CancellationToken;

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn run(tokens: usize) {
    let mut text = String::new();
    for i in 0..tokens {
        text += &format!("reader reader-token-{i:08}\n");
    }
    let last = format!("reader-token-{:08}", tokens - 1);
    let auth = Authenticator::parse(&text, std::path::Path::new("bench"), &[Role::Reader]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    tokio::task::spawn_local(control_plane::run_with_auth(
        control_plane::Config::default(),
        auth,
        listener,
        shutdown.clone(),
    ));
    let n = 300;
    let mut fresh = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        // The last token of the file: every entry is compared anyway.
        let m = MasterClient::connect_with_token(&addr, Duration::from_secs(5), &last)
            .await
            .unwrap();
        m.status().await.unwrap();
        fresh.push(t.elapsed());
        m.close().await;
    }
    let m = MasterClient::connect_with_token(&addr, Duration::from_secs(5), &last)
        .await
        .unwrap();
    let mut session = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        m.status().await.unwrap();
        session.push(t.elapsed());
    }
    let t = Instant::now();
    let refused =
        MasterClient::connect_with_token(&addr, Duration::from_secs(5), "wrong-token-000000")
            .await
            .is_err();
    let refused_in = t.elapsed();
    assert!(refused);
    println!(
        "{tokens:>5} tokens: connect+login+status p50 {} p99 {}; status on a session p50 {} p99 {}; refused login {}",
        us(pct(fresh.clone(), 0.5)),
        us(pct(fresh, 0.99)),
        us(pct(session.clone(), 0.5)),
        us(pct(session, 0.99)),
        us(refused_in),
    );
    shutdown.cancel();
}

fn main() {
    commands::rpc::block_on_local(async {
        run(4).await;
        run(1000).await;
    });
}
