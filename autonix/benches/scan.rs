//! Scan benchmark: generates a 100,000-file tree with 200 projects (all six
//! languages, nested source directories, Dockerfiles and a CI workflow that
//! state versions) in a temp dir, then
//! prints how long `autonix::scan` takes and the peak memory (VmHWM).
//! Run with `cargo bench -p autonix`; the goal is under 1 s.

// The figures printed to stdout are this benchmark's output.
#![allow(clippy::print_stdout)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const PROJECTS: usize = 200;
const FILES: usize = 100_000;

fn manifest(root: &Path, i: usize) -> usize {
    let dir = root.join(format!("svc-{i:03}"));
    fs::create_dir_all(&dir).unwrap();
    let w = |name: &str, text: &str| fs::write(dir.join(name), text).unwrap();
    match i % 6 {
        0 => {
            w(
                "Cargo.toml",
                &format!(
                    "[package]\nname = \"svc{i}\"\nversion = \"0.1.0\"\nrust-version = \"1.75\"\n"
                ),
            );
            w("Cargo.lock", "version = 3\n");
            2
        }
        1 => {
            w("go.mod", &format!("module example.com/svc{i}\n\ngo 1.22\n"));
            w("go.sum", "");
            w("main.go", "package main\n");
            3
        }
        2 => {
            w(
                "package.json",
                &format!(
                    "{{\"name\":\"svc{i}\",\"version\":\"1.0.0\",\"scripts\":{{\"build\":\"tsc\",\"start\":\"node .\"}}}}"
                ),
            );
            w("package-lock.json", "{\"lockfileVersion\": 3}\n");
            w(".nvmrc", "20\n");
            3
        }
        3 => {
            w(
                "pyproject.toml",
                &format!(
                    "[project]\nname = \"svc{i}\"\nversion = \"1.0\"\ndependencies = [\"flask\"]\n"
                ),
            );
            w("uv.lock", "version = 1\n");
            w(
                "Dockerfile",
                "FROM python:3.12-slim\nCOPY . /app\nCMD [\"python\", \"/app/main.py\"]\n",
            );
            3
        }
        4 => {
            w("Gemfile", "ruby \"3.3.0\"\ngem \"rails\"\n");
            w("Gemfile.lock", "RUBY VERSION\n   ruby 3.3.0p0\n");
            2
        }
        _ => {
            w(
                "pom.xml",
                &format!(
                    "<project><artifactId>svc{i}</artifactId><version>1</version></project>\n"
                ),
            );
            1
        }
    }
}

fn generate(root: &Path) -> usize {
    // CI that states versions (read once per scan, applied to every project).
    fs::create_dir_all(root.join(".github/workflows")).unwrap();
    fs::write(
        root.join(".github/workflows/ci.yml"),
        "jobs:\n  test:\n    strategy:\n      matrix:\n        node: [20, 22]\n    steps:\n      - uses: actions/setup-node@v4\n        with:\n          node-version: ${{ matrix.node }}\n      - uses: actions/setup-go@v5\n        with:\n          go-version: '1.22'\n",
    )
    .unwrap();
    let mut files = 1;
    for i in 0..PROJECTS {
        files += manifest(root, i);
    }
    // Spread the remaining files over nested source directories.
    let per_project = (FILES - files) / PROJECTS;
    let mut extra = FILES - files - per_project * PROJECTS;
    for i in 0..PROJECTS {
        let base = root.join(format!("svc-{i:03}/src"));
        let mut n = per_project;
        if extra > 0 {
            n += 1;
            extra -= 1;
        }
        for j in 0..n {
            let dir = base.join(format!("m{}/sub{}", j / 50, (j / 10) % 5));
            if j % 10 == 0 {
                fs::create_dir_all(&dir).unwrap();
            }
            fs::write(dir.join(format!("f{j}.txt")), "x").unwrap();
            files += 1;
        }
    }
    files
}

fn status_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; a plain run is fine too.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    let t = Instant::now();
    let files = generate(&root);
    println!(
        "generated {files} files, {PROJECTS} projects in {:.2?}",
        t.elapsed()
    );

    // Reset the peak-RSS counter so it reflects the scans, not the generator.
    let _ = fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_kib("VmRSS:");
    let mut times: Vec<Duration> = Vec::new();
    let mut scan = None;
    for _ in 0..5 {
        let t = Instant::now();
        let s = autonix::scan(&root).expect("scan");
        times.push(t.elapsed());
        scan = Some(s);
    }
    let scan = scan.unwrap();
    let t = Instant::now();
    let plan = autonix::plan(&scan);
    let flake = autonix::generate(&plan);
    let gen_time = t.elapsed();
    let peak = status_kib("VmHWM:");
    let first = times[0];
    times.sort();
    assert_eq!(scan.projects.len(), PROJECTS, "every project found");
    println!(
        "scan: first {:.1?}, median {:.1?}, best {:.1?} over {} runs ({} projects, {} warnings)",
        first,
        times[times.len() / 2],
        times[0],
        times.len(),
        scan.projects.len(),
        scan.warnings.len()
    );
    println!(
        "plan + generate: {gen_time:.1?} ({} packages, {} bytes of flake.nix)",
        plan.packages.len(),
        flake.len()
    );
    println!("memory: VmRSS before scans {rss_before} KiB, peak (VmHWM) during scans {peak} KiB");
    let goal = Duration::from_secs(1);
    println!(
        "goal: median scan under {goal:?}: {}",
        if times[times.len() / 2] < goal {
            "met"
        } else {
            "NOT met"
        }
    );
}
