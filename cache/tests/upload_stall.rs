//! Regression (fault suite, cache killed mid-upload): nix 2.8 retries a
//! PUT whose connection broke without re-sending the body, so a restarted
//! cache waited forever on the declared Content-Length and the CI job
//! hung. An upload body that sends nothing for `upload_stall_timeout` is
//! now refused with a 4xx (a 5xx would make nix retry the same way).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_cache");

#[test]
fn a_put_whose_body_never_comes_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["keygen", "stall-1", "--out-dir"])
        .arg(dir.path().join("key"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut config = cache::Config::new(dir.path().join("data"), dir.path().join("key/secret-key"))
        .with_upload_token("tok");
    config.upload_stall_timeout = Duration::from_millis(300);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(cache::run(config, listener, stop.clone()));
        // "x:tok" in base64: any login, the token as password.
        let auth = "eDp0b2s=";
        for (path, len) in [
            (
                "/nar/1v82fgdjqkd91dzkbx9w8n55nf5b9y90b28vdql3ypbg1gf65hzn.nar.zst",
                25_000_000,
            ),
            ("/6dc8p4k5xa4jmk6fv0ws4bnczk331wvx.narinfo", 400),
        ] {
            let mut s = loop {
                if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let t = Instant::now();
            let req = format!(
                "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            let answer = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).into_owned();
                    if n == 0 || text.contains("HTTP/1.1 4") || text.contains("HTTP/1.1 5") {
                        return text;
                    }
                }
            })
            .await
            .expect("the cache answers a stalled upload");
            assert!(answer.contains("HTTP/1.1 400"), "{path}: {answer}");
            assert!(answer.contains("no upload data"), "{path}: {answer}");
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        }
        stop.cancel();
        let _ = server.await;
    });
}
