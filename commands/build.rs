//! Compiles the Cap'n Proto schemas with Debian's `capnp` tool via capnpc.

fn main() {
    for schema in ["common", "worker", "master"] {
        println!("cargo:rerun-if-changed=schema/{schema}.capnp");
    }
    if let Err(e) = capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file("schema/common.capnp")
        .file("schema/worker.capnp")
        .file("schema/master.capnp")
        .run()
    {
        panic!(
            "compiling the Cap'n Proto schemas failed: {e}\n\
             (the `capnp` compiler comes from Debian's `capnproto` package; \
             scripts/install-deps.sh installs it)"
        );
    }
}
