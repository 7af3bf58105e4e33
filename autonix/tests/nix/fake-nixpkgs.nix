# A stand-in for nixpkgs used by autonix's tests: every builder returns its
# own name and the arguments it was called with, every package is a named
# placeholder, so a test can assert what a generated flake asks nixpkgs for
# without building anything. An attribute the real nixpkgs lacks is missing
# here too, so referencing it fails the evaluation.
let
  fakeHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";
  # `type = "derivation"` as real packages have: the Procurator library
  # accepts only derivations (or store paths) in a VM's packages.
  pkg = name: {
    __autonix_pkg = name;
    type = "derivation";
    outPath = storePath name;
  };
  result = builder: args: {
    __autonix_builder = builder;
    inherit args;
    type = "derivation";
    outPath = storePath (args.pname or args.name or builder);
  };
  # A builder that can also be `.override`n (buildGoModule.override { go = …; }).
  overridable = builder: ov: {
    __functor = self: args: (result builder args) // { __autonix_override = ov; };
    override = o: overridable builder o;
  };
  builder = name: args: result name args;

  lib = {
    inherit fakeHash;
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    makeBinPath = ps: builtins.concatStringsSep ":" (map (p: "${p}/bin") ps);
  };

  pythonNames = [
    "fastapi" "uvicorn" "django" "psycopg2" "flask" "requests" "gunicorn" "pandas"
    "typing-extensions" "click" "celery" "redis" "hatchling" "poetry-core" "pdm-backend" "setuptools"
  ];
  python = name:
    (pkg name) // {
      pkgs = (lib.genAttrs pythonNames (n: pkg "${name}.pkgs.${n}")) // {
        buildPythonApplication = builder "${name}.pkgs.buildPythonApplication";
      };
    };
  plain = names: lib.genAttrs names pkg;
  # finalAttrs.finalPackage stands for the package itself; a marker keeps
  # the printed arguments finite.
  mkDerivation = a:
    builder "stdenv.mkDerivation" (if builtins.isFunction a then a { finalPackage = pkg "finalPackage"; } else a);
  # A builder called with `finalAttrs: { … }` or a plain set.
  fixBuilder = name: a:
    builder name (if builtins.isFunction a then a { finalPackage = pkg "finalPackage"; } else a);

  # A Haskell package set: callCabal2nix returns a package named after its
  # argument; `extend` applies an overlay with nixpkgs' fixpoint semantics.
  haskellSet = name:
    let
      base = {
        callCabal2nix = pname: src: args: builder "${name}.callCabal2nix" { inherit pname src; };
      };
    in
    base // { extend = f: let self = base // f self base; in self; };
  ghcs = [ "ghc94" "ghc96" "ghc98" "ghc910" ];
  dotnetSeries = [ "6_0" "7_0" "8_0" "9_0" ];
