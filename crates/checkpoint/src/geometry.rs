//! Boxes of a row-major tensor: the arithmetic behind N-d pieces.
//!
//! A box is a `(start, len)` pair per dimension. Its elements, taken in row-major order
//! *within the box*, are also in increasing global flat order, which is what lets a
//! piece store a box as one contiguous run of bytes and a reader copy between any two
//! boxes run by run. A flat range `[start, end)` of the global tensor is a union of at
//! most `2 * rank - 1` boxes, each contiguous in flat order ([`flat_to_boxes`]), so
//! flat and N-d pieces and requests all meet on boxes.

/// `(start, len)` per dimension.
pub(crate) type Block = Vec<(usize, usize)>;

/// Number of elements of a box (callers have checked that the tensor's numel fits).
pub(crate) fn volume(block: &[(usize, usize)]) -> usize {
    block.iter().map(|&(_, len)| len).product()
}

/// Row-major strides of `dims`.
fn strides(dims: impl DoubleEndedIterator<Item = usize> + ExactSizeIterator) -> Vec<usize> {
    let mut out = vec![0; dims.len()];
    let mut acc = 1;
    for (slot, d) in out.iter_mut().zip(dims).rev() {
        *slot = acc;
        acc *= d;
    }
    out
}

/// Flat index of the element at `coords` (one per dim) of a tensor of `shape`.
fn flat_index(shape: &[usize], coords: impl Iterator<Item = usize>) -> usize {
    strides(shape.iter().copied())
        .iter()
        .zip(coords)
        .map(|(s, c)| s * c)
        .sum()
}

/// The flat span `[first, last + 1)` of the global tensor that a non-empty box touches;
/// `(0, 0)` for an empty box. Recorded as `start`/`end` of N-d pieces, so a reader can
/// skip pieces that cannot intersect a flat range.
pub(crate) fn span(shape: &[usize], block: &[(usize, usize)]) -> (usize, usize) {
    if volume(block) == 0 {
        return (0, 0);
    }
    let first = flat_index(shape, block.iter().map(|&(s, _)| s));
    let last = flat_index(shape, block.iter().map(|&(s, l)| s + l - 1));
    (first, last + 1)
}

/// True if the box is the whole tensor of `shape`.
pub(crate) fn is_whole(shape: &[usize], block: &[(usize, usize)]) -> bool {
    shape.len() == block.len()
        && shape
            .iter()
            .zip(block)
            .all(|(&d, &(s, l))| s == 0 && l == d)
}

/// Why a box does not fit a shape, for error messages; `None` if it fits.
pub(crate) fn misfit(shape: &[usize], block: &[(usize, usize)]) -> Option<String> {
    if block.len() != shape.len() {
        return Some(format!(
            "slice has {} dims, the tensor's shape {shape:?} has {}",
            block.len(),
            shape.len()
        ));
    }
    for (k, (&d, &(s, l))) in shape.iter().zip(block).enumerate() {
        if s.checked_add(l).is_none_or(|e| e > d) {
            return Some(format!(
                "dim {k}: start {s} + len {l} exceeds its size {d} (shape {shape:?})"
            ));
        }
    }
    None
}

/// `[a:b, c:d]`: a box in Python slice notation (ends exclusive), for keys and errors.
pub(crate) fn show(block: &[(usize, usize)]) -> String {
    let dims: Vec<String> = block.iter().map(|&(s, l)| show_dim(s, l)).collect();
    format!("[{}]", dims.join(", "))
}

/// `start:end` of one dim (`start:start+len` if the end overflows).
pub(crate) fn show_dim(start: usize, len: usize) -> String {
    match start.checked_add(len) {
        Some(end) => format!("{start}:{end}"),
        None => format!("{start}:{start}+{len}"),
    }
}

