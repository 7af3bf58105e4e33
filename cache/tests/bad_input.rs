//! Protocol and bad-input tests against an in-process cache (`cache::run`
//! on port 0): each malformed or malicious upload gets a clear 4xx and
//! leaves nothing half-stored; concurrent identical uploads end as one copy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cache::hash::Sha256Hash;
use cache::nixbase32;

const TOKEN: &str = "tok-123";

/// An in-process cache on its own runtime thread; stopped on drop.
struct Cache {
    addr: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
    shutdown: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cache {
    fn start(max_upload: u64) -> Self {
        Self::start_with(max_upload, |c| c.with_upload_token(TOKEN))
    }

    /// A cache whose config `setup` finishes (upload tokens).
    fn start_with(max_upload: u64, setup: impl FnOnce(cache::Config) -> cache::Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = cache::signing::SecretKey::generate("bad-input-1").unwrap();
        std::fs::write(dir.path().join("sk"), key.to_nix_string()).unwrap();
        let mut config = setup(cache::Config::new(
            dir.path().join("data"),
            dir.path().join("sk"),
        ));
        config.max_upload_bytes = max_upload;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let sd = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().to_string()).unwrap();
                cache::run(config, listener, sd).await.unwrap();
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let data = dir.path().join("data");
        // run() opens the store after binding: wait for its layout.
        let start = Instant::now();
        while req(&addr, "GET", "/nix-cache-info", &[], b"").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        Self {
            addr,
            data,
            _dir: dir,
            shutdown,
            thread: Some(thread),
        }
    }

    fn files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "nar" && n != "log")
            .collect();
        v.sort();
        v
    }

    /// Waits for tmp/ to be empty (the writer thread drops its temp file
    /// right after answering).
    fn assert_tmp_empties(&self) {
        let start = Instant::now();
        while !self.files("tmp").is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "tmp not cleaned: {:?}",
                self.files("tmp")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn auth(pw: &str) -> (String, String) {
    (
        "Authorization".into(),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ci:{pw}"))
        ),
    )
}

/// One HTTP/1.1 request on a fresh connection: (status, head, body).
fn req(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    s.write_all(r.as_bytes()).unwrap();
    let _ = s.write_all(body);
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, resp[split..].to_vec())
}

fn put(c: &Cache, path: &str, body: &[u8]) -> (u16, String) {
    let (s, _, b) = req(&c.addr, "PUT", path, &[auth(TOKEN)], body);
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// A store path with its NAR (uncompressed) and the narinfo nix would upload.
struct Item {
    base: String,
    nar: Vec<u8>,
    nar_hash: Sha256Hash,
}

impl Item {
    fn new(name: &str, content: &[u8]) -> Self {
        let digest = Sha256Hash::of(name.as_bytes());
        let base = format!("{}-{name}", nixbase32::encode(&digest.0[..20]));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, content).unwrap();
        let mut nar = Vec::new();
        cache::nar::dump(&f, &mut nar).unwrap();
        let nar_hash = Sha256Hash::of(&nar);
        Self {
            base,
            nar,
            nar_hash,
        }
    }

    fn hash_part(&self) -> &str {
        &self.base[..32]
    }

    fn file(&self) -> String {
        format!("{}.nar", self.nar_hash.to_base32())
    }

    fn narinfo(&self, refs: &[&Item]) -> String {
        let refs: Vec<&str> = refs.iter().map(|r| r.base.as_str()).collect();
        format!(
            "StorePath: /nix/store/{}\nURL: nar/{}\nCompression: none\nFileHash: {}\nFileSize: {}\nNarHash: {}\nNarSize: {}\nReferences: {}\n",
            self.base,
            self.file(),
            self.nar_hash,
            self.nar.len(),
            self.nar_hash,
            self.nar.len(),
            refs.join(" ")
        )
    }

    /// An item whose NAR `c` has accepted (its narinfo is not sent).
    fn with_nar_on(c: &Cache, name: &str, content: &[u8]) -> Self {
        let it = Self::new(name, content);
        assert_eq!(it.put_nar(c).0, 200);
        it
    }

    fn put_nar(&self, c: &Cache) -> (u16, String) {
        put(c, &format!("/nar/{}", self.file()), &self.nar)
    }

    fn put_narinfo(&self, c: &Cache, text: &str) -> (u16, String) {
        put(
            c,
            &format!("/{}.narinfo", self.hash_part()),
            text.as_bytes(),
        )
    }

    fn get_narinfo(&self, c: &Cache) -> u16 {
        req(
            &c.addr,
            "GET",
            &format!("/{}.narinfo", self.hash_part()),
            &[],
            b"",
        )
        .0
    }
}

