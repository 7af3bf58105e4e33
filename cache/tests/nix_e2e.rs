//! End-to-end tests with Debian's real nix client against the real `cache`
//! binary: push, pull with and without the right key, tampering, tokens,
//! gc with pins, crash during upload, and signature compatibility.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn narinfo_file(env: &Env, store_path: &str) -> PathBuf {
    let base = store_path.strip_prefix("/nix/store/").unwrap();
    env.data_dir()
        .join("store")
        .join(format!("{}.narinfo", &base[..32]))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Builds the `chain_expr(salt, kib)` closure into the store `src` of `env`;
/// returns `src` and the top path.
fn built_chain(env: &Env, salt: &str, kib: u32) -> (PathBuf, String) {
    let src = env.path().join("src");
    let top = env.build(&src, "chain.nix", &chain_expr(salt, kib));
    (src, top)
}

/// Pushes `top` from `src` to `server` with `compression`; it succeeds.
fn push_ok(env: &Env, src: &Path, server: &Server, compression: &str, top: &str) {
    let url = format!("{}?compression={compression}", server.url());
    let out = env.push(src, &url, &[top]);
    assert!(out.status.success(), "{compression} push: {}", stderr(&out));
}

/// Pulls `path` from `server` into the store `dst` under `env`, trusting
/// `env`'s own key.
fn pull_from(env: &Env, server: &Server, dst: &str, path: &str) -> std::process::Output {
    env.pull(
        &server.url(),
        &env.path().join(dst),
        &env.public_key(),
        &[path],
    )
}

/// A fresh `Env` with `chain_expr(salt, kib)` built in its store `src`
/// and pushed with `compression` to a cache started for it: the env, `src`,
/// the top path and the running cache.
fn pushed_chain(salt: &str, kib: u32, compression: &str) -> (Env, PathBuf, String, Server) {
    let env = Env::new();
    let (src, top) = built_chain(&env, salt, kib);
    let server = Server::start(&env, &[]);
    push_ok(&env, &src, &server, compression, &top);
    (env, src, top, server)
}

