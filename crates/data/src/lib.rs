//! hyperion-data (placeholder; being written).
