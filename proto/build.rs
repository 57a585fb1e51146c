//! Compiles proto/*.proto with protox (pure Rust), so building needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/tributary.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Record bytes stay `bytes::Bytes`: slices of the received buffer,
        // never copied per record.
        .bytes(".")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto/tributary.proto");
    Ok(())
}
