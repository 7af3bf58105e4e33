//! flake.nix rendering: one package per planned project with nixpkgs'
//! builder for its lockfile, a dev shell with every toolchain, and apps for
//! the run commands. Templates are plain strings kept close to what a person
//! would write by hand, so the output reads like a reviewed flake.

use std::fmt::Write as _;

use crate::plan::{Builder, Package, Plan, nix_path};

mod stacks;

/// A Nix string literal (`"…"`).
pub fn nix_str(s: &str) -> String {
    let mut out = String::from("\"");
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text made safe for a Nix indented string (`''…''`).
fn nix_indented(s: &str) -> String {
    s.replace("''", "'''").replace("${", "''${")
}

/// Text made safe for an unquoted shell heredoc: nothing expands at build
/// time, so `$PORT` in a Procfile command is read when the app runs.
fn heredoc_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('$', "\\$")
        .replace('`', "\\`")
}

/// One `let` binding of the packages set.
struct Binding {
    name: String,
    comments: Vec<String>,
    /// Expression; continuation lines are indented relative to the binding.
    expr: String,
}

/// Lines of an attribute set body, two spaces deeper than its braces.
#[derive(Default)]
struct Attrs(Vec<String>);

impl Attrs {
    /// The attributes every package derivation starts with.
    fn package(pkg: &Package) -> Self {
        let mut a = Self::default();
        a.set("pname", nix_str(&pkg.pname));
        a.set("version", nix_str(&pkg.version));
        a.set("src", &pkg.src);
        a
    }
    fn set(&mut self, key: &str, value: impl AsRef<str>) -> &mut Self {
        self.0.push(format!("{key} = {};", value.as_ref()));
        self
    }
    fn comment(&mut self, text: &str) -> &mut Self {
        for line in text.lines() {
            self.0.push(format!("# {line}"));
        }
        self
    }
    /// `key = ''` block with the given shell lines.
    fn script(&mut self, key: &str, lines: &[String]) -> &mut Self {
        self.0.push(format!("{key} = ''"));
        for l in lines {
            for sub in l.lines() {
                self.0.push(if sub.is_empty() {
                    String::new()
                } else {
                    format!("  {sub}")
                });
            }
        }
        self.0.push("'';".into());
        self
    }
    fn render(&self, open: &str, close: &str) -> String {
        let mut s = format!("{open}\n");
        for entry in &self.0 {
            // Multi-line values (nested sets) move in with their key.
            for l in entry.split('\n') {
                if l.is_empty() {
                    s.push('\n');
                } else {
                    let _ = writeln!(s, "  {l}");
                }
            }
        }
        s.push_str(close);
        s
    }
}

fn pkgs_attr(attr: &str) -> String {
    format!("pkgs.{attr}")
}

/// Shell lines that install a launcher `$out/bin/<name>` which runs
/// `line` (already escaped for the heredoc and the Nix string) from `dir`.
fn launcher(name: &str, dir: &str, line: String, path: &[String]) -> Vec<String> {
    let mut l = vec![
        "mkdir -p $out/bin".to_string(),
        format!("cat > $out/bin/{name} <<EOF"),
        "#!${pkgs.runtimeShell}".to_string(),
    ];
    if !path.is_empty() {
        l.push(format!(
            "export PATH=${{lib.makeBinPath [ {} ]}}:\\$PATH",
            path.join(" ")
        ));
    }
    l.push(format!("cd {dir}"));
    l.push(line);
    l.push("EOF".into());
    l.push(format!("chmod +x $out/bin/{name}"));
    l
}

/// Copies the built tree to `$out/share/<attr>` and adds the launcher.
fn install_tree(pkg: &Package, path: &[String]) -> Vec<String> {
    let share = format!("$out/share/{}", pkg.attr);
    let mut l = vec![
        "runHook preInstall".to_string(),
        format!("mkdir -p {share}"),
        format!("cp -r . {share}"),
    ];
    if let Some(run) = &pkg.commands.run {
        l.extend(launcher(&pkg.attr, &share, user_command(run), path));
    }
    l.push("runHook postInstall".into());
    l
}

