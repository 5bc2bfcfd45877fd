//! hyperion-engine (placeholder; being written).
