//! Flake text for the stacks beyond the first six, one function per
//! nixpkgs builder, plus the dev shells of projects nixpkgs cannot build.

use super::{
    Attrs, Binding, Rendered, fake_hash, launcher, nix_str, pkgs_attr, placeholder_comment,
    toolchain, user_command,
};
use crate::plan::{Builder, Package};

/// The package expression for a builder planned in `plan::stacks`.
pub(super) fn render(pkg: &Package) -> Rendered {
    match pkg.builder {
        Builder::Dotnet => dotnet(pkg).into(),
        Builder::Composer => composer(pkg).into(),
        Builder::Zig => zig(pkg).into(),
        Builder::MixRelease => mix(pkg).into(),
        Builder::Haskell => haskell(pkg),
        Builder::Flutter | Builder::Dart => dart(pkg).into(),
        Builder::Swift => swift(pkg).into(),
        Builder::ShellApplication => shell_application(pkg).into(),
        // CMake, Meson, autotools and Make; a DevShell project never
        // becomes a package, so it falls here only if planned by hand.
        _ => cfamily(pkg).into(),
    }
}

fn list(attrs: &[String]) -> String {
    if attrs.is_empty() {
        "[ ]".into()
    } else {
        format!("[ {} ]", attrs.join(" "))
    }
}

fn pkgs_list(attrs: &[String]) -> String {
    list(&attrs.iter().map(|a| pkgs_attr(a)).collect::<Vec<_>>())
}

/// buildDotnetModule: the project file, NuGet's lock data and the SDK and
/// runtime of the planned .NET version.
fn dotnet(pkg: &Package) -> String {
    let o = &pkg.options.stack;
    let mut a = Attrs::package(pkg);
    if let Some(p) = &o.project_file {
        a.set("projectFile", nix_str(p));
    }
    placeholder_comment(&mut a, pkg, "deps.json");
    a.set(
        "nugetDeps",
        o.generated.clone().unwrap_or_else(|| "./deps.json".into()),
    );
    a.set("dotnet-sdk", toolchain(pkg));
    if let Some(r) = &o.runtime {
        a.set("dotnet-runtime", pkgs_attr(r));
    }
    if let Some(p) = &pkg.program {
        a.set("executables", format!("[ {} ]", nix_str(p)));
    }
    a.render("pkgs.buildDotnetModule {", "}")
}

/// php.buildComposerProject2 from the planned PHP; a launcher runs the
/// app's serve command from the installed tree.
fn composer(pkg: &Package) -> String {
    let php = toolchain(pkg);
    let mut a = Attrs::package(pkg);
    fake_hash(&mut a, pkg, "vendorHash");
    if let Some(run) = &pkg.commands.run {
        let share = format!("$out/share/php/{}", pkg.pname);
        a.script(
            "postInstall",
            &launcher(
                &pkg.attr,
                &share,
                user_command(run),
                std::slice::from_ref(&php),
            ),
        );
    }
    a.render(
        &format!("{php}.buildComposerProject2 (finalAttrs: {{"),
        "})",
    )
}

/// stdenv.mkDerivation with the build system's setup hook (cmake, meson +
/// ninja, autoreconfHook) or plain make.
fn cfamily(pkg: &Package) -> String {
    let o = &pkg.options.stack;
    let mut a = Attrs::package(pkg);
    if !o.native_build_inputs.is_empty() {
        a.set("nativeBuildInputs", pkgs_list(&o.native_build_inputs));
    }
    if !o.unknown_libraries.is_empty() {
        a.comment(&format!(
            "The build also looks for {}: add their nixpkgs packages here.",
            o.unknown_libraries.join(", ")
        ));
    }
    if !o.build_inputs.is_empty() || !o.unknown_libraries.is_empty() {
        a.set("buildInputs", pkgs_list(&o.build_inputs));
    }
    if pkg.builder == Builder::Make && o.install.is_empty() {
        a.set("makeFlags", format!("[ {} ]", nix_str("PREFIX=$(out)")));
    }
    if !o.install.is_empty() {
        a.comment("The build has no install rules: copy its programs.");
        let mut l = vec!["runHook preInstall".to_string()];
        for path in &o.install {
            let name = path.rsplit('/').next().unwrap_or(path);
            l.push(format!("install -Dm755 {path} $out/bin/{name}"));
        }
        l.push("runHook postInstall".into());
        a.script("installPhase", &l);
    }
    a.render("pkgs.stdenv.mkDerivation {", "}")
}

/// stdenv.mkDerivation with the planned Zig's setup hook; fetched
/// dependencies come from zon2nix's file.
fn zig(pkg: &Package) -> String {
    let mut a = Attrs::package(pkg);
    a.set("nativeBuildInputs", format!("[ {}.hook ]", toolchain(pkg)));
    if let Some(g) = &pkg.options.stack.generated {
        placeholder_comment(&mut a, pkg, "build.zig.zon.nix");
        a.script(
            "postPatch",
            &[format!(
                "ln -s ${{pkgs.callPackage {g} {{ }}}} $ZIG_GLOBAL_CACHE_DIR/p"
            )],
        );
    }
    a.render("pkgs.stdenv.mkDerivation {", "}")
}