/// A command from the repository, run as written when the app starts,
/// minus the Python package manager's `… run` prefix: in the package the
/// dependencies come from Nix, not from a virtualenv the manager would make.
fn user_command(run: &str) -> String {
    let run = ["uv run ", "poetry run ", "pdm run ", "pipenv run "]
        .iter()
        .find_map(|p| run.strip_prefix(p))
        .unwrap_or(run);
    nix_indented(&heredoc_escape(run))
}

/// The build script, run in the workspace member's directory when the
/// package is one (in a subshell, so installPhase starts at the root).
fn build_phase(pkg: &Package, cmd: &str) -> Vec<String> {
    let cmd = match &pkg.options.member_dir {
        Some(m) => format!("(cd {m} && {cmd})"),
        None => cmd.to_string(),
    };
    vec!["runHook preBuild".into(), cmd, "runHook postBuild".into()]
}

/// A tree without a manifest (a Dockerfile-only service): installed as is,
/// with a launcher that has the runtime on its PATH.
fn script(pkg: &Package) -> String {
    let tc = toolchain(pkg);
    let mut a = Attrs::package(pkg);
    a.comment(
        "No manifest: the tree is installed as is (the Dockerfile's command is the launcher).",
    );
    a.set("dontBuild", "true");
    a.script("installPhase", &install_tree(pkg, &[tc]));
    a.render("pkgs.stdenv.mkDerivation {", "}")
}

fn placeholder_comment(a: &mut Attrs, pkg: &Package, attr: &str) {
    if let Some(ph) = pkg.placeholders.iter().find(|p| p.attr.starts_with(attr)) {
        a.comment(&format!("Placeholder: {}.", ph.how));
    }
}

/// `attr = lib.fakeHash;`, after the placeholder's comment saying how to
/// get the real hash.
fn fake_hash(a: &mut Attrs, pkg: &Package, attr: &str) {
    placeholder_comment(a, pkg, attr);
    a.set(attr, "lib.fakeHash");
}

/// The toolchain's `pkgs.<attr>` (the compiler, runtime or JDK a builder takes).
fn toolchain(pkg: &Package) -> String {
    pkgs_attr(&pkg.toolchain.nix_attr)
}

/// The `pkgs.<attr>` of the planned tool whose attribute starts with
/// `prefix` (a pinned `pnpm_9`, `yarn-berry_4`, …), or `fallback`.
fn tool(pkg: &Package, prefix: &str, fallback: &str) -> String {
    pkg.toolchain
        .tools
        .iter()
        .find(|t| t.starts_with(prefix))
        .map(|t| pkgs_attr(t))
        .unwrap_or_else(|| fallback.into())
}

/// What one ecosystem renders for a package: the package's expression and,
/// where nixpkgs has no fetcher for the dependencies, a derivation for them
/// bound just before it.
struct Rendered {
    deps: Option<Binding>,
    expr: String,
}

impl From<String> for Rendered {
    fn from(expr: String) -> Self {
        Rendered { deps: None, expr }
    }
}

/// The `let` bindings of one package: its header comments, then the
/// builder's expression, dispatched to one function per ecosystem.
fn bindings(pkg: &Package) -> Vec<Binding> {
    let mut comments = vec![format!(
        "{} ({}, {}){}",
        pkg.project,
        pkg.language.as_str(),
        pkg.package_manager,
        match (&pkg.toolchain.version, &pkg.toolchain.version_source) {
            (Some(v), Some(s)) => format!(": {} {v} from {s}", pkg.language.as_str()),
            _ => String::new(),
        }
    )];
    if let Some(n) = &pkg.toolchain.note {
        comments.push(format!("Note: {n}."));
    }
    let Rendered { deps, expr } = match pkg.builder {
        Builder::RustPackage => rust(pkg).into(),
        Builder::GoModule => go(pkg).into(),
        Builder::NpmImportLock | Builder::NpmDepsHash => npm(pkg).into(),
        Builder::YarnClassic | Builder::YarnBerry => yarn(pkg).into(),
        Builder::Pnpm => pnpm(pkg).into(),
        Builder::Bun => bun(pkg),
        Builder::PythonApplication => python(pkg).into(),
        Builder::BundlerEnv => ruby(pkg),
        Builder::Maven => maven(pkg).into(),
        Builder::Gradle => gradle(pkg).into(),
        Builder::Script => script(pkg).into(),
        _ => stacks::render(pkg),
    };
    let mut out: Vec<Binding> = deps.into_iter().collect();
    out.push(Binding {
        name: pkg.attr.clone(),
        comments,
        expr,
    });
    out
}

