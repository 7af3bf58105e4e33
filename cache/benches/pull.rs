//! Benchmark: pull of a ~200 MiB, 20-path closure with `nix copy --from`
//! from our cache vs the same files served by nginx as a static
//! `file://`-layout cache (ratio), raw NAR download throughput of both, and
//! push with `compression=zstd` to our cache vs `nix copy --to file://`.
//! Needs Debian's nix and nginx (nginx-light). Run:
//! `cargo bench -p cache --bench pull`.

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use testkit::{Log, Proc};

/// User + system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    testkit::process::usage(pid).cpu_ticks as f64 / 100.0
}

const PATHS: usize = 20;
const MIB_PER_PATH: usize = 10;
const ROUNDS: usize = 3;
/// Pulls are short and this machine is shared: more rounds, median and best.
const PULL_ROUNDS: usize = 7;

fn closure_expr() -> String {
    // A chain of 20 derivations, each 10 MiB: 8 MiB random (incompressible)
    // plus 2 MiB of text (compressible), each referencing its predecessor.
    let mut s = String::from(
        "let\n  mk = i: prev: derivation {\n    name = \"bench-${toString i}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\";\n    args = [\"-c\" ''\n      /bin/mkdir -p $out\n      echo ${prev} > $out/prev\n      /bin/head -c 8388608 /dev/urandom > $out/random\n      /usr/bin/yes \"line ${toString i} of some compressible text\" | /bin/head -c 2097152 > $out/text\n    ''];\n  };\n",
    );
    s.push_str("  p0 = mk 0 \"none\";\n");
    for i in 1..PATHS {
        s.push_str(&format!("  p{i} = mk {i} p{};\n", i - 1));
    }
    s.push_str(&format!("in p{}\n", PATHS - 1));
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `nix copy` of `top` from the store `src` to `to`.
fn copy_to(env: &Env, src: &Path, to: &str, top: &str) -> Command {
    let mut c = env.nix("nix");
    c.args(["copy", "--store"]).arg(src).args(["--to", to, top]);
    c
}

fn timed(env: &Env, cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let out = env.run(cmd, Duration::from_secs(600));
    let t = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

/// nginx serving `root` on a free loopback port, stopped on drop.
fn start_nginx(dir: &Path, root: &Path) -> (Proc, String) {
    let port = testkit::fs::free_port().port();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
           client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fcgi;\n\
           uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
           types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar zst xz; }}\n\
           default_type text/plain;\n\
           server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        root = root.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(dir);
    // It prints no address: the port is polled.
    let nginx = Proc::start("nginx", cmd, Log::Inherit);
    let addr = format!("127.0.0.1:{port}");
    testkit::wait_until(Duration::from_secs(10), "nginx to listen", || {
        TcpStream::connect(&addr).ok()
    });
    (nginx, addr)
}

