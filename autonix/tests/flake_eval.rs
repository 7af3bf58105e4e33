//! Generated flakes, checked by the real nix client: every fixture's
//! flake.nix must pass `nix-instantiate --parse`, and evaluating its outputs
//! against tests/nix/fake-nixpkgs.nix (each builder returns its name and
//! arguments) must call the expected builder with the expected arguments.
//! The flake text itself is snapshotted in tests/snapshots/<fixture>.flake.nix.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::{Value, json};

const FAKE_HASH: &str = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// Generates the flake for a copy of `name`, parses and evaluates it.
fn evaluate(name: &str) -> (Value, String) {
    let (tmp, dir) = fixture_copy(name);
    let out = autonix(&["generate", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flake = dir.join("flake.nix");
    let text = std::fs::read_to_string(&flake).unwrap();

    let parsed = nix(
        tmp.path(),
        "nix-instantiate",
        &["--parse", flake.to_str().unwrap()],
    );
    assert!(
        parsed.status.success(),
        "{name}: flake.nix does not parse: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let eval_nix = crate_dir().join("tests/nix/eval.nix");
    let eval = nix(
        tmp.path(),
        "nix-instantiate",
        &[
            "--eval",
            "--strict",
            "--json",
            eval_nix.to_str().unwrap(),
            "--arg",
            "flake",
            flake.to_str().unwrap(),
        ],
    );
    assert!(
        eval.status.success(),
        "{name}: evaluation against fake nixpkgs failed: {}",
        String::from_utf8_lossy(&eval.stderr)
    );
    (serde_json::from_slice(&eval.stdout).unwrap(), text)
}

/// Asserts `pointer → expected` pairs in the evaluated outputs.
fn expect(name: &str, v: &Value, checks: &[(&str, Value)]) {
    let mut errors = Vec::new();
    for (ptr, want) in checks {
        match v.pointer(ptr) {
            Some(got) if got == want => {}
            got => errors.push(format!(
                "{ptr}: expected {want}, got {}",
                got.map_or("nothing".into(), |g| g.to_string())
            )),
        }
    }
    assert!(errors.is_empty(), "{name}:\n{}", errors.join("\n"));
}

fn text_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{ptr} missing"))
}

fn expectations() -> BTreeMap<&'static str, Vec<(&'static str, Value)>> {
    let mut m = BTreeMap::new();
    m.insert(
        "rust-workspace",
        vec![
            (
                "/packages/rust-workspace/builder",
                json!("rustPlatform.buildRustPackage"),
            ),
            ("/packages/rust-workspace/args/src", json!("path:./.")),
            (
                "/packages/rust-workspace/args/cargoLock/lockFile",
                json!("path:./Cargo.lock"),
            ),
            ("/packages/rust-workspace/args/version", json!("0.3.0")),
            (
                "/packages/experimental/args/src",
                json!("path:./crates/experimental"),
            ),
            ("/packages/experimental/args/cargoHash", json!(FAKE_HASH)),
            ("/packages/default/builder", json!("symlinkJoin")),
            ("/apps/rust-workspace/type", json!("app")),
            // A member with its own binary is a package of its own, built
            // from the workspace with its lockfile.
            ("/packages/nx-cli/args/src", json!("path:./.")),
            (
                "/packages/nx-cli/args/cargoBuildFlags",
                json!(["-p", "nx-cli"]),
            ),
            (
                "/packages/nx-cli/args/cargoLock/lockFile",
                json!("path:./Cargo.lock"),
            ),
            (
                "/devShells/default/args/packages",
                json!([
                    "pkgs:rustc",
                    "pkgs:cargo",
                    "pkgs:clippy",
                    "pkgs:rustfmt",
                    "pkgs:rust-analyzer"
                ]),
            ),
        ],
    );
    m.insert(
        "go-workspace",
        vec![
            ("/packages/api/builder", json!("buildGoModule")),
            ("/packages/api/override/go", json!("pkgs:go_1_22")),
            ("/packages/api/args/src", json!("path:./.")),
            ("/packages/api/args/modRoot", json!("api")),
            ("/packages/api/args/env/GOWORK", json!("off")),
            ("/packages/api/args/vendorHash", json!(FAKE_HASH)),
            ("/packages/worker/args/modRoot", json!("worker")),
            ("/packages/legacy/args/vendorHash", Value::Null),
            ("/packages/legacy/override/go", json!("pkgs:go_1_21")),
            ("/packages/gen/args/vendorHash", Value::Null),
            (
                "/apps/worker/program",
                json!("/nix/store/00000000000000000000000000000000-worker/bin/worker"),
            ),
        ],
    );
    m.insert(
        "node-managers",
        vec![
            ("/packages/web/builder", json!("buildNpmPackage")),
            ("/packages/web/args/nodejs", json!("pkgs:nodejs_20")),
            ("/packages/web/args/npmDeps/builder", json!("importNpmLock")),
            (
                "/packages/web/args/npmDeps/args/npmRoot",
                json!("path:./npm"),
            ),
            (
                "/packages/web/args/npmConfigHook",
                json!("pkgs:importNpmLock.npmConfigHook"),
            ),
            (
                "/packages/legacy-admin/builder",
                json!("stdenv.mkDerivation"),
            ),
            (
                "/packages/legacy-admin/args/yarnOfflineCache/builder",
                json!("fetchYarnDeps"),
            ),
            (
                "/packages/legacy-admin/args/yarnOfflineCache/args/yarnLock",
                json!("path:./yarn-classic/yarn.lock"),
            ),
            (
                "/packages/legacy-admin/args/nativeBuildInputs",
                json!([
                    "pkgs:yarnConfigHook",
                    "pkgs:yarnBuildHook",
                    "pkgs:nodejs_18"
                ]),
            ),
            (
                "/packages/berry-mono/args/yarnOfflineCache/builder",
                json!("yarn-berry_4.fetchYarnBerryDeps"),
            ),
            (
                "/packages/berry-mono/args/yarnOfflineCache/args/hash",
                json!(FAKE_HASH),
            ),
            (
                "/packages/pnpm-mono/args/pnpmDeps/builder",
                json!("fetchPnpmDeps"),
            ),
            (
                "/packages/pnpm-mono/args/pnpmDeps/args/src",
                json!("path:./pnpm"),
            ),
            (
                "/packages/pnpm-mono/args/nativeBuildInputs",
                json!(["pkgs:nodejs_20", "pkgs:pnpm_9", "pkgs:pnpmConfigHook"]),
            ),
            (
                "/packages/pnpm-mono/args/pnpmDeps/args/pnpm",
                json!("pkgs:pnpm_9"),
            ),
            (
                "/packages/pnpm-mono/args/pnpmDeps/args/fetcherVersion",
                json!(3),
            ),
            (
                "/packages/berry-mono/args/yarnOfflineCache/args/src",
                json!("path:./yarn-berry"),
            ),
            (
                "/packages/berry-mono/args/nativeBuildInputs",
                json!([
                    "pkgs:nodejs_20",
                    "pkgs:yarn-berry_4",
                    "pkgs:yarn-berry_4.yarnBerryConfigHook"
                ]),
            ),
            ("/packages/pnpm-apps-web/args/src", json!("path:./pnpm")),
            (
                "/packages/pnpm-apps-web/args/buildPhase",
                json!("runHook preBuild\n(cd apps/web && pnpm run build)\nrunHook postBuild\n"),
            ),
            (
                "/packages/edge-fn/args/nativeBuildInputs",
                json!(["pkgs:bun"]),
            ),
            (
                "/packages/edge-fn/args/passthru/nodeModules/args/outputHash",
                json!(FAKE_HASH),
            ),
            (
                "/packages/edge-fn/args/passthru/nodeModules/args/outputHashMode",
                json!("recursive"),
            ),
            (
                "/packages/edge-fn/args/passthru/nodeModules/args/buildPhase",
                json!("# bun writes its cache under $HOME, which the sandbox lacks.\nexport HOME=$TMPDIR\nbun install --frozen-lockfile --no-progress\n"),
            ),
        ],
    );
    m.insert(
        "python-managers",
        vec![
            (
                "/packages/orders-api/builder",
                json!("python311.pkgs.buildPythonApplication"),
            ),
            ("/packages/orders-api/args/pyproject", json!(true)),
            (
                "/packages/orders-api/args/build-system",
                json!(["pkgs:python311.pkgs.poetry-core"]),
            ),
            (
                "/packages/orders-api/args/dependencies",
                json!(["pkgs:python311.pkgs.fastapi", "pkgs:python311.pkgs.uvicorn"]),
            ),
            (
                "/packages/portal/args/dependencies",
                json!(["pkgs:python312.pkgs.django", "pkgs:python312.pkgs.psycopg2"]),
            ),
            (
                "/packages/pipenv/builder",
                json!("python310.pkgs.buildPythonApplication"),
            ),
            ("/packages/pipenv/args/format", json!("other")),
            (
                "/packages/reports/builder",
                json!("python312.pkgs.buildPythonApplication"),
            ),
            (
                "/packages/legacy-tool/args/build-system",
                json!(["pkgs:python3.pkgs.setuptools"]),
            ),
            ("/packages/legacy-tool/args/version", json!("0.1")),
            (
                "/packages/legacy-tool/args/dependencies",
                json!(["pkgs:python3.pkgs.click"]),
            ),
            (
                "/apps/orders-api/program",
                json!("/nix/store/00000000000000000000000000000000-orders-api/bin/orders-api"),
            ),
        ],
    );
    m.insert(
        "rails-monorepo",
        vec![
            (
                "/packages/rails-monorepo/builder",
                json!("stdenv.mkDerivation"),
            ),
            (
                "/packages/rails-monorepo/args/buildInputs/0/builder",
                json!("bundlerEnv"),
            ),
            (
                "/packages/rails-monorepo/args/buildInputs/0/args/ruby",
                json!("pkgs:ruby_3_2"),
            ),
            (
                "/packages/rails-monorepo/args/buildInputs/0/args/gemdir",
                json!("path:./."),
            ),
            ("/packages/storefront/args/src", json!("path:./frontend")),
            (
                "/packages/storefront/args/pnpmDeps/builder",
                json!("fetchPnpmDeps"),
            ),
            ("/packages/notifier/override/go", json!("pkgs:go_1_22")),
        ],
    );
    m.insert(
        "java-builds",
        vec![
            ("/packages/billing/args/mvnJdk", json!("pkgs:jdk21")),
            (
                "/packages/orders/args/nativeBuildInputs",
                json!(["pkgs:gradle", "pkgs:jdk"]),
            ),
            ("/packages/shop/builder", json!("maven.buildMavenPackage")),
            ("/packages/shop/args/mvnJdk", json!("pkgs:jdk17")),
            ("/packages/shop/args/mvnHash", json!(FAKE_HASH)),
            ("/packages/inventory/builder", json!("stdenv.mkDerivation")),
            (
                "/packages/inventory/args/mitmCache/builder",
                json!("gradle.fetchDeps"),
            ),
            (
                "/packages/inventory/args/mitmCache/args/data",
                json!("path:./gradle-wrapper/deps.json"),
            ),
            (
                "/packages/inventory/args/mitmCache/args/pkg",
                json!("pkgs:finalPackage"),
            ),
            (
                "/packages/inventory/args/nativeBuildInputs",
                json!(["pkgs:gradle", "pkgs:jdk21"]),
            ),
            (
                "/packages/batch/args/nativeBuildInputs",
                json!(["pkgs:gradle", "pkgs:jdk11"]),
            ),
        ],
    );
    m.insert(
        "tool-versions",
        vec![
            (
                "/packages/rs/builder",
                json!("rustPlatform.buildRustPackage"),
            ),
            ("/packages/gosvc/override/go", json!("pkgs:go_1_22")),
            ("/packages/js/args/nodejs", json!("pkgs:nodejs_20")),
            ("/packages/mise-web/args/nodejs", json!("pkgs:nodejs_22")),
            ("/packages/mise-web/args/npmDepsHash", json!(FAKE_HASH)),
            (
                "/packages/py/builder",
                json!("python312.pkgs.buildPythonApplication"),
            ),
            (
                "/packages/rb/args/buildInputs/0/args/ruby",
                json!("pkgs:ruby_3_3"),
            ),
            ("/packages/jvm/args/mvnJdk", json!("pkgs:jdk21")),
            (
                "/packages/mise-rs/args/cargoLock/lockFile",
                json!("path:./mise/rs/Cargo.lock"),
            ),
            ("/packages/mise-go/override/go", json!("pkgs:go_1_23")),
            ("/packages/mise-jvm/args/mvnJdk", json!("pkgs:jdk17")),
            (
                "/packages/mise-py/builder",
                json!("python313.pkgs.buildPythonApplication"),
            ),
            (
                "/packages/mise-rb/args/buildInputs/0/args/ruby",
                json!("pkgs:ruby_3_2"),
            ),
        ],
    );
    m.insert(
        "version-sources",
        vec![
            // rust-toolchain.toml says `stable`: the MSRV decides.
            (
                "/packages/acmectl/builder",
                json!("rustPlatform.buildRustPackage"),
            ),
            ("/packages/acmectl/args/version", json!("0.4.1")),
            // engines >=24 beats the Dockerfile's node:22 it contradicts.
            ("/packages/web/args/nodejs", json!("pkgs:nodejs_24")),
            ("/packages/acme-api/args/nodejs", json!("pkgs:nodejs_22")),
            (
                "/packages/worker/builder",
                json!("python311.pkgs.buildPythonApplication"),
            ),
            ("/packages/svc/override/go", json!("pkgs:go_1_21")),
            ("/packages/billing/args/mvnJdk", json!("pkgs:jdk21")),
            (
                "/packages/store/args/buildInputs/0/args/ruby",
                json!("pkgs:ruby_3_3"),
            ),
        ],
    );
    m.insert(
        "dual-build",
        vec![
            ("/packages/ledger/builder", json!("maven.buildMavenPackage")),
            ("/packages/ledger/args/mvnJdk", json!("pkgs:jdk17")),
            (
                "/packages/ledger-gradle/args/nativeBuildInputs",
                json!(["pkgs:gradle", "pkgs:jdk21"]),
            ),
        ],
    );
    m.insert(
        "docker-services",
        vec![
            ("/packages/worker/builder", json!("stdenv.mkDerivation")),
            ("/packages/worker/args/src", json!("path:./worker")),
            ("/packages/worker/args/dontBuild", json!(true)),
            ("/packages/notifier/args/src", json!("path:./notifier")),
            ("/packages/cron/args/version", json!("0-unstable")),
            (
                "/apps/worker/program",
                json!("/nix/store/00000000000000000000000000000000-worker/bin/worker"),
            ),
        ],
    );
    m.insert(
        "go-work-root",
        vec![
            ("/packages/gateway/args/src", json!("path:./.")),
            ("/packages/gateway/override/go", json!("pkgs:go_1_23")),
            ("/packages/billing/args/src", json!("path:./.")),
            ("/packages/billing/args/modRoot", json!("services/billing")),
            ("/packages/billing/args/env/GOWORK", json!("off")),
            ("/packages/billing/args/vendorHash", json!(FAKE_HASH)),
            ("/packages/migrate/args/modRoot", json!("tools/migrate")),
            ("/packages/migrate/args/vendorHash", Value::Null),
        ],
    );
    m.insert(
        "uv-workspace",
        vec![
            (
                "/packages/acme-api/builder",
                json!("python312.pkgs.buildPythonApplication"),
            ),
            ("/packages/acme-api/args/src", json!("path:./packages/api")),
            (
                "/packages/acme-api/args/dependencies",
                json!(["pkgs:python312.pkgs.fastapi", "pkgs:python312.pkgs.uvicorn"]),
            ),
            (
                "/packages/acme-jobs/args/src",
                json!("path:./packages/jobs"),
            ),
        ],
    );
    m.insert(
        "dotnet-solution",
        vec![
            ("/packages/TodoApp/builder", json!("buildDotnetModule")),
            (
                "/packages/TodoApp/args/projectFile",
                json!("src/TodoApp.Web/TodoApp.Web.csproj"),
            ),
            (
                "/packages/TodoApp/args/dotnet-sdk",
                json!("pkgs:dotnetCorePackages.sdk_8_0"),
            ),
            (
                "/packages/TodoApp/args/dotnet-runtime",
                json!("pkgs:dotnetCorePackages.aspnetcore_8_0"),
            ),
            (
                "/packages/TodoApp/args/nugetDeps",
                json!("path:./deps.json"),
            ),
            ("/packages/TodoApp/args/executables", json!(["TodoApp.Web"])),
            ("/packages/TodoApp/args/version", json!("1.3.0")),
            (
                "/apps/TodoApp/program",
                json!("/nix/store/00000000000000000000000000000000-TodoApp/bin/TodoApp.Web"),
            ),
        ],
    );
    m.insert(
        "php-laravel",
        vec![
            (
                "/packages/laravel/builder",
                json!("php82.buildComposerProject2"),
            ),
            ("/packages/laravel/args/vendorHash", json!(FAKE_HASH)),
            ("/packages/laravel/args/src", json!("path:./.")),
            // The Vite assets beside it are the app's asset bundling, not a package.
            (
                "/devShells/default/args/packages",
                json!(["pkgs:php82", "pkgs:phpPackages.composer"]),
            ),
        ],
    );
    m.insert(
        "cmake-cpp",
        vec![
            ("/packages/tiler/builder", json!("stdenv.mkDerivation")),
            ("/packages/tiler/args/nativeBuildInputs", json!(["pkgs:cmake"])),
            (
                "/packages/tiler/args/buildInputs",
                json!(["pkgs:fmt", "pkgs:libpng"]),
            ),
            (
                "/packages/tiler/args/installPhase",
                json!("runHook preInstall\ninstall -Dm755 src/tiler $out/bin/tiler\nrunHook postInstall\n"),
            ),
            ("/packages/tiler/args/version", json!("1.4.0")),
        ],
    );
    m.insert(
        "autotools-c",
        vec![
            ("/packages/jql/builder", json!("stdenv.mkDerivation")),
            (
                "/packages/jql/args/nativeBuildInputs",
                json!(["pkgs:autoreconfHook", "pkgs:pkg-config"]),
            ),
            ("/packages/jql/args/buildInputs", json!(["pkgs:oniguruma"])),
            ("/packages/jql/args/version", json!("1.2.0")),
            // The plain Makefile installs with PREFIX=$out.
            (
                "/packages/jql-fuzz/args/src",
                json!("path:./contrib/jql-fuzz"),
            ),
            (
                "/packages/jql-fuzz/args/makeFlags",
                json!(["PREFIX=$(out)"]),
            ),
            (
                "/apps/jql-fuzz/program",
                json!("/nix/store/00000000000000000000000000000000-jql-fuzz/bin/jql-fuzz"),
            ),
        ],
    );
    m.insert(
        "meson-c",
        vec![
            ("/packages/gsh/builder", json!("stdenv.mkDerivation")),
            (
                "/packages/gsh/args/nativeBuildInputs",
                json!(["pkgs:meson", "pkgs:ninja", "pkgs:pkg-config"]),
            ),
            ("/packages/gsh/args/buildInputs", json!(["pkgs:readline"])),
            ("/packages/gsh/args/version", json!("0.3.1")),
        ],
    );
    m.insert(
        "zig-app",
        vec![
            ("/packages/zigfetch/builder", json!("stdenv.mkDerivation")),
            (
                "/packages/zigfetch/args/nativeBuildInputs",
                json!(["pkgs:zig_0_13.hook"]),
            ),
            (
                "/packages/zigfetch/args/postPatch",
                json!("ln -s /nix/store/00000000000000000000000000000000-callPackage build.zig.zon.nix $ZIG_GLOBAL_CACHE_DIR/p\n"),
            ),
        ],
    );
    m.insert(
        "phoenix-app",
        vec![
            ("/packages/hello/builder", json!("beamPackages.mixRelease")),
            ("/packages/hello/args/elixir", json!("pkgs:elixir_1_16")),
            (
                "/packages/hello/args/mixFodDeps/builder",
                json!("beamPackages.fetchMixDeps"),
            ),
            (
                "/packages/hello/args/mixFodDeps/args/hash",
                json!(FAKE_HASH),
            ),
            (
                "/packages/hello/args/mixFodDeps/args/pname",
                json!("mix-deps-hello"),
            ),
        ],
    );
    m.insert(
        "haskell-stack",
        vec![
            (
                "/packages/haskell-stack/builder",
                json!("haskell.lib.justStaticExecutables"),
            ),
            (
                "/packages/haskell-stack/args/drv/builder",
                json!("haskell.packages.ghc96.callCabal2nix"),
            ),
            (
                "/packages/haskell-stack/args/drv/args/src",
                json!("path:./todo-api"),
            ),
            (
                "/devShells/default/args/packages",
                json!(["pkgs:haskell.compiler.ghc96", "pkgs:stack"]),
            ),
        ],
    );
    m.insert(
        "sbt-multi",
        vec![
            ("/devShells/shop/builder", json!("mkShell")),
            (
                "/devShells/shop/args/packages",
                json!(["pkgs:scala_3", "pkgs:sbt"]),
            ),
        ],
    );
    m.insert(
        "flutter-app",
        vec![
            (
                "/packages/weather_app/builder",
                json!("flutter324.buildFlutterApplication"),
            ),
            (
                "/packages/weather_app/args/autoPubspecLock",
                json!("path:./pubspec.lock"),
            ),
        ],
    );
    m.insert(
        "swiftpm-package",
        vec![
            (
                "/packages/TodoServer/builder",
                json!("swiftPackages.stdenv.mkDerivation"),
            ),
            (
                "/packages/TodoServer/args/nativeBuildInputs",
                json!(["pkgs:swiftPackages.swift", "pkgs:swiftPackages.swiftpm"]),
            ),
            (
                "/packages/TodoServer/args/configurePhase",
                json!("swiftpm2nix configure from nix"),
            ),
            (
                "/apps/TodoServer/program",
                json!("/nix/store/00000000000000000000000000000000-TodoServer/bin/App"),
            ),
        ],
    );
    m.insert(
        "deno-app",
        vec![
            ("/devShells/links/builder", json!("mkShell")),
            ("/devShells/links/args/packages", json!(["pkgs:deno"])),
        ],
    );
    m.insert(
        "bash-tool",
        vec![
            ("/packages/bash-tool/builder", json!("symlinkJoin")),
            (
                "/packages/bash-tool/args/paths/0/builder",
                json!("writeShellApplication"),
            ),
            (
                "/packages/bash-tool/args/paths/0/args/name",
                json!("gitsync"),
            ),
            (
                "/packages/bash-tool/args/paths/0/args/runtimeInputs",
                json!(["pkgs:curl", "pkgs:jq", "pkgs:git", "pkgs:gawk"]),
            ),
            (
                "/packages/bash-tool/args/paths/1/args/name",
                json!("gitsync-report"),
            ),
        ],
    );
    m.insert(
        "conda-env",
        vec![
            ("/devShells/forecast/builder", json!("mkShell")),
            (
                "/devShells/forecast/args/packages",
                json!(["pkgs:python311", "pkgs:conda"]),
            ),
        ],
    );
    m.insert(
        "broken",
        vec![
            (
                "/packages/bad-toml/builder",
                json!("rustPlatform.buildRustPackage"),
            ),
            ("/packages/ws/args/pnpmDeps/builder", json!("fetchPnpmDeps")),
        ],
    );
    m
}

#[test]
fn every_fixture_flake_parses_and_evaluates_to_the_expected_builders() {
    let expectations = expectations();
    let mut snapshot_errors = Vec::new();
    for name in fixtures() {
        let (v, text) = evaluate(&name);
        let checks = expectations
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no builder expectations for fixture {name}"));
        expect(&name, &v, checks);
        // Every package has a dev shell built from its inputs, and every app
        // points into a package.
        let packages = v["packages"].as_object().unwrap();
        // A project nixpkgs cannot build has a dev shell instead.
        assert!(
            !packages.is_empty() || v["devShells"].as_object().unwrap().len() > 1,
            "{name}: no packages and no project shells"
        );
        // The Rails app's root package.json is its asset bundling, no package.
        assert!(name != "rails-monorepo" || !packages.contains_key("app"));
        for attr in packages
            .keys()
            .filter(|k| *k != "default" && !k.ends_with("-node-modules"))
        {
            assert!(
                v["devShells"].get(attr).is_some(),
                "{name}: no dev shell for {attr}"
            );
        }
        for (app, def) in v["apps"].as_object().unwrap() {
            let program = def["program"].as_str().unwrap();
            // writeShellApplication and symlinkJoin take `name`, not `pname`.
            let args = &v["packages"][app]["args"];
            let pname = args["pname"].as_str().or(args["name"].as_str()).unwrap();
            assert!(
                program.contains(&format!("-{pname}/bin/")),
                "{name}: app {app} runs {program}"
            );
        }
        if let Err(e) = check_snapshot(&format!("{name}.flake.nix"), &text) {
            snapshot_errors.push(e);
        }
    }
    assert!(
        snapshot_errors.is_empty(),
        "{}",
        snapshot_errors.join("\n\n")
    );
}

#[test]
fn launchers_run_the_projects_run_command() {
    let (v, _) = evaluate("python-managers");
    // Procfile `web` wins, `$PORT` is read when the app starts, not at build.
    let install = text_at(&v, "/packages/pip/args/installPhase");
    assert!(
        install.contains("gunicorn app:app --bind 0.0.0.0:\\$PORT"),
        "{install}"
    );
    assert!(install.contains("cat > $out/bin/pip <<EOF"), "{install}");
    // `uv run` is the dev-time runner; the package runs with Nix's python.
    let post = text_at(&v, "/packages/portal/args/postInstall");
    assert!(
        post.contains("\npython manage.py runserver 0.0.0.0:8000\n"),
        "{post}"
    );
    let (v, _) = evaluate("java-builds");
    let install = text_at(&v, "/packages/shop/args/installPhase");
    assert!(
        install.contains("cp target/shop-1.0.0.jar $out/share/shop/"),
        "{install}"
    );
    assert!(
        install.contains("/nix/store/00000000000000000000000000000000-jdk17/bin/java -jar $out/share/shop/shop-1.0.0.jar"),
        "{install}"
    );
}

#[test]
fn generate_refuses_to_overwrite_without_force() {
    let (_tmp, dir) = fixture_copy("rust-workspace");
    let flake = dir.join("flake.nix");
    std::fs::write(&flake, "{ }\n").unwrap();
    let out = autonix(&["generate", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&flake).unwrap(), "{ }\n");
    let out = autonix(&["generate", dir.to_str().unwrap(), "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&flake)
            .unwrap()
            .contains("buildRustPackage")
    );
    // -o writes elsewhere and leaves the tree alone.
    let other = dir.parent().unwrap().join("elsewhere.nix");
    let out = autonix(&[
        "generate",
        dir.to_str().unwrap(),
        "-o",
        other.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(Path::new(&other).exists());
}

#[test]
fn generate_tells_how_to_fill_placeholder_hashes() {
    let (_tmp, dir) = fixture_copy("node-managers");
    let out = autonix(&["generate", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "legacy-admin: yarnOfflineCache.hash is a placeholder; run `nix build .#legacy-admin`"
        ),
        "{stderr}"
    );
    let flake = std::fs::read_to_string(dir.join("flake.nix")).unwrap();
    assert!(flake.contains("# Placeholder: run `nix build .#legacy-admin`"));
    // importNpmLock needs no hash, so the npm project has no placeholder.
    assert!(!stderr.contains("\n  - web: "), "{stderr}");
}

#[test]
fn plan_cli_prints_builders_inputs_and_toolchains() {
    let (_tmp, dir) = fixture_copy("rust-workspace");
    let out = autonix(&["plan", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg = &plan["packages"][0];
    assert_eq!(pkg["builder"], "rustPlatform.buildRustPackage");
    assert_eq!(pkg["inputs"], json!(["Cargo.lock"]));
    assert_eq!(pkg["commands"]["build"], "cargo build --release");
    assert_eq!(pkg["toolchain"]["version"], "1.78.0");
    assert_eq!(pkg["toolchain"]["version_source"], "rust-toolchain.toml");
    assert!(
        pkg["toolchain"]["note"]
            .as_str()
            .unwrap()
            .contains("rust-overlay")
    );
}

#[test]
fn generate_says_which_projects_only_get_a_dev_shell_and_why() {
    let (_tmp, dir) = fixture_copy("sbt-multi");
    let out = autonix(&["generate", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(0 packages, 1 dev shells for projects nixpkgs cannot build)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "shop: nixpkgs has no sbt builder: build in `nix develop .#shop` with `sbt api/stage`"
        ),
        "{stderr}"
    );
}