/// rustPlatform.buildRustPackage, from Cargo.lock when there is one.
fn rust(pkg: &Package) -> String {
    let mut a = Attrs::package(pkg);
    if let Some(member) = &pkg.options.cargo_package {
        a.comment("A member of the Cargo workspace in src: build only this package.");
        let flags = format!("[ \"-p\" {} ]", nix_str(member));
        a.set("cargoBuildFlags", &flags);
        a.set("cargoTestFlags", &flags);
    }
    match &pkg.options.lockfile {
        Some(l) => {
            a.set("cargoLock.lockFile", l);
            a.comment("Git dependencies in Cargo.lock also need cargoLock.outputHashes.");
        }
        None => {
            fake_hash(&mut a, pkg, "cargoHash");
        }
    }
    a.render("pkgs.rustPlatform.buildRustPackage {", "}")
}

/// buildGoModule, overridden to the planned Go when it is not the default.
fn go(pkg: &Package) -> String {
    let mut a = Attrs::package(pkg);
    if let Some(m) = &pkg.options.mod_root {
        a.set("modRoot", nix_str(m));
        a.comment("buildGoModule ignores go.work; each module builds on its own.");
        a.set("env.GOWORK", nix_str("off"));
    }
    if pkg.options.vendored {
        a.comment("Dependencies are vendored in the tree.");
        a.set("vendorHash", "null");
    } else if pkg.options.no_dependencies {
        a.comment("No go.sum: the module has no dependencies to fetch.");
        a.set("vendorHash", "null");
    } else {
        fake_hash(&mut a, pkg, "vendorHash");
    }
    if !pkg.options.sub_packages.is_empty() {
        let subs: Vec<String> = pkg
            .options
            .sub_packages
            .iter()
            .map(|s| nix_str(s))
            .collect();
        a.set("subPackages", format!("[ {} ]", subs.join(" ")));
    }
    let builder = if pkg.toolchain.nix_attr == "go" {
        "pkgs.buildGoModule".to_string()
    } else {
        format!(
            "(pkgs.buildGoModule.override {{ go = {}; }})",
            toolchain(pkg)
        )
    };
    a.render(&format!("{builder} {{"), "}")
}

/// buildNpmPackage, with importNpmLock when the lockfile allows it.
fn npm(pkg: &Package) -> String {
    let tc = toolchain(pkg);
    let mut a = Attrs::package(pkg);
    a.set("nodejs", &tc);
    if pkg.builder == Builder::NpmImportLock {
        a.comment("Dependencies come from package-lock.json itself: no hash to maintain.");
        a.set(
            "npmDeps",
            format!("pkgs.importNpmLock {{ npmRoot = {}; }}", pkg.src),
        );
        a.set("npmConfigHook", "pkgs.importNpmLock.npmConfigHook");
    } else {
        fake_hash(&mut a, pkg, "npmDepsHash");
    }
    if let Some(m) = &pkg.options.member_dir {
        a.comment("A member of the npm workspace in src: build only this workspace.");
        a.set("npmWorkspace", nix_str(m));
    }
    if !pkg.options.build_script {
        a.set("dontNpmBuild", "true");
    }
    if pkg.commands.run.is_some() {
        a.script("installPhase", &install_tree(pkg, &[tc]));
    }
    a.render("pkgs.buildNpmPackage {", "}")
}

