//! Benchmark: narinfo GETs per second and latency (median, p99) with 10,000
//! paths stored, against the real `cache` binary over loopback keep-alive
//! connections. Run: `cargo bench -p cache --bench narinfo`.

// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cache::hash::Sha256Hash;
use cache::nixbase32;
use testkit::{Log, Proc};

const PATHS: usize = 10_000;
const TOKEN: &str = "bench-upload-token-0001";

/// Minimal keep-alive HTTP/1.1 client.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn new(addr: &str) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Self {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn request(&mut self, method: &str, path: &str, auth: bool, body: &[u8]) -> (u16, Vec<u8>) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n",
            body.len()
        );
        if auth {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("ci:{TOKEN}"));
            req.push_str(&format!("Authorization: Basic {b}\r\n"));
        }
        req.push_str("\r\n");
        let mut buf = req.into_bytes();
        buf.extend_from_slice(body);
        self.w.write_all(&buf).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).unwrap();
        (status, body)
    }
}

fn item(i: usize) -> (String, Vec<u8>, String) {
    let name = format!("pkg-{i}");
    let digest = Sha256Hash::of(name.as_bytes());
    let hash = nixbase32::encode(&digest.0[..20]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, format!("content of {name}\n").repeat(8)).unwrap();
    let mut nar = Vec::new();
    cache::nar::dump(&f, &mut nar).unwrap();
    let h = Sha256Hash::of(&nar);
    // Each path references its predecessor, like a real chain of packages.
    let refs = if i == 0 {
        String::new()
    } else {
        item_base(i - 1)
    };
    let narinfo = format!(
        "StorePath: /nix/store/{hash}-{name}\nURL: nar/{}.nar\nCompression: none\nFileHash: {h}\nFileSize: {}\nNarHash: {h}\nNarSize: {}\nReferences: {refs}\n",
        h.to_base32(),
        nar.len(),
        nar.len()
    );
    (hash, nar, narinfo)
}

fn item_base(i: usize) -> String {
    let name = format!("pkg-{i}");
    format!(
        "{}-{name}",
        nixbase32::encode(&Sha256Hash::of(name.as_bytes()).0[..20])
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn measure(addr: &str, hashes: &[String], threads: usize, per_thread: usize) {
    let start = Instant::now();
    let mut all: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut c = Conn::new(addr);
                    let mut lat = Vec::with_capacity(per_thread);
                    let mut x = 0x9e3779b97f4a7c15u64 ^ t as u64;
                    for _ in 0..per_thread {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let h = &hashes[(x % hashes.len() as u64) as usize];
                        let t0 = Instant::now();
                        let (st, _) = c.request("GET", &format!("/{h}.narinfo"), false, b"");
                        lat.push(t0.elapsed());
                        assert_eq!(st, 200);
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed();
    all.sort();
    println!(
        "narinfo GET, {threads} connection(s): {:.0} req/s, median {:.3} ms, p99 {:.3} ms ({} requests)",
        all.len() as f64 / wall.as_secs_f64(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.len()
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let key = cache::signing::SecretKey::generate("bench-1").unwrap();
    std::fs::write(dir.path().join("sk"), key.to_nix_string()).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cache"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--key-file")
        .arg(dir.path().join("sk"))
        .arg("--upload-token-file")
        .arg(dir.path().join("token"))
        .env("RUST_LOG", "warn");
    let mut server = Proc::spawn("cache", cmd, Log::Inherit);
    let addr = server.addr.clone();

    // Populate over HTTP like a pusher would (NAR, then narinfo, in dependency order).
    let items: Vec<_> = (0..PATHS).map(item).collect();
    let start = Instant::now();
    let mut c = Conn::new(&addr);
    for (hash, nar, narinfo) in &items {
        let file = narinfo
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .unwrap();
        assert_eq!(c.request("PUT", &format!("/{file}"), true, nar).0, 200);
        let (st, body) = c.request("PUT", &format!("/{hash}.narinfo"), true, narinfo.as_bytes());
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    }
    let t = start.elapsed();
    println!(
        "populated {PATHS} paths in {:.1} s ({:.0} path uploads/s, NAR + narinfo each, fsynced)",
        t.as_secs_f64(),
        PATHS as f64 / t.as_secs_f64()
    );
    let hashes: Vec<String> = items.into_iter().map(|(h, _, _)| h).collect();
    measure(&addr, &hashes, 1, 1000); // warm-up
    measure(&addr, &hashes, 1, 20_000);
    measure(&addr, &hashes, 4, 10_000);
    measure(&addr, &hashes, 16, 4_000);
    server.kill();
}
