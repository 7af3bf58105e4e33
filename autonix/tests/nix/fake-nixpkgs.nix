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
// {
  inherit lib;
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