/// stdenv.mkDerivation with Yarn's offline cache: classic (fetchYarnDeps)
/// or berry (fetchYarnBerryDeps).
fn yarn(pkg: &Package) -> String {
    let tc = toolchain(pkg);
    let mut a = Attrs::package(pkg);
    placeholder_comment(&mut a, pkg, "yarnOfflineCache");
    let classic = pkg.builder == Builder::YarnClassic;
    // Classic fetches by yarn.lock and builds through yarnBuildHook; berry
    // fetches by source and has no build hook, so its build is a script.
    let (offline_cache, inputs) = if classic {
        let lockfile = pkg
            .options
            .lockfile
            .clone()
            .unwrap_or_else(|| format!("{}/yarn.lock", pkg.src));
        (
            format!("pkgs.fetchYarnDeps {{ yarnLock = {lockfile}; hash = lib.fakeHash; }}"),
            format!("[ pkgs.yarnConfigHook pkgs.yarnBuildHook {tc} ]"),
        )
    } else {
        let berry = tool(pkg, "yarn-berry", "pkgs.yarn-berry");
        (
            format!(
                "{berry}.fetchYarnBerryDeps {{ src = {}; hash = lib.fakeHash; }}",
                pkg.src
            ),
            format!("[ {tc} {berry} {berry}.yarnBerryConfigHook ]"),
        )
    };
    a.set("yarnOfflineCache", offline_cache);
    a.set("nativeBuildInputs", inputs);
    match (classic, pkg.options.build_script) {
        (true, false) => {
            a.set("dontYarnBuild", "true");
        }
        // yarnBuildHook builds at the root; a member builds in its directory.
        (false, true) | (true, true) if !classic || pkg.options.member_dir.is_some() => {
            a.script("buildPhase", &build_phase(pkg, "yarn run build"));
        }
        _ => {}
    }
    a.script("installPhase", &install_tree(pkg, &[tc]));
    a.render("pkgs.stdenv.mkDerivation {", "}")
}

/// stdenv.mkDerivation with fetchPnpmDeps and pnpm's config hook.
fn pnpm(pkg: &Package) -> String {
    let tc = toolchain(pkg);
    let pnpm = tool(pkg, "pnpm", "pkgs.pnpm");
    let mut a = Attrs::package(pkg);
    placeholder_comment(&mut a, pkg, "pnpmDeps");
    let mut deps = Attrs::default();
    deps.set("pname", nix_str(&pkg.pname))
        .set("version", nix_str(&pkg.version))
        .set("src", &pkg.src)
        .set("pnpm", &pnpm)
        .set("fetcherVersion", "3")
        .set("hash", "lib.fakeHash");
    a.set("pnpmDeps", deps.render("pkgs.fetchPnpmDeps {", "}"));
    a.set(
        "nativeBuildInputs",
        format!("[ {tc} {pnpm} pkgs.pnpmConfigHook ]"),
    );
    if pkg.options.build_script {
        a.script("buildPhase", &build_phase(pkg, "pnpm run build"));
    }
    a.script("installPhase", &install_tree(pkg, &[tc, pnpm]));
    a.render("pkgs.stdenv.mkDerivation {", "}")
}

/// Bun: node_modules as a fixed-output derivation (nixpkgs has no bun
/// fetcher), copied into the package's tree before it builds.
fn bun(pkg: &Package) -> Rendered {
    let deps_name = format!("{}-node-modules", pkg.attr);
    let mut d = Attrs::default();
    d.set("pname", nix_str(&deps_name))
        .set("version", nix_str(&pkg.version))
        .set("src", &pkg.src)
        .set("nativeBuildInputs", "[ pkgs.bun ]")
        .set("dontConfigure", "true")
        .script(
            "buildPhase",
            &[
                "# bun writes its cache under $HOME, which the sandbox lacks.".to_string(),
                "export HOME=$TMPDIR".to_string(),
                "bun install --frozen-lockfile --no-progress".to_string(),
            ],
        )
        .script("installPhase", &["cp -r node_modules $out".to_string()])
        .set("dontFixup", "true");
    placeholder_comment(&mut d, pkg, "node_modules");
    d.set("outputHash", "lib.fakeHash")
        .set("outputHashMode", nix_str("recursive"));
    let deps = Binding {
        name: deps_name.clone(),
        comments: vec![format!(
            "{}: nixpkgs has no bun fetcher, so node_modules is a fixed-output derivation.",
            pkg.project
        )],
        expr: d.render("pkgs.stdenv.mkDerivation {", "}"),
    };
    let mut a = Attrs::package(pkg);
    a.set("nativeBuildInputs", "[ pkgs.bun ]");
    a.script(
        "configurePhase",
        &[
            format!("cp -r ${{{deps_name}}} node_modules"),
            "chmod -R u+w node_modules".into(),
        ],
    );
    if pkg.options.build_script {
        a.script("buildPhase", &build_phase(pkg, "bun run build"));
    }
    a.script("installPhase", &install_tree(pkg, &["pkgs.bun".into()]));
    a.comment(&format!(
        "`nix build .#{}.nodeModules` builds only the dependencies.",
        pkg.attr
    ));
    a.set("passthru.nodeModules", &deps_name);
    Rendered {
        deps: Some(deps),
        expr: a.render("pkgs.stdenv.mkDerivation {", "}"),
    }
}

