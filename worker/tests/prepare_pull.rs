//! `CloudHypervisorBackend::prepare` pulls a spec's closure from a signed
//! binary cache into the worker's own store root with the real nix client:
//! only the cache's key is trusted, valid paths are skipped, concurrent
//! VMs sharing a closure pull it once, and a failed pull says why.
//! (The HTTP cache is exercised end to end in ci_service/tests/e2e.rs; a
//! `file://` cache signed by nix keeps this test self-contained.)

use std::process::Command;

use repo_outils::testing::HermeticNix;
use worker::dto::VmSpec;
use worker::vmm::{ChBackendConfig, CloudHypervisorBackend, VmmBackend, VmmError};

fn spec(name: &str, kernel: &str, disk: &str) -> VmSpec {
    testkit::fixtures::spec_with(name, "h", |f| {
        f.toplevel = disk.into();
        f.kernel_path = kernel.into();
        f.disk_image_path = disk.into();
        f.cmdline = String::new();
        f.memory_mb = 64;
    })
}

#[tokio::test]
async fn prepare_pulls_signed_closures_once_into_the_store_root() {
    let h = HermeticNix::new().unwrap();
    let d = h.dir();
    let marker = format!("{}x{}", std::process::id(), commands::telemetry::now_ms());
    std::fs::create_dir_all(d.join("flake")).unwrap();
    std::fs::write(
        d.join("flake/flake.nix"),
        format!(
            r#"{{ outputs = {{ self }}: let
  mk = name: script: derivation {{ inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" script ]; }};
  kernel = mk "kernel-{marker}" ''echo k > $out'';
in {{
  kernel = kernel;
  a = mk "disk-a-{marker}" ''echo ${{kernel}} > $out'';
  b = mk "disk-b-{marker}" ''echo ${{kernel}} > $out'';
}}; }}"#
        ),
    )
    .unwrap();
    let nix = h.nix();
    let f = format!("path:{}", d.join("flake").display());
    let kernel = nix
        .build(&format!("{f}#kernel"), None)
        .await
        .unwrap()
        .remove(0);
    let a = nix.build(&format!("{f}#a"), None).await.unwrap().remove(0);
    let b = nix.build(&format!("{f}#b"), None).await.unwrap().remove(0);

    let st = Command::new("nix-store")
        .args(["--generate-binary-cache-key", "worker-test-1"])
        .arg(d.join("sk"))
        .arg(d.join("pk"))
        .envs(h.env())
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(d.join("pk"))
        .unwrap()
        .trim()
        .to_owned();
    let cache = format!("file://{}", d.join("bc").display());
    nix.copy_to(
        &format!("{cache}?secret-key={}", d.join("sk").display()),
        &[a.clone(), b.clone()],
        "zstd",
        None,
        None,
    )
    .await
    .unwrap();

    // One registry for every backend below, as one worker has.
    let metrics = worker::metrics::WorkerMetrics::default();
    let pulls = |outcome: &str| {
        let s = testkit::metrics::parse(&metrics.registry().render());
        (
            testkit::metrics::value(
                &s,
                "procurator_worker_closure_pull_seconds_count",
                &[("outcome", outcome)],
            ),
            testkit::metrics::value(&s, "procurator_worker_closure_pull_bytes_total", &[]),
        )
    };
    let backend = |root: &str, key: Option<&str>| {
        let mut c = ChBackendConfig::new("/nonexistent/ch".into());
        c.metrics = metrics.clone();
        c.store_root = d.join(root);
        c.closure_source = Some(cache.clone());
        c.closure_public_key = key.map(str::to_owned);
        c.nix = h.nix();
        CloudHypervisorBackend::new(c)
    };

    // Wrong key: the pull fails with the reason, nothing lands.
    let wrong = backend(
        "host-wrong",
        Some("other-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    );
    let err = wrong.prepare(&spec("vm-a", &kernel, &a)).await.unwrap_err();
    assert!(
        matches!(&err, VmmError::Prepare { .. })
            && commands::report::error_chain(&err).contains("signature"),
        "{err}"
    );
    assert!(
        !d.join("host-wrong")
            .join(a.trim_start_matches('/'))
            .exists()
    );
    assert_eq!(
        pulls("failed"),
        (1.0, 0.0),
        "a failed pull is timed, adds no bytes"
    );

    // No key configured: refused before any pull.
    let err = backend("host-nokey", None)
        .prepare(&spec("vm-a", &kernel, &a))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("public key"), "{err}");

    // Two VMs sharing the kernel, prepared concurrently: both succeed and
    // every path is valid in the host's store.
    let host = backend("host-a", Some(&public));
    let (sa, sb) = (spec("vm-a", &kernel, &a), spec("vm-b", &kernel, &b));
    let (ra, rb) = tokio::join!(host.prepare(&sa), host.prepare(&sb));
    ra.unwrap();
    rb.unwrap();
    let host_nix = h.nix().with_store_root(d.join("host-a"));
    assert!(
        host_nix
            .missing_paths(&[kernel.clone(), a.clone(), b.clone()])
            .await
            .unwrap()
            .is_empty()
    );
    host_nix.verify(&[a.clone(), b.clone()]).await.unwrap();
    // What was pulled is counted: at least the two disks' bytes.
    let (ok, bytes) = pulls("ok");
    assert!(ok >= 1.0, "{ok} pulls");
    let disks: u64 = [&a, &b]
        .iter()
        .map(|p| {
            std::fs::metadata(d.join("host-a").join(p.trim_start_matches('/')))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        bytes >= disks as f64,
        "{bytes} bytes counted, the disks alone are {disks}"
    );
    // Already valid: prepare is a no-op even with the cache gone.
    std::fs::remove_dir_all(d.join("bc")).unwrap();
    host.prepare(&spec("vm-a", &kernel, &a)).await.unwrap();
    assert_eq!(pulls("ok"), (ok, bytes), "nothing pulled, nothing counted");
}
