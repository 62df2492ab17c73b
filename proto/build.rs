//! Compiles the `.proto` contract with protox (pure Rust), so building never
//! needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/parhelia/v1/agent.proto",
        "proto/parhelia/v1/coordinator.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Events are also the journal's on-disk form (JSON lines), so wire
        // types carry serde. `default` lets newer readers accept older lines.
        .message_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        // A main-agent line stays as it was before subagents had a parent.
        .field_attribute(
            ".parhelia.v1.AssistantText.parent_tool_use_id",
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        )
        .field_attribute(
            ".parhelia.v1.ToolCall.parent_tool_use_id",
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        )
        .field_attribute(
            ".parhelia.v1.ToolResult.parent_tool_use_id",
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        )
        // Added to checkpoint_created later: absent (not null) when unknown.
        .field_attribute(
            ".parhelia.v1.CheckpointCreated.git_ms",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            ".parhelia.v1.CheckpointCreated.fsync_ms",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            ".parhelia.v1.CheckpointCreated.hook_wait_ms",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            ".parhelia.v1.CheckpointCreated.duration_us",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .enum_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"snake_case\")]",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