/// buildPythonApplication from the planned interpreter's package set.
fn python(pkg: &Package) -> String {
    let tc = toolchain(pkg);
    let py = format!("{tc}.pkgs");
    let mut a = Attrs::package(pkg);
    let list = |names: &[String]| {
        if names.is_empty() {
            "[ ]".to_string()
        } else {
            format!("with {py}; [ {} ]", names.join(" "))
        }
    };
    if pkg.options.pyproject {
        a.set("pyproject", "true");
        a.set("build-system", list(&pkg.options.build_system));
    } else {
        a.comment("No pyproject.toml or setup.py: the source tree is installed as is.");
        a.set("format", nix_str("other"));
    }
    if !pkg.options.dependencies.is_empty() {
        a.comment("Names follow nixpkgs' python packages; adjust any that differ from PyPI.");
    }
    a.set("dependencies", list(&pkg.options.dependencies));
    let scripts = pkg.program.as_ref().is_some_and(|p| *p != pkg.attr);
    if !pkg.options.pyproject {
        a.script("installPhase", &install_tree(pkg, &[tc]));
    } else if !scripts && let Some(run) = &pkg.commands.run {
        let share = format!("$out/share/{}", pkg.attr);
        let mut l = vec![format!("mkdir -p {share}"), format!("cp -r . {share}")];
        l.extend(launcher(
            &pkg.attr,
            &share,
            user_command(run),
            std::slice::from_ref(&tc),
        ));
        a.script("postInstall", &l);
    }
    a.render(&format!("{py}.buildPythonApplication {{"), "}")
}

/// Ruby: a bundlerEnv of the gems, and the tree run with its wrapped ruby.
fn ruby(pkg: &Package) -> Rendered {
    let gems = format!("{}-gems", pkg.attr);
    let mut g = Attrs::default();
    g.set("name", nix_str(&gems)).set("ruby", toolchain(pkg));
    placeholder_comment(&mut g, pkg, "gemset.nix");
    g.set("gemdir", &pkg.src);
    let deps = Binding {
        name: gems.clone(),
        comments: vec![format!(
            "{}: gems from Gemfile.lock (via gemset.nix).",
            pkg.project
        )],
        expr: g.render("pkgs.bundlerEnv {", "}"),
    };
    let mut a = Attrs::package(pkg);
    a.set("buildInputs", format!("[ {gems} {gems}.wrappedRuby ]"));
    a.set("dontBuild", "true");
    a.script(
        "installPhase",
        &install_tree(pkg, &[gems.clone(), format!("{gems}.wrappedRuby")]),
    );
    Rendered {
        deps: Some(deps),
        expr: a.render("pkgs.stdenv.mkDerivation {", "}"),
    }
}

/// maven.buildMavenPackage with the planned JDK.
fn maven(pkg: &Package) -> String {
    let tc = toolchain(pkg);
    let mut a = Attrs::package(pkg);
    a.set("mvnJdk", &tc);
    fake_hash(&mut a, pkg, "mvnHash");
    a.set("mvnParameters", nix_str("-DskipTests"));
    a.script("installPhase", &java_install(pkg, &tc));
    a.render("pkgs.maven.buildMavenPackage {", "}")
}

