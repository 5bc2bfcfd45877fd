//! hyperion-planner (placeholder; being written).