#[test]
fn reads_have_protocol_content_types_and_lengths() {
    let c = Cache::start(1 << 30);
    let (s, head, body) = req(&c.addr, "GET", "/nix-cache-info", &[], b"");
    assert_eq!(s, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/x-nix-cache-info"),
        "{head}"
    );
    let it = Item::with_nar_on(&c, "hello", b"hello world");
    assert_eq!(it.put_narinfo(&c, &it.narinfo(&[])).0, 200);
    let (s, head, body) = req(&c.addr, "HEAD", &format!("/nar/{}", it.file()), &[], b"");
    assert_eq!(s, 200);
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/x-nix-nar"),
        "{head}"
    );
    assert!(
        lower.contains(&format!("content-length: {}", it.nar.len())),
        "{head}"
    );
    assert!(body.is_empty());
    let (_, _, got) = req(&c.addr, "GET", &format!("/nar/{}", it.file()), &[], b"");
    assert_eq!(got, it.nar);
    // curl resumes interrupted downloads with a Range request.
    let range = [("Range".to_owned(), "bytes=10-".to_owned())];
    let (s, head, got) = req(&c.addr, "GET", &format!("/nar/{}", it.file()), &range, b"");
    assert_eq!(s, 206, "{head}");
    assert_eq!(got, it.nar[10..]);
    assert!(head.to_ascii_lowercase().contains(&format!(
        "content-range: bytes 10-{}/{}",
        it.nar.len() - 1,
        it.nar.len()
    )));
    let range = [("Range".to_owned(), format!("bytes={}-", it.nar.len()))];
    assert_eq!(
        req(&c.addr, "GET", &format!("/nar/{}", it.file()), &range, b"").0,
        416
    );
    let (s, head, body) = req(
        &c.addr,
        "GET",
        &format!("/{}.narinfo", it.hash_part()),
        &[],
        b"",
    );
    assert_eq!(s, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/x-nix-narinfo")
    );
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("\nSig: bad-input-1:"), "{text}");
    assert_eq!(
        req(
            &c.addr,
            "GET",
            "/00000000000000000000000000000000.narinfo",
            &[],
            b""
        )
        .0,
        404
    );
    assert_eq!(
        req(
            &c.addr,
            "HEAD",
            &format!("/nar/{}.nar", "0".repeat(52)),
            &[],
            b""
        )
        .0,
        404
    );
}

#[test]
fn wrong_nar_hash_and_nar_size_are_refused() {
    let c = Cache::start(1 << 30);
    let it = Item::with_nar_on(&c, "app", b"the real content");
    let good = it.narinfo(&[]);
    let other = Sha256Hash::of(b"something else").to_string();
    let bad_hash = good.replace(
        &format!("NarHash: {}", it.nar_hash),
        &format!("NarHash: {other}"),
    );
    let (s, msg) = it.put_narinfo(&c, &bad_hash);
    assert_eq!(s, 400, "{msg}");
    assert!(msg.contains("NarHash mismatch"), "{msg}");
    let bad_size = good.replace(&format!("NarSize: {}", it.nar.len()), "NarSize: 1");
    let (s, msg) = it.put_narinfo(&c, &bad_size);
    assert_eq!(s, 400);
    assert!(msg.contains("NarSize mismatch"), "{msg}");
    let bad_file_size = good.replace(&format!("FileSize: {}", it.nar.len()), "FileSize: 3");
    assert_eq!(it.put_narinfo(&c, &bad_file_size).0, 400);
    assert_eq!(
        it.get_narinfo(&c),
        404,
        "a refused narinfo must not be served"
    );
    assert_eq!(it.put_narinfo(&c, &good).0, 200);
    assert_eq!(it.get_narinfo(&c), 200);
    let (_, _, m) = req(&c.addr, "GET", "/metrics", &[], b"");
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("cache_upload_failures_total{reason=\"nar_hash_mismatch\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("cache_upload_failures_total{reason=\"nar_size_mismatch\"} 1"),
        "{m}"
    );
}

