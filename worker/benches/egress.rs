//! Egress benchmark (prints figures; not a timed test). Run as root with
//! `cargo bench -p worker --bench egress` (BENCH_N VMs, default 1,000).
//!
//! In a network namespace of its own with a bridge: the time to attach a
//! VM (TAP on the bridge, nftables elements, its record) as the first VMs
//! and as the last of BENCH_N on one host; the rule install alone (the
//! `nft` batch of one VM) at both ends; a DNS answer's install at BENCH_N
//! VMs; and a detach. Goal (issue 15): < 5 ms per VM, no growth with the
//! number of VMs.

// A benchmark's job is printing its figures on stdout.
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Instant;

use testkit::bench::{ms, stats};
use tokio_util::sync::CancellationToken;
use worker::dto::VmId;
use worker::net::nft::Tables;
use worker::net::{Egress, NetConfig};

const WINDOW: usize = 50;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP: the egress benchmark needs root (network namespaces, nftables)");
        return;
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
        .max(2 * WINDOW);
    let ns = Ns(format!("pcr6-bench-{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    sh(&["ip", "-n", &ns.0, "link", "add", "br0", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        "10.88.0.1/20",
        "dev",
        "br0",
    ]);
    sh(&["ip", "-n", &ns.0, "link", "set", "br0", "up"]);
    let name = ns.0.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(n));
    })
    .join()
    .unwrap();
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    // The upstream is never asked: the VMs have no domains.
    let config = NetConfig::new(
        "br0".into(),
        "10.88.0.0/20".parse().unwrap(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
    );
    let tables = Tables::new("nft", "pcrbench", "br0", "pcrt");
    let stop = CancellationToken::new();
    let egress = Egress::start(config, dir.path(), stop.clone())
        .await
        .expect("egress starts");

    println!(
        "egress: {n} VMs on one host (attach = TAP on the bridge + nftables elements + record)"
    );
    let mut ids = Vec::with_capacity(n);
    let mut attach = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let id = VmId::new_v7();
        let t = Instant::now();
        egress.attach(&id, &[]).await.unwrap();
        attach.push(t.elapsed());
        ids.push(id);
    }
    let total = started.elapsed();
    println!(
        "  attach, VMs 1-{WINDOW}:            {}",
        stats(&attach[..WINDOW])
    );
    println!(
        "  attach, VMs {}-{n}:        {}",
        n - WINDOW + 1,
        stats(&attach[n - WINDOW..])
    );
    println!(
        "  attach, all {n}:              {:6.2} ms per VM ({:.2} s)",
        ms(total) / n as f64,
        total.as_secs_f64()
    );

    // The rules alone, in a second pair of tables: one nft batch per VM.
    tables
        .reset(SocketAddr::from(([10, 88, 0, 1], 53)))
        .await
        .unwrap();
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 89, 0, 2)) + i as u32);
        let t = Instant::now();
        tables.add_vm(&format!("pcrt{i:011}"), addr).await.unwrap();
        rules.push(t.elapsed());
    }
    println!(
        "  rules only, VMs 1-{WINDOW}:        {}",
        stats(&rules[..WINDOW])
    );
    println!(
        "  rules only, VMs {}-{n}:    {}",
        n - WINDOW + 1,
        stats(&rules[n - WINDOW..])
    );
    let mut answers = Vec::with_capacity(WINDOW);
    for i in 0..WINDOW {
        let vm = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 89, 0, 2)) + i as u32);
        let t = Instant::now();
        tables
            .allow(vm, &[(Ipv4Addr::new(192, 0, 2, i as u8), 300)])
            .await
            .unwrap();
        answers.push(t.elapsed());
    }
    println!("  a DNS answer's install at {n}: {}", stats(&answers));
    tables.remove().await.unwrap();

    let mut detach = Vec::with_capacity(WINDOW);
    for id in ids.iter().rev().take(WINDOW) {
        let t = Instant::now();
        egress.detach(id).await.unwrap();
        detach.push(t.elapsed());
    }
    println!("  detach at {n}:                {}", stats(&detach));
    stop.cancel();
}
