//! hyperion-comm (placeholder; being written).