/// The boxes whose union is the flat range `[start, end)` of a tensor of `shape`, in
/// flat order; each is contiguous in flat order. Empty for an empty range.
pub(crate) fn flat_to_boxes(shape: &[usize], start: usize, end: usize) -> Vec<Block> {
    let mut out = Vec::new();
    let mut prefix = Vec::with_capacity(shape.len());
    decompose(shape, start, end, &mut prefix, &mut out);
    out
}

fn decompose(shape: &[usize], start: usize, end: usize, prefix: &mut Block, out: &mut Vec<Block>) {
    if start >= end {
        return;
    }
    let Some((_, rest)) = shape.split_first() else {
        out.push(prefix.clone()); // a scalar: [0, 1)
        return;
    };
    let inner: usize = rest.iter().product();
    let (r0, o0) = (start / inner, start % inner);
    let (r1, o1) = (end / inner, end % inner);
    if r0 == r1 {
        prefix.push((r0, 1));
        decompose(rest, o0, o1, prefix, out);
        prefix.pop();
        return;
    }
    let mut first_full = r0;
    if o0 > 0 {
        prefix.push((r0, 1));
        decompose(rest, o0, inner, prefix, out);
        prefix.pop();
        first_full += 1;
    }
    if r1 > first_full {
        let mut b = prefix.clone();
        b.push((first_full, r1 - first_full));
        b.extend(rest.iter().map(|&d| (0, d)));
        out.push(b);
    }
    if o1 > 0 {
        prefix.push((r1, 1));
        decompose(rest, 0, o1, prefix, out);
        prefix.pop();
    }
}

/// The intersection of two boxes of the same rank, `None` if empty.
pub(crate) fn intersect(a: &[(usize, usize)], b: &[(usize, usize)]) -> Option<Block> {
    a.iter()
        .zip(b)
        .map(|(&(sa, la), &(sb, lb))| {
            let (lo, hi) = (sa.max(sb), (sa + la).min(sb + lb));
            (lo < hi).then(|| (lo, hi - lo))
        })
        .collect()
}

/// Offset of global coordinates `coords` inside box `outer`, row-major within the box.
fn offset_in(outer: &[(usize, usize)], coords: impl Iterator<Item = usize>) -> usize {
    strides(outer.iter().map(|&(_, l)| l))
        .iter()
        .zip(outer)
        .zip(coords)
        .map(|((st, &(s, _)), c)| st * (c - s))
        .sum()
}

/// Row-major offsets (inside `src` and inside `dst`) of the first element of `inner`,
/// and one past the offset of its last element inside `src`: the part of `src`'s
/// bytes that a copy of `inner` touches.
pub(crate) fn src_extent(inner: &[(usize, usize)], src: &[(usize, usize)]) -> (usize, usize) {
    let first = offset_in(src, inner.iter().map(|&(s, _)| s));
    let last = offset_in(src, inner.iter().map(|&(s, l)| s + l - 1));
    (first, last + 1)
}

