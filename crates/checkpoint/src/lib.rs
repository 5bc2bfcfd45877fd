//! hyperion-checkpoint (placeholder; being written).
