//! Retention with the real `cache` binary and the real nix client: six
//! generations of one project pinned as `<project>/generation-<N>`, a
//! scheduled gc with `--keep-generations 2` drops the first four pins and
//! their unique paths, keeps what they share, keeps other projects' pins,
//! and the kept generations still pull; `cache du` and `/metrics` show
//! the sizes.

mod common;

use std::time::Duration;

use common::*;
use testkit::wait::wait_until;

const SHOP: &str = "shop-upload-token-0001";

/// Generation `n` of a project: its own top over a base all share.
fn generation_expr(tag: &str) -> String {
    format!(
        r#"let
  mk = name: deps: kib: derivation {{
    inherit name; system = "x86_64-linux"; builder = "/bin/sh";
    args = ["-c" ''
      /bin/mkdir -p $out
      echo "${{toString deps}}" > $out/deps
      /bin/head -c ${{toString (kib * 1024)}} /dev/urandom > $out/data
    ''];
  }};
  base = mk "base" [] 16;
in mk "{tag}" [base] 8
"#
    )
}

fn stored(env: &Env, store_path: &str) -> bool {
    let base = store_path.strip_prefix("/nix/store/").unwrap();
    env.data_dir()
        .join("store")
        .join(format!("{}.narinfo", &base[..32]))
        .exists()
}

