# One Procurator service as a NixOS module, from its description:
#
#   import ./service-module.nix "cache" ({ lib, common, cfg, ... }: {
#     binary = "cache";            # bin/<binary> of the package
#     defaultListen = "127.0.0.1:5000";
#     options = { ... };           # beside service-common's commonOptions
#     extraConfig = { ... };       # optional: users, kernel modules, ...
#     service = { ... };           # service-common's mkService arguments
#   })
#
# The description gets the module arguments plus `common` (service-common.nix)
# and `cfg` (config.services.procurator.<name>), so a service module states
# only what is its own.
name: describe:
# `pkgs` is named so the module system passes it on to the description.
{ config, lib, pkgs, ... }@args:
let
  common = import ./service-common.nix { inherit lib; };
  cfg = config.services.procurator.${name};
  described = describe (args // { inherit common cfg; });
in
{
  options.services.procurator.${name} = common.commonOptions {
    inherit name;
    inherit (described) binary defaultListen;
  } // described.options;
  config = lib.mkIf cfg.enable ((described.extraConfig or { }) // common.mkService ({
    inherit name cfg pkgs;
    inherit (described) binary;
    workerId = (config.services.procurator.worker or { }).workerId or null;
  } // described.service));
}