/// stdenv.mkDerivation with gradle.fetchDeps' lock data (deps.json).
fn gradle(pkg: &Package) -> String {
    let tc = toolchain(pkg);
    let mut a = Attrs::package(pkg);
    a.set("nativeBuildInputs", format!("[ pkgs.gradle {tc} ]"));
    placeholder_comment(&mut a, pkg, "deps.json");
    let data = pkg
        .inputs
        .iter()
        .find(|i| i.ends_with("deps.json"))
        .map(|i| nix_path(i))
        .unwrap_or_else(|| "./deps.json".into());
    a.set(
        "mitmCache",
        format!("pkgs.gradle.fetchDeps {{ pkg = finalAttrs.finalPackage; data = {data}; }}"),
    );
    a.set("__darwinAllowLocalNetworking", "true");
    a.set("gradleBuildTask", nix_str("assemble"));
    a.set(
        "gradleFlags",
        format!("[ \"-Dorg.gradle.java.home=${{{tc}}}\" ]"),
    );
    a.script("installPhase", &java_install(pkg, &tc));
    a.render("pkgs.stdenv.mkDerivation (finalAttrs: {", "})")
}

fn java_install(pkg: &Package, jdk: &str) -> Vec<String> {
    let share = format!("$out/share/{}", pkg.attr);
    let mut l = vec![
        "runHook preInstall".to_string(),
        format!("mkdir -p {share}"),
    ];
    match &pkg.options.jar {
        Some(jar) => {
            let base = jar.rsplit('/').next().unwrap_or(jar);
            l.push(format!("cp {jar} {share}/"));
            l.extend(launcher(
                &pkg.attr,
                &share,
                format!("exec ${{{jdk}}}/bin/java -jar {share}/{base} \"\\$@\""),
                &[],
            ));
        }
        None => l.push(format!(
            "cp -r target/*.jar build/libs/*.jar {share}/ 2>/dev/null || true"
        )),
    }
    l.push("runHook postInstall".into());
    l
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&pad);
            }
        }
        out.push_str(line);
    }
    out
}

/// Renders the flake.
pub fn generate(plan: &Plan) -> String {
    render(plan, None)
}

/// Where the cluster half of a flake comes from: the Procurator library's
/// flake URL and the cluster file next to flake.nix (`pcr init`).
#[derive(Debug, Clone)]
pub struct ClusterRef {
    /// Flake URL of Procurator's `nix/` directory (its `lib`).
    pub procurator_url: String,
    /// The cluster file, relative to flake.nix (`procurator.nix`).
    pub file: String,
    /// The system the VMs are built for.
    pub system: String,
}

/// Renders the flake with the `procurator` output of the flake contract
/// (`procurator.vmSpecs`, `procurator.closure`), evaluated from the cluster
/// file by the Procurator library's `evalNixosCluster`.
pub fn generate_with_cluster(plan: &Plan, cluster: &ClusterRef) -> String {
    render(plan, Some(cluster))
}