/// Downloads `paths` sequentially over one keep-alive connection; returns bytes.
fn raw_download(addr: &str, paths: &[String]) -> u64 {
    let s = TcpStream::connect(addr).unwrap();
    let mut r = BufReader::with_capacity(1 << 20, s.try_clone().unwrap());
    let mut w = s;
    let mut total = 0;
    let mut sink = vec![0u8; 1 << 20];
    for p in paths {
        write!(w, "GET /{p} HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains(" 200 "), "{p}: {line}");
        let mut len = 0u64;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut left = len;
        while left > 0 {
            let n = r.read(&mut sink[..left.min(1 << 20) as usize]).unwrap();
            assert!(n > 0);
            left -= n as u64;
        }
        total += len;
    }
    total
}

fn main() {
    let env = Env::new();
    let src = env.path().join("src");
    println!(
        "building a {PATHS}-path closure of {} MiB ...",
        PATHS * MIB_PER_PATH
    );
    let top = env.build(&src, "bench.nix", &closure_expr());
    let paths = closure(&env, &src, &top);
    assert_eq!(paths.len(), PATHS);

    // Push: our cache (zstd) vs nix's own file:// store (zstd), fresh target each round.
    let mut ours_push = Vec::new();
    let mut file_push = Vec::new();
    for round in 0..ROUNDS {
        let _ = std::fs::remove_dir_all(env.data_dir());
        let server = Server::start(&env, &[]);
        let to = format!("{}?compression=zstd", server.url());
        ours_push.push(timed(&env, &mut copy_to(&env, &src, &to, &top)));
        let dir = env.path().join(format!("filecache-{round}"));
        let to = format!("file://{}?compression=zstd", dir.display());
        file_push.push(timed(&env, &mut copy_to(&env, &src, &to, &top)));
    }
    let (op, fp) = (median(ours_push), median(file_push));
    println!(
        "push {} MiB zstd: cache {:.2} s, nix file:// {:.2} s, ratio (file time / cache time) {:.2}",
        PATHS * MIB_PER_PATH,
        op,
        fp,
        fp / op
    );

    // The last push stays; nginx serves the very same files (our data dir is a file:// layout).
    let server = Server::start(&env, &[]);
    let root = env.data_dir().join("store");
    std::fs::write(
        root.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
    )
    .unwrap();
    let ngx_dir = env.path().join("nginx");
    std::fs::create_dir_all(&ngx_dir).unwrap();
    let (_nginx, ngx_addr) = start_nginx(&ngx_dir, &root);
    let nar_files: Vec<String> = std::fs::read_dir(root.join("nar"))
        .unwrap()
        .map(|e| format!("nar/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    let nar_bytes: u64 = nar_files
        .iter()
        .map(|f| std::fs::metadata(root.join(f)).unwrap().len())
        .sum();
    let mib = nar_bytes as f64 / (1 << 20) as f64;

    let key = env.public_key();
    let mut ours = Vec::new();
    let mut ngx = Vec::new();
    let (cache_cpu0, ngx_cpu0) = (cpu_seconds(server.proc.pid()), cpu_seconds(_nginx.pid()));
    for round in 0..PULL_ROUNDS {
        // Alternate who goes first so page-cache and CPU effects even out.
        let order: [(&str, String); 2] = if round % 2 == 0 {
            [
                ("cache", server.url()),
                ("nginx", format!("http://{ngx_addr}")),
            ]
        } else {
            [
                ("nginx", format!("http://{ngx_addr}")),
                ("cache", server.url()),
            ]
        };
        for (who, url) in order {
            let dst = env.path().join(format!("dst-{who}-{round}"));
            let mut c = env.nix("nix");
            c.args(["copy", "--from", &url, "--to"]).arg(&dst).args([
                "--option",
                "trusted-public-keys",
                &key,
                &top,
            ]);
            let t = timed(&env, &mut c);
            let _ = std::fs::remove_dir_all(&dst);
            if who == "cache" {
                ours.push(t)
            } else {
                ngx.push(t)
            }
        }
    }
    println!("  rounds: cache {ours:.2?} s, nginx {ngx:.2?} s");
    println!(
        "  server CPU over {PULL_ROUNDS} pulls: cache {:.2} s, nginx {:.2} s",
        cpu_seconds(server.proc.pid()) - cache_cpu0,
        cpu_seconds(_nginx.pid()) - ngx_cpu0
    );
    let best = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    let (bo, bn) = (best(&ours), best(&ngx));
    println!(
        "  best of {PULL_ROUNDS}: cache {bo:.2} s, nginx {bn:.2} s, cache/nginx throughput ratio {:.2}",
        bn / bo
    );
    let (o, n) = (median(ours), median(ngx));
    println!(
        "pull {PATHS} paths ({mib:.0} MiB compressed) with nix copy --from: cache {o:.2} s ({:.0} MiB/s), nginx {n:.2} s ({:.0} MiB/s), cache/nginx throughput ratio {:.2}",
        mib / o,
        mib / n,
        n / o
    );

    let mut raw_o = Vec::new();
    let mut raw_n = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        raw_download(&server.addr, &nar_files);
        raw_o.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        raw_download(&ngx_addr, &nar_files);
        raw_n.push(t.elapsed().as_secs_f64());
    }
    let (ro, rn) = (median(raw_o), median(raw_n));
    println!(
        "raw NAR GETs over one keep-alive connection: cache {:.0} MiB/s, nginx {:.0} MiB/s, ratio {:.2}",
        mib / ro,
        mib / rn,
        rn / ro
    );
}
