//! The Nix half of the VmSpec contract, checked with the real nix client:
//! the spec JSON a Nix evaluation of `example/hermetic` writes deserializes
//! into `commands::types::VmSpec` and round-trips through the Cap'n Proto
//! struct unchanged; and the Nix test suite (`nix/tests/run.sh`: parse check
//! of every .nix file, library evaluation and error tests, hermetic build)
//! passes, one test per section so a failure names its area.
//!
//! Needs `nix` (Debian's nix-bin 2.8 is enough: no nixpkgs, no network) and
//! `git`; every nix call gets its own NIX_CONF_DIR and XDG_CACHE_HOME in a
//! temp dir (design §9), so /etc/nix and other tests do not interfere.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use commands::common_capnp;
use commands::convert::{vm_spec_from_capnp, vm_spec_to_capnp};
use commands::types::VmSpec;
use testkit::run_ok;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("commands/ has a parent")
        .to_path_buf()
}

/// A temp dir removed on drop; unique per process and call so concurrent
/// test binaries never share one.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "pcr-nix-contract-{tag}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The nix configuration of design §9: no daemon, no sandbox, no
/// substituters, flakes on, an empty local registry.
fn nix_env(dir: &Path) -> (PathBuf, PathBuf) {
    let conf = dir.join("conf");
    let cache = dir.join("cache");
    fs::create_dir_all(&conf).expect("conf dir");
    fs::create_dir_all(&cache).expect("cache dir");
    let registry = dir.join("registry.json");
    fs::write(&registry, r#"{"flakes":[],"version":2}"#).expect("registry");
    fs::write(
        conf.join("nix.conf"),
        format!(
            "build-users-group =\nsandbox = false\nextra-sandbox-paths = /bin /usr /lib /lib64\n\
             substituters =\nexperimental-features = nix-command flakes\nflake-registry = {}\n\
             narinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\n",
            registry.display()
        ),
    )
    .expect("nix.conf");
    (conf, cache)
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("create dir");
    for entry in fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).expect("copy file");
        }
    }
}

/// Cap'n Proto round trip through a serialized message, as on the wire.
fn capnp_round_trip(spec: &VmSpec) -> VmSpec {
    let mut message = capnp::message::Builder::new_default();
    vm_spec_to_capnp(
        spec,
        message.init_root::<common_capnp::vm_spec::Builder<'_>>(),
    );
    let words = capnp::serialize::write_message_to_words(&message);
    let reader =
        capnp::serialize::read_message(&mut words.as_slice(), capnp::message::ReaderOptions::new())
            .expect("read the serialized message");
    let root = reader
        .get_root::<common_capnp::vm_spec::Reader<'_>>()
        .expect("VmSpec root");
    vm_spec_from_capnp(root).expect("the capnp VmSpec converts back")
}

#[test]
fn hermetic_vm_spec_json_round_trips_through_capnp() {
    let tmp = TempDir::new("roundtrip");
    let (conf, cache) = nix_env(&tmp.0);
    let flake = tmp.0.join("hermetic");
    copy_dir(&repo_root().join("example/hermetic"), &flake);
    run_ok(
        "git init",
        Command::new("git")
            .arg("-C")
            .arg(&flake)
            .args(["init", "-q"]),
    );
    run_ok(
        "git add",
        Command::new("git")
            .arg("-C")
            .arg(&flake)
            .args(["add", "-A"]),
    );
    run_ok(
        "git commit",
        Command::new("git").arg("-C").arg(&flake).args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@localhost",
            "commit",
            "-qm",
            "hermetic example",
        ]),
    );

    // Nix writes the JSON to a file; the test reads what it wrote.
    let json_path = tmp.0.join("specs.json");
    let json_file = fs::File::create(&json_path).expect("create specs.json");
    let status = Command::new("nix")
        .args(["eval", "--json"])
        .arg(format!("{}#procurator.vmSpecs", flake.display()))
        .env("NIX_CONF_DIR", &conf)
        .env("XDG_CACHE_HOME", &cache)
        .env_remove("NIX_PATH")
        .stdout(Stdio::from(json_file))
        .stderr(Stdio::inherit())
        .status()
        .expect("run nix eval");
    assert!(
        status.success(),
        "nix eval of procurator.vmSpecs failed: {status}"
    );
    let json = fs::read_to_string(&json_path).expect("read specs.json");

    let raw: Vec<serde_json::Value> = serde_json::from_str(&json).expect("a JSON list");
    let specs: Vec<VmSpec> = serde_json::from_str(&json).unwrap_or_else(|e| {
        panic!("Nix's spec JSON does not deserialize into VmSpec: {e}\n{json}")
    });
    let names: Vec<&str> = specs.iter().map(|s| s.name().as_str()).collect();
    assert_eq!(names, ["db-0", "web-0", "web-1"]);

    for (spec, raw) in specs.iter().zip(&raw) {
        let back = capnp_round_trip(spec);
        assert_eq!(&back, spec, "capnp round trip changed {}", spec.name());
        // Unchanged all the way: the Rust side writes back exactly the JSON
        // Nix wrote (same fields, same values, nothing dropped or added).
        assert_eq!(
            &serde_json::to_value(&back).expect("serialize"),
            raw,
            "JSON round trip of {}",
            spec.name()
        );

        assert_eq!(spec.content_hash().len(), 64, "sha256 hex");
        assert!(spec.content_hash().bytes().all(|c| c.is_ascii_hexdigit()));
        let group = spec
            .name()
            .as_str()
            .rsplit_once('-')
            .expect("<group>-<index>")
            .0;
        assert_eq!(spec.labels().get("group").map(String::as_str), Some(group));
        assert!(spec.initrd_path().is_some() && spec.disk_image_path().is_some());
    }
    // Replicas share their image; their specs differ in name and command line.
    assert_eq!(specs[1].toplevel(), specs[2].toplevel());
    assert_ne!(specs[1].content_hash(), specs[2].content_hash());
    assert_eq!(specs[1].network_allowed_domains(), ["example.com"]);
}

