//! Generates the client of the UmaDB server's gRPC API (`proto/umadb/v1/umadb.proto`), which
//! the network benchmarks measure beside Annal's server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_with_config(config, &["proto/umadb/v1/umadb.proto"], &["proto"])?;
    Ok(())
}