fn metric(addr: &str, name: &str) -> Option<u64> {
    let (_, text) = http(addr, "GET", "/metrics", None, b"");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn pin(addr: &str, token: &str, name: &str, path: &str) -> (u16, String) {
    let body = format!(r#"{{"paths": ["{path}"]}}"#);
    http(
        addr,
        "PUT",
        &format!("/_pcr/pins/{name}"),
        Some(token),
        body.as_bytes(),
    )
}

/// Builds generations 1..=`n` of project `tag` (each its own top over a
/// shared base) with nix; their output paths, in order.
fn build_generations(env: &Env, src: &std::path::Path, tag: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| {
            env.build(
                src,
                &format!("{tag}{i}.nix"),
                &generation_expr(&format!("{tag}-{i}")),
            )
        })
        .collect()
}

/// Pushes `paths` to `server` (zstd) with the all-projects token.
fn push_all(env: &Env, src: &std::path::Path, server: &Server, paths: &[&str]) {
    let out = env.push(src, &format!("{}?compression=zstd", server.url()), paths);
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pins `tops[i]` as `shop/generation-<i+1>` with `token`.
fn pin_generations(server: &Server, token: &str, tops: &[String]) {
    for (i, top) in tops.iter().enumerate() {
        let (s, m) = pin(
            &server.addr,
            token,
            &format!("shop/generation-{}", i + 1),
            top,
        );
        assert_eq!(s, 200, "{m}");
    }
}

#[test]
fn scheduled_gc_keeps_the_last_generations_of_each_project() {
    let env = Env::new();
    // The all-projects token (nix's netrc) uploads; shop's own token pins.
    std::fs::write(env.path().join("token"), format!("{TOKEN}\nshop {SHOP}\n")).unwrap();
    let src = env.path().join("src");
    let gens = build_generations(&env, &src, "shop", 6);
    let blog = env.build(&src, "blog.nix", &generation_expr("blog-1"));
    let base = closure(&env, &src, &gens[0])
        .into_iter()
        .find(|p| p.ends_with("-base"))
        .unwrap();

    let server = Server::start(&env, &[]);
    let mut all: Vec<&str> = gens.iter().map(String::as_str).collect();
    all.push(&blog);
    push_all(&env, &src, &server, &all);
    pin_generations(&server, SHOP, &gens);
    // shop's token cannot pin (or crowd out) another project's generations.
    let (s, m) = pin(&server.addr, SHOP, "blog/generation-99", &gens[0]);
    assert_eq!(s, 403, "{m}");
    assert!(m.contains("may only pin under shop/"), "{m}");
    let (s, m) = pin(&server.addr, TOKEN, "blog/generation-1", &blog);
    assert_eq!(s, 200, "{m}");
    let held_before = metric(&server.addr, "cache_bytes").unwrap();
    assert!(held_before > 7 * 8 * 1024, "{held_before}");

    // du: per project, per pin; the base is shared, so no pin holds it alone.
    let out = cache_cmd(&env, &["du"]);
    let du = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{du}");
    let row = |pin: &str| -> Vec<String> {
        du.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(pin))
            .unwrap_or_else(|| panic!("no {pin} in {du}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let g1 = row("shop/generation-1");
    assert_eq!(g1[0], "shop");
    assert_eq!(g1[2], "2", "{du}");
    let (bytes, unique): (u64, u64) = (g1[3].parse().unwrap(), g1[4].parse().unwrap());
    assert!(unique > 0 && unique < bytes, "{du}");
    assert!(
        du.lines()
            .any(|l| l.starts_with("shop ") && l.split_whitespace().nth(1) == Some("7")),
        "{du}"
    );
    drop(server);

    // Serve again with a schedule; grace 0 so only pins keep paths.
    let server = Server::start(
        &env,
        &[
            "--gc-interval",
            "1s",
            "--gc-grace",
            "0s",
            "--keep-generations",
            "2",
        ],
    );
    // The series exist before the first run (1 s away).
    assert_eq!(metric(&server.addr, "cache_gc_runs_total"), Some(0));
    wait_until(Duration::from_secs(20), "a scheduled gc", || {
        metric(&server.addr, "cache_gc_runs_total").filter(|n| *n >= 1)
    });
    assert_eq!(metric(&server.addr, "cache_gc_unpinned_total"), Some(4));
    assert_eq!(
        metric(&server.addr, "cache_gc_deleted_paths_total"),
        Some(4)
    );
    let freed = metric(&server.addr, "cache_gc_freed_bytes_total").unwrap();
    let held_after = metric(&server.addr, "cache_bytes").unwrap();
    assert!(
        freed > 0 && held_after < held_before,
        "{freed} {held_after} {held_before}"
    );
    assert_eq!(held_before - held_after, freed);

    for old in &gens[..4] {
        assert!(!stored(&env, old), "{old} survived gc");
    }
    for kept in [&gens[4], &gens[5], &blog, &base] {
        assert!(stored(&env, kept), "{kept} was collected");
    }
    let (_, body) = http(&server.addr, "GET", "/_pcr/pins", Some(TOKEN), b"");
    let pins: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<&str> = pins["pins"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "blog/generation-1",
            "shop/generation-5",
            "shop/generation-6"
        ]
    );

    // The real client pulls the kept generations; a dropped one is gone.
    for (dst, top) in [("dst5", &gens[4]), ("dst6", &gens[5])] {
        let out = env.pull(
            &server.url(),
            &env.path().join(dst),
            &env.public_key(),
            &[top],
        );
        assert!(
            out.status.success(),
            "pull {top}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env.pull(
        &server.url(),
        &env.path().join("dst1"),
        &env.public_key(),
        &[&gens[0]],
    );
    assert!(!out.status.success(), "a collected generation still pulled");
}

/// Scheduled gc asks a control plane which generations workers still run
/// (a real one with no worker: none) and then drops by age; when it cannot
/// ask, that round drops no generation pin and says so in `/metrics`.
/// Which generations are live is the control plane's
/// `State::live_generations` (unit-tested there); keeping them is
/// `excess_generation_pins` (unit-tested in the store).
#[test]
fn scheduled_gc_asks_the_control_plane_and_keeps_every_generation_when_it_cannot() {
    let env = Env::new();
    let src = env.path().join("src");
    let gens = build_generations(&env, &src, "live", 3);
    let server = Server::start(&env, &[]);
    let all: Vec<&str> = gens.iter().map(String::as_str).collect();
    push_all(&env, &src, &server, &all);
    pin_generations(&server, TOKEN, &gens);
    drop(server);
    let scheduled = |control_plane: &str| {
        Server::start(
            &env,
            &[
                "--gc-interval",
                "1s",
                "--gc-grace",
                "0s",
                "--keep-generations",
                "1",
                "--control-plane",
                control_plane,
            ],
        )
    };
    let first_run = |server: &Server| {
        wait_until(Duration::from_secs(30), "a scheduled gc", || {
            metric(&server.addr, "cache_gc_runs_total").filter(|n| *n >= 1)
        });
    };

    // Nobody answers there: every generation pin stays.
    let nobody = testkit::fs::free_port().to_string();
    let server = scheduled(&nobody);
    first_run(&server);
    assert!(metric(&server.addr, "cache_gc_live_unknown_total").unwrap() >= 1);
    assert_eq!(metric(&server.addr, "cache_gc_unpinned_total"), Some(0));
    drop(server);
    assert!(gens.iter().all(|g| stored(&env, g)));

    // A real control plane that runs nothing: the two older pins go.
    let cp = testkit::services::start_control_plane(
        &testkit::services::ControlPlaneArgs::default(),
        testkit::Log::Quiet,
    );
    let server = scheduled(&cp.addr);
    first_run(&server);
    assert_eq!(metric(&server.addr, "cache_gc_live_unknown_total"), Some(0));
    assert_eq!(metric(&server.addr, "cache_gc_unpinned_total"), Some(2));
    assert!(stored(&env, &gens[2]) && !stored(&env, &gens[0]));
}
