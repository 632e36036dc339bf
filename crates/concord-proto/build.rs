//! Compiles the .proto files under `proto/` without `protoc`: `protox` parses them into a
//! file descriptor set, `tonic-prost-build` generates messages, clients and servers from it,
//! and the set itself (without source comments) is written out for gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

/// Every file compiled, relative to the `proto` include directory.
const PROTOS: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "etcd/v3electionpb/v3election.proto",
    "etcd/v3lockpb/v3lock.proto",
    "concord/peer/v1/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest_dir.join("proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed=proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }

    // Comments are kept for the generated rustdoc; the embedded set drops them, since
    // reflection clients only need the schema.
    let fds = protox::compile(PROTOS.iter().map(|p| include.join(p)), [&include])?;
    let mut embedded = fds.clone();
    for file in &mut embedded.file {
        file.source_code_info = None;
    }
    std::fs::write(
        out_dir.join("concord_descriptor.bin"),
        embedded.encode_to_vec(),
    )?;
    std::fs::write(out_dir.join("grpc_methods.rs"), grpc_methods(&fds))?;

    tonic_prost_build::configure()
        // Channels (`connect`) would pull tonic's transport into every user of the crate;
        // callers build their own `Channel` and use `with_origin`/`new` instead.
        .build_transport(false)
        // Raft messages and snapshot chunks are opaque payloads passed on without copying.
        .bytes(".concord.peer.v1")
        // Every server method has a default body answering `Unimplemented`, so a service
        // implements only what it supports (etcd's Auth, say) and states the rest clearly.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}

/// The entries of `GRPC_METHODS`: every method of every service, in declaration order.
fn grpc_methods(fds: &prost_types::FileDescriptorSet) -> String {
    let mut out = String::from("&[\n");
    for file in &fds.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                out.push_str(&format!(
                    "    GrpcMethod {{ service: {full:?}, method: {:?}, client_streaming: {}, server_streaming: {} }},\n",
                    method.name(),
                    method.client_streaming(),
                    method.server_streaming(),
                ));
            }
        }
    }
    out.push(']');
    out
}