#[test]
fn truncated_and_corrupt_nars_are_refused_and_not_stored() {
    let c = Cache::start(1 << 30);
    let it = Item::new("big", &vec![42u8; 300_000]);
    // Complete HTTP body, but a NAR shorter than the one its name promises.
    let (s, msg) = put(
        &c,
        &format!("/nar/{}", it.file()),
        &it.nar[..it.nar.len() - 1000],
    );
    assert_eq!(s, 400);
    assert!(msg.contains("hashes to"), "{msg}");
    // The connection drops before Content-Length bytes arrive.
    let mut s = TcpStream::connect(&c.addr).unwrap();
    let (k, v) = auth(TOKEN);
    let head = format!(
        "PUT /nar/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{k}: {v}\r\n\r\n",
        it.file(),
        it.nar.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&it.nar[..100_000]).unwrap();
    drop(s);
    let start = Instant::now();
    loop {
        let m = String::from_utf8(req(&c.addr, "GET", "/metrics", &[], b"").2).unwrap();
        if m.contains("cache_upload_failures_total{reason=\"truncated\"} 1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "truncated upload not counted: {m}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // zstd-named upload whose content is not zstd (its name matches its bytes).
    let garbage = b"definitely not a zstd frame".to_vec();
    let name = format!("{}.nar.zst", Sha256Hash::of(&garbage).to_base32());
    let (s, msg) = put(&c, &format!("/nar/{name}"), &garbage);
    assert_eq!(s, 400);
    assert!(msg.contains("does not decompress"), "{msg}");
    // A narinfo naming a NAR that never arrived.
    let (s, msg) = it.put_narinfo(&c, &it.narinfo(&[]));
    assert_eq!(s, 400);
    assert!(msg.contains("has not been uploaded"), "{msg}");
    c.assert_tmp_empties();
    assert!(
        c.files("store/nar").is_empty(),
        "{:?}",
        c.files("store/nar")
    );
    assert!(c.files("store").is_empty());
}

#[test]
fn narinfo_with_missing_references_is_refused_until_they_exist() {
    let c = Cache::start(1 << 30);
    let dep = Item::new("dep", b"dependency");
    let app = Item::new("app", b"application");
    assert_eq!(app.put_nar(&c).0, 200);
    let (s, msg) = app.put_narinfo(&c, &app.narinfo(&[&dep, &app]));
    assert_eq!(s, 400);
    assert!(
        msg.contains("references not in the cache") && msg.contains(&dep.base),
        "{msg}"
    );
    assert_eq!(app.get_narinfo(&c), 404);
    assert_eq!(dep.put_nar(&c).0, 200);
    assert_eq!(dep.put_narinfo(&c, &dep.narinfo(&[])).0, 200);
    // Self-references are fine.
    assert_eq!(app.put_narinfo(&c, &app.narinfo(&[&dep, &app])).0, 200);
}

#[test]
fn bad_paths_and_urls_are_refused() {
    let c = Cache::start(1 << 30);
    let it = Item::with_nar_on(&c, "ok", b"content");
    let good = it.narinfo(&[]);
    let cases = [
        good.replace(
            &format!("/nix/store/{}", it.base),
            &format!("/nix/store/{}-..", it.hash_part()),
        ),
        good.replace(
            &format!("/nix/store/{}", it.base),
            &format!("/nix/store/{}-a/b", it.hash_part()),
        ),
        good.replace(
            &format!("/nix/store/{}", it.base),
            &format!("/nix/store/../{}", it.base),
        ),
        good.replace(&format!("URL: nar/{}", it.file()), "URL: ../index.sqlite"),
        good.replace(
            &format!("URL: nar/{}", it.file()),
            &format!("URL: nar/../../{}", it.file()),
        ),
        good.replace(
            &format!("URL: nar/{}", it.file()),
            &format!("URL: http://elsewhere/nar/{}", it.file()),
        ),
        good.replace("Compression: none", "Compression: bzip2"),
        good.replace("References: ", "References: ../../etc"),
    ];
    for text in &cases {
        let (s, msg) = it.put_narinfo(&c, text);
        assert_eq!(s, 400, "accepted:\n{text}\n{msg}");
    }
    // A narinfo uploaded under another path's hash part.
    let (s, msg) = put(&c, &format!("/{}.narinfo", "1".repeat(32)), good.as_bytes());
    assert_eq!(s, 400, "{msg}");
    for path in [
        "/nar/../index.sqlite",
        "/nar/..%2Findex.sqlite",
        "/index.sqlite",
        "/store/x.narinfo",
        "/../x.narinfo",
    ] {
        assert_eq!(put(&c, path, b"x").0, 400, "PUT {path}");
        let s = req(&c.addr, "GET", path, &[], b"").0;
        assert!(s == 404 || s == 400, "GET {path} -> {s}");
    }
    assert_eq!(it.get_narinfo(&c), 404);
    assert!(c.files("store").is_empty());
    assert_eq!(it.put_narinfo(&c, &good).0, 200);
}

#[test]
fn uploads_need_the_token() {
    let c = Cache::start(1 << 30);
    let it = Item::new("secret", b"payload");
    let path = format!("/nar/{}", it.file());
    let (s, head, _) = req(&c.addr, "PUT", &path, &[], &it.nar);
    assert_eq!(s, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    assert_eq!(req(&c.addr, "PUT", &path, &[auth("wrong")], &it.nar).0, 401);
    assert_eq!(
        req(
            &c.addr,
            "PUT",
            &format!("/{}.narinfo", it.hash_part()),
            &[auth("")],
            b"x"
        )
        .0,
        401
    );
    assert_eq!(req(&c.addr, "PUT", "/_pcr/pins/x", &[], b"{}").0, 401);
    assert!(c.files("store/nar").is_empty());
}

#[test]
fn oversized_uploads_are_refused_before_the_body() {
    let c = Cache::start(1 << 20);
    // 10 GiB announced with Expect: 100-continue: refused from the header alone.
    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (k, v) = auth(TOKEN);
    let head = format!(
        "PUT /nar/{}.nar HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n{k}: {v}\r\n\r\n",
        "1".repeat(52),
        10u64 << 30
    );
    let start = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // Chunked body without a length grows past the limit: refused while streaming.
    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "PUT /nar/{}2.nar HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{k}: {v}\r\n\r\n",
        "0".repeat(51)
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..40 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    c.assert_tmp_empties();
    assert!(c.files("store/nar").is_empty());
}

#[test]
fn concurrent_identical_uploads_end_with_one_copy() {
    let c = Cache::start(1 << 30);
    let it = Item::new("shared", &vec![9u8; 200_000]);
    let text = it.narinfo(&[]);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let a = it.put_nar(&c).0;
                    let b = it.put_narinfo(&c, &text).0;
                    (a, b)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), (200, 200));
        }
    });
    assert_eq!(c.files("store/nar"), vec![it.file()]);
    assert_eq!(
        c.files("store"),
        vec![format!("{}.narinfo", it.hash_part())]
    );
    c.assert_tmp_empties();
    let (_, _, m) = req(&c.addr, "GET", "/metrics", &[], b"");
    assert!(String::from_utf8(m).unwrap().contains("cache_paths 1\n"));
    // Another NAR under the same store path is a conflict, not an overwrite.
    let mut other = Item::new("shared", b"different build output");
    other.base = it.base.clone();
    assert_eq!(other.put_nar(&c).0, 200);
    let (s, msg) = other.put_narinfo(&c, &other.narinfo(&[]));
    assert_eq!(s, 409, "{msg}");
}