/// `cache verify` with `args` finds nothing wrong.
fn assert_verifies(env: &Env, args: &[&str]) {
    let out = cache_cmd(env, &[&["verify"], args].concat());
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn push_then_pull_with_right_key_and_refuse_wrong_key() {
    let env = Env::new();
    let (src, top) = built_chain(&env, "e2e", 64);
    let paths = closure(&env, &src, &top);
    assert_eq!(paths.len(), 3);
    let server = Server::start(&env, &[]);

    let start = Instant::now();
    let out = env.push(&src, &format!("{}?compression=zstd", server.url()), &[&top]);
    let push_time = start.elapsed();
    assert!(out.status.success(), "push: {}", stderr(&out));
    // 100-continue is answered at once: no 1 s stall per PUT.
    assert!(
        push_time < Duration::from_secs(2),
        "push of 3 paths took {push_time:?}"
    );
    for p in &paths {
        assert!(narinfo_file(&env, p).exists(), "{p} not stored");
    }

    // Pull into another store root trusting our key; nix verifies content and signatures.
    let dst = env.path().join("dst");
    let out = env.pull(&server.url(), &dst, &env.public_key(), &[&top]);
    assert!(out.status.success(), "pull: {}", stderr(&out));
    let mut verify = env.nix("nix");
    verify
        .args(["store", "verify", "-r", "--store"])
        .arg(&dst)
        .args(["--option", "trusted-public-keys", &env.public_key(), &top]);
    let out = env.run(&mut verify, Duration::from_secs(30));
    assert!(out.status.success(), "store verify: {}", stderr(&out));

    // A client trusting another key refuses our paths.
    let other = env.path().join("other-key");
    let out = std::process::Command::new(BIN)
        .args(["keygen", "other-1", "--out-dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let other_pk = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let dst2 = env.path().join("dst2");
    let out = env.pull(&server.url(), &dst2, &other_pk, &[&top]);
    assert!(!out.status.success(), "pull with a wrong key succeeded");
    assert!(
        stderr(&out).contains("lacks a valid signature"),
        "{}",
        stderr(&out)
    );

    // Pushing again uploads nothing new and still succeeds.
    push_ok(&env, &src, &server, "zstd", &top);

    let (status, metrics) = http(&server.addr, "GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("cache_uploads_total{kind=\"narinfo\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("cache_paths 3"), "{metrics}");

    assert_verifies(
        &env,
        &["--key-file", env.secret_key_file().to_str().unwrap()],
    );
}

#[test]
fn xz_and_uncompressed_pushes_are_accepted() {
    let (env, _, top, server) = pushed_chain("comp", 16, "xz");
    let text = std::fs::read_to_string(narinfo_file(&env, &top)).unwrap();
    assert!(
        text.contains("Compression: xz\n") && text.contains(".nar.xz\n"),
        "{text}"
    );
    let dst = env.path().join("dst");
    let out = env.pull(&server.url(), &dst, &env.public_key(), &[&top]);
    assert!(out.status.success(), "pull: {}", stderr(&out));

    let (env2, _, top2, server2) = pushed_chain("none", 16, "none");
    let text = std::fs::read_to_string(narinfo_file(&env2, &top2)).unwrap();
    assert!(text.contains("Compression: none\n"), "{text}");
    let out = pull_from(&env2, &server2, "dst", &top2);
    assert!(out.status.success(), "pull: {}", stderr(&out));
}

#[test]
fn tampered_narinfo_and_nar_are_refused_by_nix_and_reported_by_verify() {
    let env = Env::new();
    let (src, top) = built_chain(&env, "tamper", 32);
    let paths = closure(&env, &src, &top);
    let leaf = paths.iter().find(|p| p.contains("-leaf-")).unwrap().clone();
    let server = Server::start(&env, &[]);
    push_ok(&env, &src, &server, "zstd", &top);

    // Tamper the top narinfo: claim another NarSize (the signature no longer matches).
    let f = narinfo_file(&env, &top);
    let text = std::fs::read_to_string(&f).unwrap();
    let size_line = text
        .lines()
        .find(|l| l.starts_with("NarSize: "))
        .unwrap()
        .to_owned();
    std::fs::write(&f, text.replace(&size_line, "NarSize: 12345")).unwrap();
    let out = pull_from(&env, &server, "dst-a", &top);
    assert!(
        !out.status.success(),
        "pull of a tampered narinfo succeeded"
    );
    // The untouched leaf still pulls: the cache as a whole is fine.
    let out = pull_from(&env, &server, "dst-leaf", &leaf);
    assert!(out.status.success(), "pull of leaf: {}", stderr(&out));

    // Tamper the leaf NAR: flip one byte of the compressed file.
    let leaf_info = std::fs::read_to_string(narinfo_file(&env, &leaf)).unwrap();
    let url = leaf_info
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    let nar = env.data_dir().join("store").join(url);
    let mut bytes = std::fs::read(&nar).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&nar, &bytes).unwrap();
    let out = pull_from(&env, &server, "dst-leaf2", &leaf);
    assert!(!out.status.success(), "pull of a tampered NAR succeeded");

    let key = env.secret_key_file();
    let out = cache_cmd(&env, &["verify", "--key-file", key.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    let top_base = top.strip_prefix("/nix/store/").unwrap();
    let leaf_base = leaf.strip_prefix("/nix/store/").unwrap();
    assert!(
        report.contains(&format!("BAD {top_base}: narinfo file differs")),
        "{report}"
    );
    assert!(report.contains(&format!("BAD {leaf_base}: ")), "{report}");

    // Quarantine moves the bad paths and everything that references them.
    let out = cache_cmd(
        &env,
        &[
            "verify",
            "--quarantine",
            "--key-file",
            key.to_str().unwrap(),
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(report.matches("quarantined ").count(), 3, "{report}");
    let out = cache_cmd(&env, &["verify", "--key-file", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!narinfo_file(&env, &top).exists());
}

#[test]
fn push_with_wrong_or_missing_token_fails_fast_and_stores_nothing() {
    let env = Env::new();
    let (src, top) = built_chain(&env, "token", 8);
    let server = Server::start(&env, &[]);
    for pw in ["wrong-token", ""] {
        if pw.is_empty() {
            std::fs::write(env.path().join("netrc"), "").unwrap();
        } else {
            env.set_netrc_password(pw);
        }
        let start = Instant::now();
        let out = env.push(&src, &format!("{}?compression=zstd", server.url()), &[&top]);
        assert!(!out.status.success(), "push with token {pw:?} succeeded");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "push failure took {:?}",
            start.elapsed()
        );
        assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    }
    let stored: Vec<_> = std::fs::read_dir(env.data_dir().join("store/nar"))
        .unwrap()
        .collect();
    assert!(stored.is_empty());
    assert!(!narinfo_file(&env, &top).exists());
}

#[test]
fn gc_keeps_pinned_closures_and_removes_the_rest() {
    let env = Env::new();
    let src = env.path().join("src");
    let kept = env.build(&src, "kept.nix", &chain_expr("kept", 8));
    let gone = env.build(&src, "gone.nix", &chain_expr("gone", 8));
    let server = Server::start(&env, &[]);
    let out = env.push(
        &src,
        &format!("{}?compression=zstd", server.url()),
        &[&kept, &gone],
    );
    assert!(out.status.success(), "push: {}", stderr(&out));

    // CI pins over HTTP with the upload token.
    let body = format!(r#"{{"paths": ["{kept}"]}}"#);
    assert_eq!(
        http(
            &server.addr,
            "PUT",
            "/_pcr/pins/gen-1",
            None,
            body.as_bytes()
        )
        .0,
        401
    );
    let (status, resp) = http(
        &server.addr,
        "PUT",
        "/_pcr/pins/gen-1",
        Some(TOKEN),
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{resp}");
    let missing = r#"{"paths": ["/nix/store/00000000000000000000000000000000-nope"]}"#;
    assert_eq!(
        http(
            &server.addr,
            "PUT",
            "/_pcr/pins/gen-2",
            Some(TOKEN),
            missing.as_bytes()
        )
        .0,
        400
    );

    // Dry run by default.
    let out = cache_cmd(&env, &["gc", "--grace", "0s"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("would delete") && text.contains("dry run"),
        "{text}"
    );
    assert!(narinfo_file(&env, &gone).exists());

    let out = cache_cmd(&env, &["gc", "--grace", "0s", "--yes"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    for p in closure(&env, &src, &gone) {
        assert!(!narinfo_file(&env, &p).exists(), "{p} survived gc: {text}");
    }
    for p in closure(&env, &src, &kept) {
        assert!(narinfo_file(&env, &p).exists(), "{p} was collected: {text}");
    }
    let out = pull_from(&env, &server, "dst", &kept);
    assert!(out.status.success(), "pull after gc: {}", stderr(&out));
    assert_verifies(&env, &[]);

    // A grace period protects fresh uploads even when unpinned.
    assert_eq!(
        http(&server.addr, "DELETE", "/_pcr/pins/gen-1", Some(TOKEN), b"").0,
        200
    );
    let out = cache_cmd(&env, &["gc", "--grace", "1h", "--yes"]);
    assert!(out.status.success());
    assert!(narinfo_file(&env, &kept).exists());

    // CLI pin, then unpin and collect everything.
    let out = cache_cmd(&env, &["pin", "cli-pin", &kept]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cache_cmd(&env, &["gc", "--grace", "0s", "--yes"]);
    assert!(out.status.success());
    assert!(narinfo_file(&env, &kept).exists());
    assert!(cache_cmd(&env, &["unpin", "cli-pin"]).status.success());
    assert!(
        cache_cmd(&env, &["gc", "--grace", "0s", "--yes"])
            .status
            .success()
    );
    assert!(!narinfo_file(&env, &kept).exists());
    assert_eq!(
        std::fs::read_dir(env.data_dir().join("store/nar"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn crash_during_upload_leaves_nothing_half_stored() {
    use std::io::Write;
    let env = Env::new();
    let mut server = Server::start(&env, &[]);
    // Start a 64 MiB NAR upload, send part of it, then SIGKILL the server.
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    let name = format!("{}.nar", "1".repeat(52));
    let head = format!(
        "PUT /nar/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nAuthorization: Basic {}\r\n\r\n",
        64 << 20,
        {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(format!("ci:{TOKEN}"))
        }
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![7u8; 4 << 20]).unwrap();
    // Wait until the partial upload reached the temp dir.
    let tmp = env.data_dir().join("tmp");
    let start = Instant::now();
    while std::fs::read_dir(&tmp).unwrap().next().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "upload never reached tmp/"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    assert_eq!(
        std::fs::read_dir(env.data_dir().join("store/nar"))
            .unwrap()
            .count(),
        0
    );
    // Restart: the leftover temp file is removed; verify finds nothing wrong.
    let _server = Server::start(&env, &[]);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    assert_verifies(&env, &[]);
}

#[test]
fn our_signature_equals_nix_store_sign() {
    let (env, src, top, _server) = pushed_chain("sig", 4, "zstd");
    // nix signs the same path with the same key in the source store.
    let mut sign = env.nix("nix");
    sign.args(["store", "sign", "--store"])
        .arg(&src)
        .arg("--key-file")
        .arg(env.secret_key_file())
        .arg(&top);
    assert!(env.run(&mut sign, Duration::from_secs(30)).status.success());
    let mut info = env.nix("nix");
    info.args(["path-info", "--json", "--store"])
        .arg(&src)
        .arg(&top);
    let out = env.run(&mut info, Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nix_sig = v[0]["signatures"][0].as_str().unwrap().to_owned();
    let ours = std::fs::read_to_string(narinfo_file(&env, &top)).unwrap();
    assert!(
        ours.contains(&format!("Sig: {nix_sig}\n")),
        "nix: {nix_sig}\nours:\n{ours}"
    );
    // And our NAR dump / hash of the built output equals nix's NarHash.
    let real = src.join(top.trim_start_matches('/'));
    let mut nar = Vec::new();
    cache::nar::dump(&real, &mut nar).unwrap();
    let nix_hash = cache::hash::Sha256Hash::parse(v[0]["narHash"].as_str().unwrap()).unwrap();
    assert_eq!(nix_hash, cache::hash::Sha256Hash::of(&nar));
    assert_eq!(v[0]["narSize"].as_u64().unwrap(), nar.len() as u64);
}

#[test]
fn sigterm_stops_the_server_cleanly_and_maintenance_needs_an_existing_cache() {
    let env = Env::new();
    let mut server = Server::start(&env, &[]);
    assert_eq!(
        http(&server.addr, "GET", "/nix-cache-info", None, b"").0,
        200
    );
    let status = server
        .proc
        .terminate(Duration::from_secs(10))
        .expect("server ignored SIGTERM");
    assert!(status.success(), "{status:?}");
    let mut c = std::process::Command::new(BIN);
    c.args(["gc", "--data-dir"])
        .arg(env.path().join("no-such-cache"));
    let out = run_with_timeout(&mut c, Duration::from_secs(10));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cache in"),
        "{}",
        stderr(&out)
    );
    assert!(!env.path().join("no-such-cache").exists());
}
