# The hermetic example cluster: one entry per VM group. Each setting sits on
# its own line so a test (or the README's demo) can change exactly one VM by
# editing one line:
#   - `message` is written into the group's disk image: changing db's message
#     changes db-0's contentHash and nothing else;
#   - `cpu = 0;` (or any invalid setting) makes evaluation fail;
#   - `failBuild = true;` makes the group's disk image build fail.
{
  web = {
    replicas = 2;
    cpu = 1;
    memoryMb = 256;
    allowedDomains = [ "example.com" ];
    labels = { tier = "frontend"; };
    message = "hello from web v1";
    failBuild = false;
  };
  db = {
    replicas = 1;
    cpu = 1;
    memoryMb = 512;
    allowedDomains = [ ];
    labels = { tier = "backend"; };
    message = "hello from db v1";
    failBuild = false;
  };
}