/// A group's update policy and health check as nix/lib's `evalCluster`
/// writes them are what the Rust side reads: same names, same values, and
/// back to the same JSON after a Cap'n Proto round trip.
#[test]
fn update_policy_and_health_check_from_nix_round_trip() {
    let tmp = TempDir::new("policy");
    let (conf, cache) = nix_env(&tmp.0);
    let lib = repo_root().join("nix/lib");
    let expr = format!(
        r#"let
          lib = import {lib} {{ }};
          store = n: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-${{n}}";
        in (lib.evalCluster {{
          mkImage = {{ group, profile }}: {{
            toplevel = store "system"; kernelPath = store "kernel"; initrdPath = "";
            diskImagePath = ""; cmdline = "console=ttyS0";
          }};
          vms.web = {{
            profile = {{ }};
            replicas = 2;
            update = {{
              maxParallel = 1; minHealthyMs = 10000; autoRevert = true;
              healthCheck = {{ consoleLine = "READY"; deadlineMs = 30000; }};
            }};
          }};
          vms.db = {{ profile = {{ }}; }};
        }}).vmSpecs"#,
        lib = lib.display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .env("NIX_CONF_DIR", &conf)
        .env("XDG_CACHE_HOME", &cache)
        .env_remove("NIX_PATH")
        .output()
        .expect("run nix-instantiate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("a JSON list");
    let specs: Vec<VmSpec> = serde_json::from_slice(&out.stdout).expect("VmSpecs");
    let names: Vec<&str> = specs.iter().map(|s| s.name().as_str()).collect();
    assert_eq!(names, ["db-0", "web-0", "web-1"]);
    assert_eq!(specs[0].update(), None, "db has no policy");
    assert_eq!(specs[0].health_check(), None);
    let u = specs[1].update().expect("web's policy");
    assert_eq!(
        (
            u.group.as_str(),
            u.max_parallel,
            u.min_healthy_ms,
            u.auto_revert
        ),
        ("web", 1, 10_000, true)
    );
    let hc = specs[1].health_check().expect("web's check");
    assert_eq!(
        (hc.console_line.as_str(), hc.deadline_ms),
        ("READY", 30_000)
    );
    for (spec, raw) in specs.iter().zip(&raw) {
        let back = capnp_round_trip(spec);
        assert_eq!(&back, spec);
        assert_eq!(&serde_json::to_value(&back).expect("serialize"), raw);
    }
}

/// Runs one section of nix/tests/run.sh and shows its output on failure.
fn run_nix_section(section: &str) {
    let script = repo_root().join("nix/tests/run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(section)
        .output()
        .expect("run nix/tests/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nix/tests/run.sh {section} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: "),
        "nix/tests/run.sh {section} reported no passing check:\n{stdout}"
    );
}

#[test]
fn every_nix_file_parses() {
    run_nix_section("parse");
}

#[test]
fn hermetic_lib_is_a_copy_of_nix_lib() {
    run_nix_section("sync");
}

#[test]
fn nix_library_evaluation_tests() {
    run_nix_section("eval");
}

#[test]
fn nix_library_validation_errors() {
    run_nix_section("errors");
}

#[test]
fn hermetic_example_builds_and_changes_one_vm() {
    run_nix_section("hermetic");
}
