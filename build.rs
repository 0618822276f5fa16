//! Compiles proto/ (our CRIU-wire-compatible schemas) with protox + prost-build, so no system
//! `protoc` is needed. Also embeds the descriptor set, which `cryo show` uses to decode any image.

#![deny(unsafe_code)]

use std::path::PathBuf;

fn main() {
    let mut files: Vec<PathBuf> = std::fs::read_dir("proto/images")
        .expect("proto/images")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.push(PathBuf::from("proto/rpc.proto"));
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&files, ["proto/images", "proto"]).expect("compiling proto/");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )
    .expect("writing descriptors");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost codegen");
}
