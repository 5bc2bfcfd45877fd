//! The crate's error type.
//!
//! Kernels take flat slices whose lengths are fixed by the shapes the caller passes;
//! a mismatch is a programmer error, so kernels panic with the `Display` text of a
//! [`KernelError`] (naming the kernel, the buffer and both lengths). Conditions a user
//! can cause (token ids from a data file) have checked entry points returning `Result`.

/// Everything that can be wrong with the arguments of a kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// A buffer's length does not match the shape arguments.
    #[error("kernel `{kernel}`: buffer `{buffer}` has {got} elements, expected {expected}")]
    LengthMismatch {
        kernel: &'static str,
        buffer: &'static str,
        expected: usize,
        got: usize,
    },
    /// A token id (embedding input or loss target) is not below the vocabulary size.
    #[error("kernel `{kernel}`: token id {token} at position {position} is outside the vocabulary of size {vocab}")]
    TokenOutOfRange {
        kernel: &'static str,
        position: usize,
        token: u32,
        vocab: usize,
    },
    /// The channel count is not a multiple of the head count.
    #[error("kernel `{kernel}`: channels {channels} are not divisible by heads {heads}")]
    HeadsDoNotDivide {
        kernel: &'static str,
        channels: usize,
        heads: usize,
    },
    /// Grouped-query attention: the query heads are not a positive multiple of the
    /// key/value heads (`nkv >= 1`, `nh >= nkv`, `nh % nkv == 0`).
    #[error("kernel `{kernel}`: query heads {heads} are not a positive multiple of key/value heads {kv_heads}")]
    KvHeadsDoNotDivide {
        kernel: &'static str,
        heads: usize,
        kv_heads: usize,
    },
    /// A scalar argument is outside its domain (e.g. temperature <= 0).
    #[error("kernel `{kernel}`: argument `{name}` = {value} is invalid: {why}")]
    InvalidArgument {
        kernel: &'static str,
        name: &'static str,
        value: f64,
        why: &'static str,
    },
}

/// Checks that every id in `tokens` is below `vocab`; returns the first offender.
///
/// Call this on ids read from user data before handing them to
/// [`crate::embedding_forward`] or the loss kernels (which panic on bad ids).
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<(), KernelError> {
    match tokens.iter().position(|&t| t as usize >= vocab) {
        None => Ok(()),
        Some(position) => Err(KernelError::TokenOutOfRange {
            kernel: "check_tokens",
            position,
            token: tokens[position],
            vocab,
        }),
    }
}

/// Panics with a [`KernelError::LengthMismatch`] message unless `got == expected`.
#[inline]
#[track_caller]
pub(crate) fn check_len(kernel: &'static str, buffer: &'static str, got: usize, expected: usize) {
    if got != expected {
        panic!(
            "{}",
            KernelError::LengthMismatch { kernel, buffer, expected, got }
        );
    }
}

/// Panics with a [`KernelError::TokenOutOfRange`] message on the first bad id.
#[inline]
#[track_caller]
pub(crate) fn check_ids(kernel: &'static str, tokens: &[u32], vocab: usize) {
    if let Some(position) = tokens.iter().position(|&t| t as usize >= vocab) {
        panic!(
            "{}",
            KernelError::TokenOutOfRange { kernel, position, token: tokens[position], vocab }
        );
    }
}
