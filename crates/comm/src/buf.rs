//! Typed views of the buffers a collective works on, and the element-wise reductions.
//!
//! The `Communicator` trait takes `Buf`/`BufMut` (an enum over `f32`, `bf16` and raw
//! bytes) instead of a generic `&mut [T]`, which keeps the trait object-safe
//! (`Box<dyn Communicator>`) while backends stay table-driven over the data type.

use half::bf16;

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
    U8,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
            DType::U8 => 1,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::U8 => "u8",
        })
    }
}

/// Reduction applied element-wise by `all_reduce` and `reduce_scatter`.
///
/// `Avg` is `Sum` followed by a division by the group size (data-parallel gradient
/// averaging). Reductions are defined for `f32` and `bf16` only; `bf16` values are
/// accumulated in `f32` and rounded once, so the result does not depend on how many
/// partial sums a backend forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
    Avg,
}

/// A read-only buffer of one of the supported element types.
#[derive(Clone, Copy, Debug)]
pub enum Buf<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    Bytes(&'a [u8]),
}

/// A writable buffer of one of the supported element types.
#[derive(Debug)]
pub enum BufMut<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
    Bytes(&'a mut [u8]),
}

impl<'a> Buf<'a> {
    pub fn dtype(&self) -> DType {
        match self {
            Buf::F32(_) => DType::F32,
            Buf::Bf16(_) => DType::Bf16,
            Buf::Bytes(_) => DType::U8,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buf::F32(s) => s.len(),
            Buf::Bf16(s) => s.len(),
            Buf::Bytes(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Address of the first element, as bytes.
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            Buf::F32(s) => s.as_ptr().cast(),
            Buf::Bf16(s) => s.as_ptr().cast(),
            Buf::Bytes(s) => s.as_ptr(),
        }
    }
}

impl<'a> BufMut<'a> {
    pub fn dtype(&self) -> DType {
        match self {
            BufMut::F32(_) => DType::F32,
            BufMut::Bf16(_) => DType::Bf16,
            BufMut::Bytes(_) => DType::U8,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            BufMut::F32(s) => s.len(),
            BufMut::Bf16(s) => s.len(),
            BufMut::Bytes(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Address of the first element, as bytes.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            BufMut::F32(s) => s.as_mut_ptr().cast(),
            BufMut::Bf16(s) => s.as_mut_ptr().cast(),
            BufMut::Bytes(s) => s.as_mut_ptr(),
        }
    }
    /// Reborrow as read-only.
    pub fn as_buf(&self) -> Buf<'_> {
        match self {
            BufMut::F32(s) => Buf::F32(s),
            BufMut::Bf16(s) => Buf::Bf16(s),
            BufMut::Bytes(s) => Buf::Bytes(s),
        }
    }
    /// Reborrow for a shorter lifetime (to pass the same buffer to several calls).
    pub fn reborrow(&mut self) -> BufMut<'_> {
        match self {
            BufMut::F32(s) => BufMut::F32(s),
            BufMut::Bf16(s) => BufMut::Bf16(s),
            BufMut::Bytes(s) => BufMut::Bytes(s),
        }
    }
}

macro_rules! buf_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a [$t]> for Buf<'a> {
            fn from(s: &'a [$t]) -> Self {
                Buf::$v(s)
            }
        }
        impl<'a> From<&'a mut [$t]> for Buf<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                Buf::$v(s)
            }
        }
        impl<'a> From<&'a Vec<$t>> for Buf<'a> {
            fn from(s: &'a Vec<$t>) -> Self {
                Buf::$v(s)
            }
        }
        impl<'a> From<&'a mut [$t]> for BufMut<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                BufMut::$v(s)
            }
        }
        impl<'a> From<&'a mut Vec<$t>> for BufMut<'a> {
            fn from(s: &'a mut Vec<$t>) -> Self {
                BufMut::$v(s)
            }
        }
    };
}
buf_from!(f32, F32);
buf_from!(bf16, Bf16);
buf_from!(u8, Bytes);

/// Elements that can be reduced: loaded into an `f32` accumulator and stored back.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn load(acc: &mut [f32], src: &[Self]);
    fn combine(acc: &mut [f32], src: &[Self], op: ReduceOp);
    fn store(dst: &mut [Self], acc: &[f32]);
}

impl Elem for f32 {
    fn load(acc: &mut [f32], src: &[f32]) {
        acc.copy_from_slice(src);
    }
    fn combine(acc: &mut [f32], src: &[f32], op: ReduceOp) {
        // Plain zipped loops: LLVM vectorises both to AVX-512 adds/maxes.
        match op {
            ReduceOp::Sum | ReduceOp::Avg => acc.iter_mut().zip(src).for_each(|(a, s)| *a += *s),
            ReduceOp::Max => acc.iter_mut().zip(src).for_each(|(a, s)| *a = a.max(*s)),
        }
    }
    fn store(dst: &mut [f32], acc: &[f32]) {
        dst.copy_from_slice(acc);
    }
}

impl Elem for bf16 {
    fn load(acc: &mut [f32], src: &[bf16]) {
        acc.iter_mut().zip(src).for_each(|(a, s)| *a = s.to_f32());
    }
    fn combine(acc: &mut [f32], src: &[bf16], op: ReduceOp) {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => acc.iter_mut().zip(src).for_each(|(a, s)| *a += s.to_f32()),
            ReduceOp::Max => acc.iter_mut().zip(src).for_each(|(a, s)| *a = a.max(s.to_f32())),
        }
    }
    fn store(dst: &mut [bf16], acc: &[f32]) {
        dst.iter_mut().zip(acc).for_each(|(d, a)| *d = bf16::from_f32(*a));
    }
}

/// Serial reference of a reduction over `inputs` in rank order; used by tests and by
/// backends that reduce on the host. `Avg` divides by `inputs.len()`.
pub fn reduce_reference<T: Copy>(inputs: &[&[T]], op: ReduceOp, to: fn(T) -> f32, from: fn(f32) -> T) -> Vec<T> {
    let n = inputs.first().map_or(0, |s| s.len());
    (0..n)
        .map(|i| {
            let mut acc = to(inputs[0][i]);
            for s in &inputs[1..] {
                acc = match op {
                    ReduceOp::Sum | ReduceOp::Avg => acc + to(s[i]),
                    ReduceOp::Max => acc.max(to(s[i])),
                };
            }
            if op == ReduceOp::Avg {
                acc /= inputs.len() as f32;
            }
            from(acc)
        })
        .collect()
}