in
plain [
  "rustc" "cargo" "clippy" "rustfmt" "rust-analyzer" "go" "go_1_20" "go_1_21" "go_1_22" "go_1_23"
  "gopls" "nodejs" "nodejs_18" "nodejs_20" "nodejs_22" "nodejs_24" "yarn" "bun" "uv" "poetry" "pdm"
  "pipenv" "ruby" "ruby_3_1" "ruby_3_2" "ruby_3_3" "bundix" "jdk" "jdk8" "jdk11" "jdk17" "jdk21"
  "yarnConfigHook" "yarnBuildHook" "runtimeShell"
]
// lib.genAttrs [ "python3" "python310" "python311" "python312" "python313" ] python
// plain [ "pnpm" "pnpm_8" "pnpm_9" "pnpm_10" "pnpmConfigHook" ]
// lib.genAttrs [ "yarn-berry" "yarn-berry_3" "yarn-berry_4" ] (n: (pkg n) // {
  fetchYarnBerryDeps = builder "${n}.fetchYarnBerryDeps";
  yarnBerryConfigHook = pkg "${n}.yarnBerryConfigHook";
})
// plain [
  "dotnet-sdk" "dotnet-runtime" "dotnet-aspnetcore" "gcc" "cmake" "meson" "ninja" "gnumake"
  "autoconf" "automake" "libtool" "autoreconfHook" "pkg-config" "fmt" "spdlog" "boost" "openssl"
  "zlib" "libpng" "curl" "sqlite" "nlohmann_json" "gtest" "catch2_3" "libuv" "oniguruma" "readline" "ncurses" "glib"
  "gtk4" "SDL2" "elixir" "elixir_1_14" "elixir_1_15" "elixir_1_16" "elixir_1_17" "erlang" "ghc"
  "cabal-install" "stack" "sbt" "scala" "scala_2_12" "scala_2_13" "scala_3" "dart" "swift"
  "swiftpm" "deno" "bash" "shellcheck" "jq" "git" "rsync" "wget" "fzf" "openssh" "gawk" "conda"
]
// lib.genAttrs [ "php" "php81" "php82" "php83" "php84" ] (n: (pkg n) // {
  buildComposerProject = fixBuilder "${n}.buildComposerProject";
  buildComposerProject2 = fixBuilder "${n}.buildComposerProject2";
})
// lib.genAttrs [ "zig" "zig_0_11" "zig_0_12" "zig_0_13" "zig_0_14" ] (n: (pkg n) // {
  hook = pkg "${n}.hook";
})
// lib.genAttrs [ "flutter" "flutter324" "flutter327" "flutter329" ] (n: (pkg n) // {
  buildFlutterApplication = builder "${n}.buildFlutterApplication";
})
// {
  inherit lib;
  dotnetCorePackages = lib.genAttrs
    (builtins.concatMap (v: [ "sdk_${v}" "runtime_${v}" "aspnetcore_${v}" ]) dotnetSeries)
    (n: pkg "dotnetCorePackages.${n}");
  buildDotnetModule = builder "buildDotnetModule";
  phpPackages.composer = pkg "phpPackages.composer";
  # callPackage of a generated file (zon2nix): named after the file, which
  # need not exist yet.
  callPackage = path: args: pkg "callPackage ${baseNameOf (toString path)}";
  beamPackages = {
    mixRelease = builder "beamPackages.mixRelease";
    fetchMixDeps = builder "beamPackages.fetchMixDeps";
  };
  haskellPackages = haskellSet "haskellPackages";
  haskell = {
    compiler = lib.genAttrs ghcs (n: pkg "haskell.compiler.${n}");
    packages = lib.genAttrs ghcs (n: haskellSet "haskell.packages.${n}");
    lib.justStaticExecutables = drv:
      result "haskell.lib.justStaticExecutables" { inherit (drv.args) pname; inherit drv; };
  };
  buildDartApplication = builder "buildDartApplication";
  swiftPackages = {
    stdenv.mkDerivation = builder "swiftPackages.stdenv.mkDerivation";
    swift = pkg "swiftPackages.swift";
    swiftpm = pkg "swiftPackages.swiftpm";
  };
  swiftpm2nix = (pkg "swiftpm2nix") // {
    helpers = dir: { configure = "swiftpm2nix configure from ${baseNameOf (toString dir)}"; };
  };
  writeShellApplication = builder "writeShellApplication";
  stdenv = { inherit mkDerivation; };
  mkShell = builder "mkShell";
  symlinkJoin = builder "symlinkJoin";
  rustPlatform.buildRustPackage = builder "rustPlatform.buildRustPackage";
  buildGoModule = overridable "buildGoModule" null;
  buildNpmPackage = builder "buildNpmPackage";
  importNpmLock = {
    __functor = self: builder "importNpmLock";
    npmConfigHook = pkg "importNpmLock.npmConfigHook";
  };
  fetchYarnDeps = builder "fetchYarnDeps";
  fetchPnpmDeps = builder "fetchPnpmDeps";
  bundlerEnv = args: (builder "bundlerEnv" args) // { wrappedRuby = pkg "${args.name}.wrappedRuby"; };
  maven = (pkg "maven") // { buildMavenPackage = builder "maven.buildMavenPackage"; };
  gradle = (pkg "gradle") // { fetchDeps = builder "gradle.fetchDeps"; };
}
