//! Generates the Rust wire types from `istio/v1/auth/ca.proto` and `ca/v1/ca.proto` with protox,
//! so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["istio/v1/auth/ca.proto", "ca/v1/ca.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let descriptor_path =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