/// beamPackages.mixRelease with its dependencies as a fixed-output
/// derivation (fetchMixDeps).
fn mix(pkg: &Package) -> String {
    let tc = toolchain(pkg);
    let pinned = pkg.toolchain.nix_attr != "elixir";
    let mut d = Attrs::default();
    d.set("pname", nix_str(&format!("mix-deps-{}", pkg.pname)))
        .set("version", nix_str(&pkg.version))
        .set("src", &pkg.src);
    if pinned {
        d.set("elixir", &tc);
    }
    placeholder_comment(&mut d, pkg, "mixFodDeps");
    d.set("hash", "lib.fakeHash");
    let mut a = Attrs::package(pkg);
    if pinned {
        a.set("elixir", &tc);
    }
    a.set(
        "mixFodDeps",
        d.render("pkgs.beamPackages.fetchMixDeps {", "}"),
    );
    a.render("pkgs.beamPackages.mixRelease {", "}")
}

/// callCabal2nix from the planned GHC's package set; a workspace's local
/// packages join the set so they find each other.
fn haskell(pkg: &Package) -> Rendered {
    let o = &pkg.options.stack;
    let set = format!(
        "pkgs.{}",
        o.package_set.as_deref().unwrap_or("haskellPackages")
    );
    let main = o.main_package.clone().unwrap_or_else(|| pkg.pname.clone());
    let wrap = |e: String| format!("pkgs.haskell.lib.justStaticExecutables ({e})");
    if o.local_packages.len() <= 1 {
        let src = o
            .local_packages
            .first()
            .map_or(pkg.src.clone(), |(_, p)| p.clone());
        return wrap(format!(
            "{set}.callCabal2nix {} {src} {{ }}",
            nix_str(&main)
        ))
        .into();
    }
    let name = format!("{}-haskell-packages", pkg.attr);
    let mut l = Attrs::default();
    for (n, path) in &o.local_packages {
        l.set(
            &nix_str(n),
            format!("self.callCabal2nix {} {path} {{ }}", nix_str(n)),
        );
    }
    let deps = Binding {
        name: name.clone(),
        comments: vec![format!(
            "{}: the workspace's packages, built against each other.",
            pkg.project
        )],
        expr: l.render(&format!("{set}.extend (self: super: {{"), "})"),
    };
    Rendered {
        deps: Some(deps),
        expr: wrap(format!("{name}.{}", nix_str(&main))),
    }
}

/// buildFlutterApplication / buildDartApplication, reading pubspec.lock.
fn dart(pkg: &Package) -> String {
    let mut a = Attrs::package(pkg);
    if let Some(l) = &pkg.options.lockfile {
        a.set("autoPubspecLock", l);
        a.comment("Git dependencies also need gitHashes.");
    }
    if let Some(t) = &pkg.options.stack.target_platform {
        a.set("targetFlutterPlatform", nix_str(t));
    }
    if pkg.builder == Builder::Flutter {
        a.render(
            &format!("{}.buildFlutterApplication {{", toolchain(pkg)),
            "}",
        )
    } else {
        a.render("pkgs.buildDartApplication {", "}")
    }
}

/// swiftPackages' stdenv with swift and swiftpm; remote dependencies
/// come from swiftpm2nix's generated files.
fn swift(pkg: &Package) -> String {
    let o = &pkg.options.stack;
    let mut a = Attrs::package(pkg);
    a.set(
        "nativeBuildInputs",
        "[ pkgs.swiftPackages.swift pkgs.swiftPackages.swiftpm ]",
    );
    if let Some(g) = &o.generated {
        placeholder_comment(&mut a, pkg, "nix/");
        a.set(
            "configurePhase",
            format!("(pkgs.swiftpm2nix.helpers {g}).configure"),
        );
    }
    let mut l = vec![
        "runHook preInstall".to_string(),
        "binPath=\"$(swiftpmBinPath)\"".to_string(),
        "mkdir -p $out/bin".to_string(),
    ];
    for b in &o.install {
        l.push(format!("cp $binPath/{b} $out/bin/"));
    }
    l.push("runHook postInstall".into());
    a.script("installPhase", &l);
    a.render("pkgs.swiftPackages.stdenv.mkDerivation {", "}")
}

/// writeShellApplication per script (shellchecked, with the commands it
/// calls on PATH); several scripts are joined into one package.
fn shell_application(pkg: &Package) -> String {
    let o = &pkg.options.stack;
    let app = |name: &str, path: &str| {
        let mut a = Attrs::default();
        a.set("name", nix_str(name))
            .set("runtimeInputs", pkgs_list(&o.runtime_inputs))
            .set("text", format!("builtins.readFile {path}"));
        a.render("pkgs.writeShellApplication {", "}")
    };
    match o.scripts.as_slice() {
        [(name, path)] => app(name, path),
        scripts => {
            let mut a = Attrs::default();
            a.set("name", nix_str(&pkg.pname));
            let apps: Vec<String> = scripts
                .iter()
                .map(|(n, p)| format!("({})", app(n, p)))
                .collect();
            a.set("paths", format!("[\n{}\n]", apps.join("\n")));
            a.render("pkgs.symlinkJoin {", "}")
        }
    }
}

/// The dev shell of a project nixpkgs cannot build: its toolchain and
/// tools, after comments saying what it is and why there is no package.
pub(super) fn shell(pkg: &Package) -> Vec<String> {
    let mut l = vec![format!(
        "# {} ({}, {}): no package, see the note above.",
        pkg.project,
        pkg.language.as_str(),
        pkg.package_manager
    )];
    let mut tools = vec![pkg.toolchain.nix_attr.clone()];
    tools.extend(pkg.toolchain.tools.iter().cloned());
    l.push(format!(
        "{} = pkgs.mkShell {{ packages = {}; }};",
        pkg.attr,
        pkgs_list(&tools)
    ));
    l
}
