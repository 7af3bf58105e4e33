//! Build logs in the cache with the real nix 2.8 client: `nix store
//! copy-log --to` uploads one, `nix log --store <cache>` reads it back, and
//! the upload defences (token, name, size, no replacement) hold.

mod common;

use std::time::Duration;

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A derivation whose build prints a recognisable line.
const LOUD: &str = r#"derivation {
  name = "loud"; system = "x86_64-linux"; builder = "/bin/sh";
  args = ["-c" "echo building-loud-line-42; /bin/mkdir $out"];
}
"#;

#[test]
fn nix_log_reads_a_build_log_that_copy_log_uploaded() {
    let env = Env::new();
    let src = env.path().join("src");
    let out_path = env.build(&src, "loud.nix", LOUD);
    let mut q = env.nix("nix-store");
    q.arg("--store")
        .arg(&src)
        .args(["-q", "--deriver", &out_path]);
    let out = env.run(&mut q, Duration::from_secs(30));
    assert!(out.status.success(), "deriver: {}", stderr(&out));
    let drv = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(drv.ends_with("-loud.drv"), "{drv}");
    let server = Server::start(&env, &[]);
    // The output goes up as CI sends it; its narinfo names the deriver,
    // which is how `nix log <output>` finds the log.
    let out = env.push(&src, &server.url(), &[&out_path]);
    assert!(out.status.success(), "push: {}", stderr(&out));

    // `nix log` on the output, and `nix-store --read-log` on the .drv
    // itself (nix 2.8's `nix log <drv>` wants the .drv in that store).
    let read_log = || {
        let mut c = env.nix("nix");
        c.args(["log", "--store", &server.url(), &out_path]);
        let by_output = env.run(&mut c, Duration::from_secs(30));
        let mut c = env.nix("nix-store");
        c.args(["--store", &server.url(), "--read-log", &drv]);
        let by_drv = env.run(&mut c, Duration::from_secs(30));
        assert_eq!(by_output.status.success(), by_drv.status.success());
        assert_eq!(by_output.stdout, by_drv.stdout);
        by_output
    };
    // Before any upload nix finds no log.
    assert!(!read_log().status.success());

    // The real client uploads it with the token from netrc.
    let mut c = env.nix("nix");
    c.args(["store", "copy-log", "--store"])
        .arg(&src)
        .args(["--to", &server.url(), &drv]);
    let out = env.run(&mut c, Duration::from_secs(30));
    assert!(out.status.success(), "copy-log: {}", stderr(&out));
    let base = drv.strip_prefix("/nix/store/").unwrap();
    assert!(env.data_dir().join("store/log").join(base).exists());

    let out = read_log();
    assert!(out.status.success(), "nix log: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("building-loud-line-42"), "{text}");

    // Plain HTTP sees text/plain; the same log again is accepted.
    let (status, body) = http(&server.addr, "GET", &format!("/log/{base}"), None, b"");
    assert_eq!(status, 200);
    assert!(body.contains("building-loud-line-42"), "{body}");
    let out = env.run(&mut c, Duration::from_secs(30));
    assert!(out.status.success(), "copy-log again: {}", stderr(&out));

    // Attacks: no token, a wrong token, replacing the log, bad names, a
    // huge log. Each is refused with a reason and the stored log stays.
    let path = format!("/log/{base}");
    assert_eq!(http(&server.addr, "PUT", &path, None, b"forged").0, 401);
    assert_eq!(
        http(
            &server.addr,
            "PUT",
            &path,
            Some("not-the-token-at-all"),
            b"forged"
        )
        .0,
        401
    );
    let (status, msg) = http(&server.addr, "PUT", &path, Some(TOKEN), b"forged log\n");
    assert_eq!(status, 409, "{msg}");
    assert!(msg.contains("already stored"), "{msg}");
    let not_drv = base.strip_suffix(".drv").unwrap();
    for bad in [
        not_drv.to_owned(),
        "..%2Findex.sqlite".to_owned(),
        "../index.sqlite".to_owned(),
        format!("{}-x.drv", "e".repeat(32)),
    ] {
        let (status, msg) = http(
            &server.addr,
            "PUT",
            &format!("/log/{bad}"),
            Some(TOKEN),
            b"x",
        );
        assert_eq!(status, 400, "{bad}: {msg}");
        assert!(msg.contains("invalid build log name"), "{bad}: {msg}");
        assert_eq!(
            http(&server.addr, "GET", &format!("/log/{bad}"), None, b"").0,
            404
        );
    }
    let other = format!("{}-big.drv", "0".repeat(32));
    let msg = announce_huge_put(&server.addr, &format!("/log/{other}"));
    assert!(msg.starts_with("HTTP/1.1 413"), "{msg}");
    assert!(!env.data_dir().join("store/log").join(&other).exists());

    let out = read_log();
    assert!(String::from_utf8_lossy(&out.stdout).contains("building-loud-line-42"));
    let (_, metrics) = http(&server.addr, "GET", "/metrics", None, b"");
    assert!(
        metrics.contains("cache_uploads_total{kind=\"log\"} 2"),
        "{metrics}"
    );
}

/// Sends only the head of a PUT whose Content-Length is one past the log
/// limit: the cache must refuse it from the header, before any body.
fn announce_huge_put(addr: &str, path: &str) -> String {
    use base64::Engine as _;
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{TOKEN}"));
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nExpect: 100-continue\r\n\
         Authorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n",
        cache::MAX_LOG_BYTES + 1
    )
    .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp).into_owned()
}
