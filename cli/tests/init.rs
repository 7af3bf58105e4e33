//! `pcr init` on autonix's fixture repositories: it writes flake.nix and
//! procurator.nix, refuses to overwrite either without `--force` (leaving
//! both untouched), and the cluster it writes evaluates with the real nix
//! and the real Procurator library (nix/lib) to VmSpecs that
//! `commands::types::VmSpec` accepts: one VM group per runnable project.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use commands::types::VmSpec;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A copy of autonix fixture `name` in a temp dir, under its own name.
fn fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    fn copy(src: &Path, dst: &Path) {
        fs::create_dir_all(dst).unwrap();
        for e in fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            let to = dst.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to);
            } else {
                fs::copy(e.path(), &to).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    copy(&repo_root().join("autonix/tests/fixtures").join(name), &dst);
    (tmp, dst)
}

fn pcr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pcr"))
        .args(args)
        // The default must not depend on the machine running the test.
        .env_remove("PCR_PROCURATOR_FLAKE")
        .output()
        .expect("run pcr")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// `nix eval` of the written cluster with the real nix/lib and the fake
/// nixpkgs, in a private nix configuration (no daemon, no network).
fn eval_cluster(tmp: &Path, dir: &Path) -> serde_json::Value {
    let conf = tmp.join("nix-conf");
    fs::create_dir_all(&conf).unwrap();
    fs::write(
        conf.join("nix.conf"),
        "build-users-group =\nsubstituters =\nsandbox = false\nexperimental-features = nix-command\n",
    )
    .unwrap();
    let root = repo_root();
    let expr = format!(
        "import {} {{ flake = {}; procuratorLib = {}; fakeNixpkgs = {}; }}",
        root.join("cli/tests/nix/eval-cluster.nix").display(),
        dir.join("flake.nix").display(),
        root.join("nix/lib/pure.nix").display(),
        root.join("autonix/tests/nix/fake-nixpkgs.nix").display(),
    );
    let out = Command::new("nix")
        .args(["eval", "--json", "--impure", "--expr", &expr])
        .env("NIX_CONF_DIR", &conf)
        .env("XDG_CACHE_HOME", tmp.join("cache"))
        .output()
        .expect("nix must be installed (nix-bin)");
    assert!(
        out.status.success(),
        "nix eval of the cluster failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn init_writes_a_flake_and_a_cluster_that_evaluates_to_valid_vmspecs() {
    let (tmp, dir) = fixture("python-managers");
    let out = pcr(&["init", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    // What it found, the groups it made, and what it could not decide.
    assert!(report.contains("found 6 project(s):"), "{report}");
    assert!(
        report.contains("poetry: python (poetry, poetry/poetry.lock), python 3.11.8 from poetry/.python-version, package orders-api"),
        "{report}"
    );
    assert!(report.contains("VM groups:"), "{report}");
    assert!(
        report.contains("setuppy: no run command found, so no VM group"),
        "{report}"
    );
    assert!(
        report.contains("setuppy: no python version stated anywhere"),
        "{report}"
    );
    let flake = fs::read_to_string(dir.join("flake.nix")).unwrap();
    assert!(flake.contains("inputs.procurator"), "{flake}");
    assert!(
        flake.contains("url = \"github:procurator/procurator?dir=nix\";"),
        "{flake}"
    );
    assert!(dir.join("procurator.nix").exists());

    let v = eval_cluster(tmp.path(), &dir);
    assert_eq!(v["inputs"], serde_json::json!(["nixpkgs", "procurator"]));
    assert!(
        v["closure"]
            .as_str()
            .unwrap()
            .ends_with("-procurator-closure.drv"),
        "{}",
        v["closure"]
    );
    let specs: Vec<VmSpec> = serde_json::from_value(v["vmSpecs"].clone())
        .unwrap_or_else(|e| panic!("vmSpecs are not valid VmSpecs: {e}\n{}", v["vmSpecs"]));
    let names: Vec<String> = specs.iter().map(|s| s.name().to_string()).collect();
    assert_eq!(
        names,
        ["orders-api-0", "pip-0", "pipenv-0", "portal-0", "reports-0"]
    );
    for s in &specs {
        assert_eq!(s.cpu(), 1);
        assert_eq!(s.memory_mb(), 512);
        let group = s.labels()["group"].clone();
        assert_eq!(s.labels()["project"], group);
        assert!(s.cmdline().contains(&format!("systemd.hostname={group}-0")));
    }
    // Each group runs its own package, so each boots something different.
    let mut hashes: Vec<&str> = specs.iter().map(|s| s.content_hash()).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), specs.len());
}

#[test]
fn java_and_monorepo_clusters_evaluate() {
    for (fixture_name, groups, memory) in [
        (
            "java-builds",
            vec!["batch-0", "billing-0", "inventory-0", "orders-0", "shop-0"],
            1024,
        ),
        (
            "rails-monorepo",
            vec!["notifier-0", "rails-monorepo-0", "storefront-0"],
            0,
        ),
    ] {
        let (tmp, dir) = fixture(fixture_name);
        let out = pcr(&["init", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v = eval_cluster(tmp.path(), &dir);
        let specs: Vec<VmSpec> = serde_json::from_value(v["vmSpecs"].clone()).unwrap();
        let names: Vec<String> = specs.iter().map(|s| s.name().to_string()).collect();
        assert_eq!(names, groups, "{fixture_name}");
        if memory > 0 {
            assert!(
                specs.iter().all(|s| s.memory_mb() == memory),
                "{fixture_name}"
            );
        }
    }
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let (_tmp, dir) = fixture("rust-workspace");
    // An existing cluster file alone is enough to refuse, and nothing at
    // all is written then (not even the flake).
    fs::write(dir.join("procurator.nix"), "{ mine = true; }\n").unwrap();
    let out = pcr(&["init", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("procurator.nix exists; pass --force to overwrite it"),
        "{err}"
    );
    assert!(!dir.join("flake.nix").exists());
    assert_eq!(
        fs::read_to_string(dir.join("procurator.nix")).unwrap(),
        "{ mine = true; }\n"
    );
    fs::remove_file(dir.join("procurator.nix")).unwrap();
    fs::write(dir.join("flake.nix"), "{ }\n").unwrap();
    let out = pcr(&["init", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("flake.nix exists"));
    assert_eq!(fs::read_to_string(dir.join("flake.nix")).unwrap(), "{ }\n");
    assert!(!dir.join("procurator.nix").exists());

    let out = pcr(&[
        "init",
        dir.to_str().unwrap(),
        "--force",
        "--procurator-url",
        "path:/opt/procurator/nix",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let flake = fs::read_to_string(dir.join("flake.nix")).unwrap();
    assert!(flake.contains("buildRustPackage"), "{flake}");
    assert!(
        flake.contains("url = \"path:/opt/procurator/nix\";"),
        "{flake}"
    );
    assert!(dir.join("procurator.nix").exists());
}

#[test]
fn init_on_a_missing_directory_says_which() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = pcr(&["init", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot scan {}", missing.display()))
            && err.contains("cannot open scan root"),
        "{err}"
    );
}