#[test]
fn pin_api_validates_names_and_paths() {
    let c = Cache::start(1 << 30);
    let it = Item::with_nar_on(&c, "pinned", b"x");
    assert_eq!(it.put_narinfo(&c, &it.narinfo(&[])).0, 200);
    let body = format!(r#"{{"paths": ["/nix/store/{}"]}}"#, it.base);
    let (s, _, b) = req(
        &c.addr,
        "PUT",
        "/_pcr/pins/gen-7",
        &[auth(TOKEN)],
        body.as_bytes(),
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = req(&c.addr, "GET", "/_pcr/pins", &[auth(TOKEN)], b"");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["pins"]["gen-7"][0], format!("/nix/store/{}", it.base));
    assert_eq!(
        req(
            &c.addr,
            "PUT",
            "/_pcr/pins/bad%20name",
            &[auth(TOKEN)],
            body.as_bytes()
        )
        .0,
        400
    );
    assert_eq!(
        req(
            &c.addr,
            "PUT",
            "/_pcr/pins/..",
            &[auth(TOKEN)],
            body.as_bytes()
        )
        .0,
        400
    );
    assert_eq!(
        req(&c.addr, "PUT", "/_pcr/pins/g", &[auth(TOKEN)], b"not json").0,
        400
    );
    assert_eq!(
        req(
            &c.addr,
            "PUT",
            "/_pcr/pins/g",
            &[auth(TOKEN)],
            br#"{"paths": ["/etc/passwd"]}"#
        )
        .0,
        400
    );
    assert_eq!(
        req(&c.addr, "DELETE", "/_pcr/pins/gen-7", &[auth(TOKEN)], b"").0,
        200
    );
    assert_eq!(
        req(&c.addr, "DELETE", "/_pcr/pins/gen-7", &[auth(TOKEN)], b"").0,
        404
    );
}

/// Issue 14 point 3, played: an upload-token holder tries to replace a
/// path the cache already serves with other content, by every route the
/// protocol offers (a new NAR under the same store path; the original NAR
/// name with other bytes; the same narinfo claiming the other NAR's
/// hashes). Each is refused and the original narinfo and NAR are served
/// byte for byte as before.
#[test]
fn an_existing_path_is_never_replaced() {
    let c = Cache::start(1 << 30);
    let good = Item::with_nar_on(&c, "victim", b"the build CI made");
    assert_eq!(good.put_narinfo(&c, &good.narinfo(&[])).0, 200);
    let get = |path: &str| {
        let (s, _, b) = req(&c.addr, "GET", path, &[], b"");
        assert_eq!(s, 200, "{path}");
        b
    };
    let narinfo_path = format!("/{}.narinfo", good.hash_part());
    let served_narinfo = get(&narinfo_path);
    let served_nar = get(&format!("/nar/{}", good.file()));
    assert_eq!(served_nar, good.nar);

    // The same store path with a poisoned NAR.
    let mut evil = Item::new("victim", b"a backdoor");
    evil.base = good.base.clone();
    assert_eq!(evil.put_nar(&c).0, 200, "an unreferenced NAR is harmless");
    let (s, msg) = evil.put_narinfo(&c, &evil.narinfo(&[]));
    assert_eq!(s, 409, "{msg}");
    assert!(
        msg.contains("already stored with a different NarHash"),
        "{msg}"
    );

    // The original NAR's name with other bytes: its name is its hash.
    let (s, msg) = put(&c, &format!("/nar/{}", good.file()), &evil.nar);
    assert_eq!(s, 400, "{msg}");

    // The narinfo naming the original NAR but the poisoned hashes.
    let lying = good
        .narinfo(&[])
        .replace(&good.nar_hash.to_string(), &evil.nar_hash.to_string());
    let (s, msg) = good.put_narinfo(&c, &lying);
    assert!(s == 400 || s == 409, "{s} {msg}");

    // Sending the original again is a no-op.
    assert_eq!(good.put_narinfo(&c, &good.narinfo(&[])).0, 200);

    assert_eq!(get(&narinfo_path), served_narinfo, "narinfo unchanged");
    assert_eq!(
        get(&format!("/nar/{}", good.file())),
        good.nar,
        "NAR unchanged"
    );
}

/// Per-project upload tokens: uploads are recorded as the project's, and a
/// project's token cannot replace or delete a pin that is not its own (so
/// it cannot make gc collect another project's live closures); the
/// all-projects token can.
#[test]
fn project_tokens_record_their_uploads_and_touch_only_their_own_pins() {
    const ALL: &str = "all-projects-token-0001";
    const SHOP: &str = "shop-upload-token-0001";
    const BLOG: &str = "blog-upload-token-0001";
    let tokens = cache::UploadTokens::parse(
        &format!("{ALL}\nshop {SHOP}\nblog {BLOG}\n"),
        std::path::Path::new("tokens"),
    )
    .unwrap();
    let c = Cache::start_with(1 << 30, |mut cfg| {
        cfg.upload_tokens = tokens;
        cfg
    });
    let as_who = |token: &str, method: &str, path: &str, body: &[u8]| {
        let (s, _, b) = req(&c.addr, method, path, &[auth(token)], body);
        (s, String::from_utf8_lossy(&b).into_owned())
    };
    let shop_path = Item::new("shop-app", b"shop's build");
    assert_eq!(
        as_who(
            SHOP,
            "PUT",
            &format!("/nar/{}", shop_path.file()),
            &shop_path.nar
        )
        .0,
        200
    );
    let (s, m) = as_who(
        SHOP,
        "PUT",
        &format!("/{}.narinfo", shop_path.hash_part()),
        shop_path.narinfo(&[]).as_bytes(),
    );
    assert_eq!(s, 200, "{m}");
    let all_path = Item::new("shared-lib", b"uploaded with the all-projects token");
    assert_eq!(
        as_who(
            ALL,
            "PUT",
            &format!("/nar/{}", all_path.file()),
            &all_path.nar
        )
        .0,
        200
    );
    assert_eq!(
        as_who(
            ALL,
            "PUT",
            &format!("/{}.narinfo", all_path.hash_part()),
            all_path.narinfo(&[]).as_bytes()
        )
        .0,
        200
    );
    let store = cache::store::Store::open(&c.data, "/nix/store", None).unwrap();
    assert_eq!(
        store.uploader(&shop_path.base).unwrap().as_deref(),
        Some("shop")
    );
    assert_eq!(store.uploader(&all_path.base).unwrap(), None);

    let pin = |p: &Item| format!(r#"{{"paths": ["/nix/store/{}"]}}"#, p.base);
    assert_eq!(
        as_who(
            SHOP,
            "PUT",
            "/_pcr/pins/shop-gen-1",
            pin(&shop_path).as_bytes()
        )
        .0,
        200
    );
    assert_eq!(
        as_who(ALL, "PUT", "/_pcr/pins/gen-9", pin(&all_path).as_bytes()).0,
        200
    );
    // blog plays the attacker: repoint, then delete, shop's pin; delete
    // the all-projects pin.
    let (s, m) = as_who(
        BLOG,
        "PUT",
        "/_pcr/pins/shop-gen-1",
        pin(&all_path).as_bytes(),
    );
    assert_eq!(s, 403, "{m}");
    assert!(
        m.contains("pin \"shop-gen-1\" belongs to project shop"),
        "{m}"
    );
    assert_eq!(as_who(BLOG, "DELETE", "/_pcr/pins/shop-gen-1", b"").0, 403);
    let (s, m) = as_who(SHOP, "DELETE", "/_pcr/pins/gen-9", b"");
    assert_eq!(s, 403, "{m}");
    assert!(m.contains("belongs to the all-projects token"), "{m}");
    let (_, _, body) = req(&c.addr, "GET", "/_pcr/pins", &[auth(ALL)], b"");
    let pins: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        pins["pins"],
        serde_json::json!({
            "gen-9": [format!("/nix/store/{}", all_path.base)],
            "shop-gen-1": [format!("/nix/store/{}", shop_path.base)],
        })
    );
    // The owner may change its pin; the all-projects token may remove it.
    assert_eq!(
        as_who(
            SHOP,
            "PUT",
            "/_pcr/pins/shop-gen-1",
            pin(&all_path).as_bytes()
        )
        .0,
        200
    );
    assert_eq!(as_who(ALL, "DELETE", "/_pcr/pins/shop-gen-1", b"").0, 200);
    // A wrong token is still refused outright.
    assert_eq!(
        as_who(
            "blog-upload-token-0002",
            "PUT",
            "/_pcr/pins/x",
            pin(&shop_path).as_bytes()
        )
        .0,
        401
    );
}