/// Calls `f(src_offset, dst_offset, len)` for each run of `inner` (a non-empty box inside
/// both `src` and `dst`) that is contiguous in both, in row-major order of `inner`, so
/// source offsets increase. Offsets are row-major within `src` and `dst`. Trailing
/// dimensions that `inner` spans fully in both boxes merge into longer runs.
pub(crate) fn for_each_run<E>(
    inner: &[(usize, usize)],
    src: &[(usize, usize)],
    dst: &[(usize, usize)],
    mut f: impl FnMut(usize, usize, usize) -> Result<(), E>,
) -> Result<(), E> {
    let n = inner.len();
    if n == 0 {
        return f(0, 0, 1);
    }
    // Runs span dims j..n: every dim after j is whole in src, dst and inner alike.
    let mut j = n - 1;
    while j > 0 && inner[j].1 == src[j].1 && inner[j].1 == dst[j].1 {
        j -= 1;
    }
    let run: usize = inner[j..].iter().map(|&(_, l)| l).product();
    let src_strides = strides(src.iter().map(|&(_, l)| l));
    let dst_strides = strides(dst.iter().map(|&(_, l)| l));
    let mut src_off = offset_in(src, inner.iter().map(|&(s, _)| s));
    let mut dst_off = offset_in(dst, inner.iter().map(|&(s, _)| s));
    // Odometer over dims 0..j of `inner`, moving both offsets incrementally.
    let mut idx = vec![0usize; j];
    loop {
        f(src_off, dst_off, run)?;
        let mut k = j;
        loop {
            if k == 0 {
                return Ok(());
            }
            k -= 1;
            idx[k] += 1;
            src_off += src_strides[k];
            dst_off += dst_strides[k];
            if idx[k] < inner[k].1 {
                break;
            }
            src_off -= src_strides[k] * idx[k];
            dst_off -= dst_strides[k] * idx[k];
            idx[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flat index of a box, in row-major order within the box.
    fn elements(shape: &[usize], block: &[(usize, usize)]) -> Vec<usize> {
        let total: usize = shape.iter().product();
        (0..total)
            .filter(|&x| {
                let st = strides(shape.iter().copied());
                block
                    .iter()
                    .zip(&st)
                    .zip(shape)
                    .all(|((&(s, l), &stride), &d)| {
                        let c = x / stride % d;
                        c >= s && c < s + l
                    })
            })
            .collect()
    }

    #[test]
    fn flat_ranges_decompose_into_contiguous_boxes_in_order() {
        for shape in [vec![3usize, 4, 5], vec![7], vec![2, 1, 3], vec![4, 6]] {
            let total: usize = shape.iter().product();
            for start in 0..=total {
                for end in start..=total {
                    let boxes = flat_to_boxes(&shape, start, end);
                    let all: Vec<usize> = boxes.iter().flat_map(|b| elements(&shape, b)).collect();
                    assert_eq!(
                        all,
                        (start..end).collect::<Vec<_>>(),
                        "{shape:?} [{start}, {end})"
                    );
                    assert!(boxes.len() < 2 * shape.len().max(1));
                    for b in &boxes {
                        let (s, e) = span(&shape, b);
                        assert_eq!(e - s, volume(b), "box {b:?} is contiguous");
                    }
                }
            }
        }
        assert_eq!(flat_to_boxes(&[], 0, 1), vec![Vec::<(usize, usize)>::new()]);
    }

    #[test]
    fn runs_copy_between_any_two_boxes() {
        let shape = [4usize, 5, 6];
        let src = vec![(1, 3), (0, 5), (2, 3)];
        let dst = vec![(0, 3), (1, 4), (0, 6)];
        let inner = intersect(&src, &dst).unwrap();
        assert_eq!(inner, vec![(1, 2), (1, 4), (2, 3)]);
        let (src_el, dst_el) = (elements(&shape, &src), elements(&shape, &dst));
        let mut copied = Vec::new();
        for_each_run::<()>(&inner, &src, &dst, |s, d, len| {
            for i in 0..len {
                assert_eq!(src_el[s + i], dst_el[d + i]);
                copied.push(src_el[s + i]);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(copied, elements(&shape, &inner));
        let (first, end) = src_extent(&inner, &src);
        assert_eq!(src_el[first], copied[0]);
        assert_eq!(src_el[end - 1], *copied.last().unwrap());
    }

    #[test]
    fn spans_keys_and_misfits() {
        assert_eq!(
            span(&[768, 1024], &[(0, 768), (256, 256)]),
            (256, 767 * 1024 + 512)
        );
        assert_eq!(span(&[4, 4], &[(1, 0), (0, 4)]), (0, 0));
        assert_eq!(show(&[(0, 768), (256, 256)]), "[0:768, 256:512]");
        assert!(misfit(&[4, 4], &[(0, 4), (2, 3)])
            .unwrap()
            .contains("dim 1"));
        assert!(misfit(&[4, 4], &[(0, 4)]).unwrap().contains("1 dims"));
        assert!(misfit(&[4, 4], &[(usize::MAX, 2), (0, 1)]).is_some());
        assert!(misfit(&[4, 4], &[(0, 4), (1, 3)]).is_none());
    }
}