fn render(plan: &Plan, cluster: Option<&ClusterRef>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by autonix for {}. Review it, then commit it.",
        plan.name
    );
    if !plan.notes.is_empty() {
        s.push_str("#\n# Before the first build:\n");
        for n in &plan.notes {
            let _ = writeln!(s, "# - {n}");
        }
    }
    s.push_str("{\n");
    let _ = writeln!(
        s,
        "  description = {};",
        nix_str(&format!("{} (generated by autonix)", plan.name))
    );
    s.push('\n');
    s.push_str("  inputs.nixpkgs.url = \"github:NixOS/nixpkgs/nixos-unstable\";\n");
    if let Some(c) = cluster {
        s.push_str("  # Procurator's Nix library (the nix/ directory of its repository).\n");
        let _ = writeln!(
            s,
            "  inputs.procurator = {{\n    url = {};\n    inputs.nixpkgs.follows = \"nixpkgs\";\n  }};",
            nix_str(&c.procurator_url)
        );
    }
    s.push('\n');
    let args = if cluster.is_some() {
        "self, nixpkgs, procurator"
    } else {
        "self, nixpkgs"
    };
    let _ = write!(s, "  outputs =\n    {{ {args} }}:\n    let\n");
    s.push_str("      systems = [ \"x86_64-linux\" \"aarch64-linux\" \"x86_64-darwin\" \"aarch64-darwin\" ];\n");
    s.push_str("      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});\n");
    s.push_str("    in\n    {\n");

    // packages
    s.push_str("      packages = forAllSystems (\n        system: pkgs:\n        let\n          lib = pkgs.lib;\n");
    for pkg in &plan.packages {
        for b in bindings(pkg) {
            s.push('\n');
            for c in &b.comments {
                let _ = writeln!(s, "          # {c}");
            }
            let _ = writeln!(s, "          {} = {};", b.name, indent(&b.expr, 10));
        }
    }
    s.push_str("        in\n        {\n");
    let attrs: Vec<&str> = plan.packages.iter().map(|p| p.attr.as_str()).collect();
    if !attrs.is_empty() {
        let _ = writeln!(s, "          inherit {};", attrs.join(" "));
    }
    match attrs.as_slice() {
        [] => {}
        [one] => {
            let _ = writeln!(s, "          default = {one};");
        }
        many => {
            let _ = writeln!(
                s,
                "          default = pkgs.symlinkJoin {{\n            name = {};\n            paths = [ {} ];\n          }};",
                nix_str(&plan.name),
                many.join(" ")
            );
        }
    }
    s.push_str("        }\n      );\n\n");

    // dev shells
    s.push_str("      devShells = forAllSystems (\n        system: pkgs: {\n");
    s.push_str("          # Every project's toolchain and package manager.\n");
    if !plan.dev_shell_omitted.is_empty() {
        let _ = writeln!(
            s,
            "          # Also in use, in each project's own shell (`nix develop .#<name>`): {}.",
            plan.dev_shell_omitted.join(", ")
        );
    }
    s.push_str("          default = pkgs.mkShell {\n");
    let tools: Vec<String> = plan.dev_shell.iter().map(|t| pkgs_attr(t)).collect();
    let _ = writeln!(s, "            packages = [ {} ];", tools.join(" "));
    s.push_str("          };\n");
    for pkg in &plan.packages {
        let _ = writeln!(
            s,
            "          {} = pkgs.mkShell {{ inputsFrom = [ self.packages.${{system}}.{} ]; }};",
            pkg.attr, pkg.attr
        );
    }
    for pkg in &plan.shells {
        for line in stacks::shell(pkg) {
            let _ = writeln!(s, "          {line}");
        }
    }
    s.push_str("        }\n      );\n\n");

    // apps
    s.push_str("      apps = forAllSystems (\n        system: pkgs: {\n");
    for pkg in &plan.packages {
        let Some(program) = &pkg.program else {
            continue;
        };
        if let Some(run) = &pkg.commands.run {
            let _ = writeln!(s, "          # {}", run.replace('\n', " "));
        }
        let _ = writeln!(
            s,
            "          {} = {{\n            type = \"app\";\n            program = \"${{self.packages.${{system}}.{}}}/bin/{}\";\n          }};",
            pkg.attr, pkg.attr, program
        );
    }
    s.push_str("        }\n      );\n");
    if let Some(c) = cluster {
        let file = nix_path(&c.file);
        let system = nix_str(&c.system);
        let _ = write!(
            s,
            "\n      # The cluster CI deploys (flake contract: procurator.vmSpecs and\n      # procurator.closure): one VM group per runnable package, in {}.\n      procurator =\n        let\n          system = {system};\n        in\n        (procurator.lib.evalNixosCluster (\n          {{ inherit system; }}\n          // import {file} {{\n            pkgs = nixpkgs.legacyPackages.${{system}};\n            packages = self.packages.${{system}};\n          }}\n        )).procurator;\n",
            c.file
        );
    }
    s.push_str("    };\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(nix_str("a\"b${c}"), "\"a\\\"b\\${c}\"");
        assert_eq!(nix_indented("x ${y} ''z''"), "x ''${y} '''z'''");
        assert_eq!(
            heredoc_escape("gunicorn --bind :$PORT"),
            "gunicorn --bind :\\$PORT"
        );
    }
}
