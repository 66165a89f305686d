//! Generates the protobuf messages and the gRPC service code from `proto/annal/v1/annal.proto`
//! with a protoc that ships as a crate, so that building needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Payloads become `bytes::Bytes`, so the server hands event data to the encoder without
    // copying it.
    config.bytes([
        ".annal.v1.RecordedEvent.data",
        ".annal.v1.NewEvent.data",
        ".annal.v1.PutSnapshotRequest.data",
        ".annal.v1.Snapshot.data",
    ]);
    // Written by hand (src/batch.rs): it encodes engine events straight into the buffer.
    config.extern_path(".annal.v1.ReadResponse", "crate::batch::ReadResponse");
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/annal/v1/annal.proto"],
        &["proto"],
    )?;
    Ok(())
}
