//! hyperion-config (placeholder; being written).
