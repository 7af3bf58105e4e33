//! What authentication costs, against an in-process control plane on
//! loopback. Prints, for a token file of 4 and of 1,000 tokens: a fresh
//! connection + login + getClusterStatus (what every `pcr` run does), and
//! getClusterStatus on an open session (what the login adds nothing to);
//! and a refused login (slowed down on purpose). Then, under a flood of
//! 15,000 idle connections (opened from another thread, never sending a
//! byte; more than the control plane keeps waiting to log in): how fast the
//! flood is accepted and what connect + login + getClusterStatus costs
//! while it arrives and once it sits there.
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

/// The flood of `n` idle connections against a control plane with one
/// admin token; latencies of fresh logins during and after it.
async fn flood(n: usize) {
    let token = "admin-token-0123456789";
    let auth = Authenticator::parse(
        &format!("admin {token}\n"),
        std::path::Path::new("bench"),
        &[Role::Admin],
    )
    .unwrap();
    let listener = commands::rpc::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    tokio::task::spawn_local(control_plane::run_with_auth(
        control_plane::Config::default(),
        auth,
        listener,
        shutdown.clone(),
    ));
    let login = || async {
        let t = Instant::now();
        let m = MasterClient::connect_with_token(&addr, Duration::from_secs(30), token)
            .await
            .unwrap();
        m.status().await.unwrap();
        m.close().await;
        t.elapsed()
    };
    let started = Instant::now();
    let target = addr.clone();
    let opener = std::thread::spawn(move || {
        (0..n)
            .map(|_| std::net::TcpStream::connect(&target).unwrap())
            .collect::<Vec<_>>()
    });
    let mut during = Vec::new();
    loop {
        during.push(login().await);
        if opener.is_finished() {
            break;
        }
    }
    let idle = opener.join().unwrap();
    let opened_in = started.elapsed();
    let mut after = Vec::with_capacity(100);
    for _ in 0..100 {
        after.push(login().await);
    }
    println!(
        "{n} idle connections opened in {:.2} s ({:.0}/s); connect+login+status while they arrive p50 {} p99 {} ({} logins), with them held p50 {} p99 {}",
        opened_in.as_secs_f64(),
        n as f64 / opened_in.as_secs_f64(),
        us(pct(during.clone(), 0.5)),
        us(pct(during.clone(), 0.99)),
        during.len(),
        us(pct(after.clone(), 0.5)),
        us(pct(after, 0.99)),
    );
    drop(idle);
    shutdown.cancel();
}

fn main() {
    commands::rpc::block_on_local(async {
        run(4).await;
        run(1000).await;
        flood(15_000).await;
    });
}
