//! hyperion-model (placeholder; being written).
