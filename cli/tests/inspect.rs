//! `pcr history`, `diff`, `events [--watch]`, `vm` and `logs [--follow]`
//! against the real binaries: a control plane and two workers on ch-sim
//! (real tokens; the CLI is admin), generations published with their
//! author, message and CI job. Every output is asserted as a person reads
//! it, and every wrong name gets an error that says what exists.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use commands::model::PublishMeta;
use commands::types::VmSpec;
use testkit::cluster::{Cluster, ClusterOpts};
use testkit::{bin, wait_until};

const STEP: Duration = Duration::from_secs(30);

struct Env {
    c: Cluster,
    token: PathBuf,
}

impl Env {
    fn start() -> Env {
        let c = Cluster::start(ClusterOpts::quick(&["w1", "w2"], &[]), |_, real| {
            real.to_owned()
        });
        let token = c.admin_token_file().unwrap();
        Env { c, token }
    }

    fn pcr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("pcr"));
        cmd.arg("--control-plane")
            .arg(&self.c.cp.addr)
            .args(args)
            .env("PCR_TOKEN_FILE", &self.token)
            .env_remove("PCR_TOKEN")
            .env("NO_COLOR", "1");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.pcr(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "pcr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str], want: &str) {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "pcr {args:?} succeeded");
        assert!(err.contains(want), "pcr {args:?}: want {want:?} in {err:?}");
    }

    fn publish(&self, n: u64, specs: &[VmSpec], author: &str, message: &str) {
        let meta = PublishMeta {
            author: author.into(),
            message: message.into(),
            job_id: 40 + n,
        };
        let intent = commands::types::intent_hash(specs);
        self.c.with_admin(async |m| {
            m.publish_with_meta(
                "default",
                &format!("{n}0123456789abcdef"),
                n,
                &intent.hash.to_string(),
                specs,
                &meta,
            )
            .await
            .unwrap()
        });
    }

    fn converged(&self, n: u64) {
        wait_until(STEP, &format!("generation {n} converged"), || {
            let s: serde_json::Value =
                serde_json::from_str(&self.ok(&["--json", "status"])).unwrap();
            (s["generations"][0]["number"] == n && s["convergencePercent"] == 100.0).then_some(())
        });
    }
}

/// The fixture spec whose guest prints a console line every 100 ms.
fn ticking(name: &str, hash: &str) -> VmSpec {
    testkit::fixtures::spec_with(name, hash, |f| {
        f.cmdline = format!("console=ttyS0 v={hash} ch_sim.tick_ms=100");
    })
}

/// Reads `child`'s stdout lines on a thread.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line of `rx` containing `want`.
fn line_with(rx: &mpsc::Receiver<String>, want: &str) -> String {
    let deadline = std::time::Instant::now() + STEP;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(want) => return l,
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    panic!("no line with {want:?} in {seen:?}");
}

#[test]
fn history_diff_events_vm_and_logs() {
    let env = Env::start();
    assert_eq!(env.ok(&["history"]), "no generation published\n");

    env.publish(
        1,
        &[ticking("web-0", "a1"), ticking("web-1", "a1")],
        "Ada Lovelace",
        "two web servers",
    );
    env.converged(1);
    env.publish(
        2,
        &[ticking("web-0", "a2"), ticking("web-2", "a1")],
        "Grace Hopper",
        "web-0 faster, web-1 out, web-2 in",
    );
    env.converged(2);

    // history: newest first, who and why, the job, converged.
    let h = env.ok(&["history", "--project", "default"]);
    let rows: Vec<&str> = h.lines().collect();
    assert!(
        rows[0].starts_with("GENERATION  COMMIT        AUTHOR"),
        "{h}"
    );
    assert!(
        rows[1].starts_with(
            "2           20123456789a  Grace Hopper  web-0 faster, web-1 out, web-2 in  42"
        ),
        "{h}"
    );
    assert!(
        rows[2].starts_with("1           10123456789a  Ada Lovelace  two web servers"),
        "{h}"
    );
    assert!(rows[1].contains("after "), "generation 2 converged: {h}");
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["--json", "history"])).unwrap();
    assert_eq!(json[0]["author"], "Grace Hopper");
    assert_eq!(json[0]["jobId"], 42);
    assert!(json[0]["convergedAtMs"].as_u64().unwrap() > 0);

    // diff: from the specs each generation published.
    assert_eq!(
        env.ok(&["diff", "1", "2"]),
        "project default: generation 1 → 2: 1 added, 1 replaced, 1 removed, 0 unchanged\n\
         + web-2\n~ web-0  a1 → a2\n- web-1\n"
    );
    env.fails(
        &["diff", "1", "9"],
        "no generation 9 of project default; remembered: 1, 2",
    );
    env.fails(
        &["diff", "1", "2", "--project", "team-x"],
        "no generation 1 of project team-x; project team-x has published none",
    );

    // events: newest last, with what happened where.
    let ev = env.ok(&["events"]);
    assert!(ev.starts_with("AGE"), "{ev}");
    for want in [
        "worker-joined",
        "generation-published",
        "generation 2 published from commit 20123456789a by Grace Hopper, CI job 42: 2 VMs",
        "vm-replaced",
        "vm-removed",
        "generation-converged",
    ] {
        assert!(ev.contains(want), "no {want:?} in {ev}");
    }
    assert!(
        ev.lines()
            .last()
            .unwrap()
            .contains("generation 2 converged"),
        "newest last: {ev}"
    );
    assert_eq!(env.ok(&["events", "--limit", "1"]).lines().count(), 2);

    // events --watch: a new generation shows up as it happens.
    let mut watch = env
        .pcr(&["events", "--watch", "--interval", "1", "--limit", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut watch);
    line_with(&rx, "generation 2 converged");
    env.publish(
        3,
        &[ticking("web-0", "a2"), ticking("web-2", "a3")],
        "Ada Lovelace",
        "web-2 again",
    );
    line_with(&rx, "generation 3 published");
    line_with(&rx, "web-2 replaced on");
    watch.kill().unwrap();
    let _ = watch.wait();
    env.converged(3);

    // vm: placement, spec, its own events; wrong names say what exists.
    let vm = env.ok(&["vm", "web-0"]);
    for want in [
        "project:    default",
        "generation: 3",
        "drift:      converged",
        "cmdline:    console=ttyS0 v=a2",
        "web-0 replaced on",
    ] {
        assert!(vm.contains(want), "no {want:?} in {vm}");
    }
    assert!(!vm.contains("web-2 "), "another VM's events: {vm}");
    env.fails(
        &["vm", "web-9"],
        "no VM web-9; VMs: default/web-0, default/web-2",
    );
    env.fails(
        &["vm", "web-9", "--project", "default"],
        "no VM web-9 in project default; VMs: web-0, web-2",
    );

    // logs: the console through the control plane; --follow goes on.
    let logs = env.ok(&["logs", "web-0", "--lines", "3"]);
    assert_eq!(logs.lines().count(), 3, "{logs}");
    assert!(logs.contains("[sim] tick"), "{logs}");
    let mut follow = env
        .pcr(&["logs", "web-0", "--follow", "--lines", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut follow);
    let first: u64 = line_with(&rx, "[sim] tick")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // New lines keep coming, in order, none twice.
    let mut last = first;
    for _ in 0..5 {
        let n: u64 = line_with(&rx, "[sim] tick")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n, last + 1, "a console line lost or repeated");
        last = n;
    }
    follow.kill().unwrap();
    let _ = follow.wait();
    env.fails(
        &["logs", "web-9"],
        "no VM web-9; VMs: default/web-0, default/web-2",
    );
}
