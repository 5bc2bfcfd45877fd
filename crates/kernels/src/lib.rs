//! hyperion-kernels (placeholder; being written).
