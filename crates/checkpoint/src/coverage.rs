//! The commit- and open-time check that a tensor's pieces cover every element exactly
//! once (no gap, no overlap), whatever mix of flat and N-d pieces wrote it.
//!
//! Flat-only tensors (what ZeRO layouts write) keep the classic check: sort the ranges
//! by start and sweep. As soon as one piece of a tensor is an N-d slice, every piece
//! becomes boxes (a flat range is at most `2 * rank - 1` of them, see
//! [`crate::geometry::flat_to_boxes`]) and the boxes are swept one dimension at a
//! time: the boundaries of dimension 0 cut the tensor into slabs, the boxes spanning a
//! slab must tile its remaining dimensions exactly, recursively, down to the last
//! dimension, which is a sorted interval sweep again. The work depends on the number
//! of pieces and their boundaries, never on the number of elements: a (50257, 768)
//! matrix in 8 column blocks is one slab of 8 intervals.

use crate::error::CheckpointError;
use crate::geometry::{flat_to_boxes, misfit, show, volume, Block};
use crate::manifest::{numel, Piece};

/// Checks that `pieces` (each with the file that holds it) cover a tensor of `shape`
/// exactly once. Errors are [`CheckpointError::Coverage`] naming the tensor, the files
/// and the missing or doubly-saved region.
pub(crate) fn check_coverage(
    name: &str,
    shape: &[usize],
    pieces: &[(&Piece, &str)],
) -> Result<(), CheckpointError> {
    let coverage = |detail: String| CheckpointError::Coverage {
        name: name.to_string(),
        detail,
    };
    let total = numel(shape).ok_or_else(|| coverage(format!("shape {shape:?} overflows usize")))?;
    if pieces.iter().all(|(p, _)| p.slice.is_none()) {
        let mut ranges: Vec<(usize, usize, &str)> =
            pieces.iter().map(|(p, f)| (p.start, p.end, *f)).collect();
        return check_flat(total, &mut ranges).map_err(coverage);
    }

    // Every piece as boxes, bounds-checked; empty boxes hold nothing and are dropped.
    let mut boxes = Vec::new();
    for (i, &(p, file)) in pieces.iter().enumerate() {
        let blocks = match &p.slice {
            Some(slice) => {
                if let Some(why) = misfit(shape, slice) {
                    return Err(coverage(format!(
                        "slice {} in {file} does not fit: {why}",
                        show(slice)
                    )));
                }
                vec![slice.clone()]
            }
            None => {
                if p.end < p.start || p.end > total {
                    return Err(coverage(format!(
                        "piece [{}, {}) in {file} is outside [0, {total})",
                        p.start, p.end
                    )));
                }
                flat_to_boxes(shape, p.start, p.end)
            }
        };
        boxes.extend(blocks.into_iter().filter(|b| volume(b) > 0).map(|b| Bx {
            lo: b.iter().map(|&(s, _)| s).collect(),
            hi: b.iter().map(|&(s, l)| s + l).collect(),
            piece: i,
        }));
    }
    if total == 0 {
        return Ok(());
    }
    let fault = if shape.is_empty() {
        // A scalar: exactly one piece must hold its one element.
        match boxes.len() {
            1 => None,
            0 => Some(Fault::Gap(Vec::new())),
            _ => Some(Fault::Overlap(boxes[0].piece, boxes[1].piece, Vec::new())),
        }
    } else {
        let mut active: Vec<usize> = (0..boxes.len()).collect();
        tile(shape, &boxes, &mut active, 0, &mut Vec::new()).err()
    };
    let describe = |i: usize| {
        let (p, file) = pieces[i];
        match &p.slice {
            Some(s) => format!("slice {} in {file}", show(s)),
            None => format!("flat range [{}, {}) in {file}", p.start, p.end),
        }
    };
    match fault {
        None => Ok(()),
        Some(Fault::Gap(region)) => Err(coverage(format!(
            "elements {} are in no file",
            show(&region)
        ))),
        Some(Fault::Overlap(a, b, region)) => Err(coverage(format!(
            "{} and {} both hold elements {}",
            describe(a),
            describe(b),
            show(&region)
        ))),
    }
}

/// Checks that flat ranges `(start, end, file)` tile `[0, total)` exactly; sorts them.
fn check_flat(total: usize, pieces: &mut [(usize, usize, &str)]) -> Result<(), String> {
    pieces.sort_unstable();
    let mut covered = 0usize;
    for &(start, end, file) in pieces.iter() {
        if end < start || end > total {
            return Err(format!(
                "piece [{start}, {end}) in {file} is outside [0, {total})"
            ));
        }
        if start > covered {
            return Err(format!(
                "elements [{covered}, {start}) are in no file (gap before the piece in {file})"
            ));
        }
        if start < covered {
            return Err(format!(
                "piece [{start}, {end}) in {file} overlaps elements [{start}, {}) already saved",
                covered.min(end)
            ));
        }
        covered = end;
    }
    if covered != total {
        return Err(format!("elements [{covered}, {total}) are in no file"));
    }
    Ok(())
}

/// A non-empty box of a piece: `[lo, hi)` per dim.
struct Bx {
    lo: Vec<usize>,
    hi: Vec<usize>,
    piece: usize,
}

/// What the sweep found: a region in no box, or two pieces sharing a region.
enum Fault {
    Gap(Block),
    Overlap(usize, usize, Block),
}

/// Checks that the boxes `active` (all spanning `region` in dims `..k`) tile dims `k..`
/// of `shape` exactly. `region` holds the current slab, `(start, len)` per outer dim.
fn tile(
    shape: &[usize],
    boxes: &[Bx],
    active: &mut [usize],
    k: usize,
    region: &mut Block,
) -> Result<(), Fault> {
    let d = shape[k];
    active.sort_unstable_by_key(|&i| (boxes[i].lo[k], boxes[i].hi[k]));
    let with = |region: &Block, lo: usize, hi: usize| {
        let mut r = region.clone();
        r.push((lo, hi - lo));
        r.extend(shape[k + 1..].iter().map(|&d| (0, d)));
        r
    };
    if k + 1 == shape.len() {
        let (mut covered, mut last) = (0usize, None);
        for &i in active.iter() {
            let (lo, hi) = (boxes[i].lo[k], boxes[i].hi[k]);
            if lo > covered {
                return Err(Fault::Gap(with(region, covered, lo)));
            }
            if let (true, Some(prev)) = (lo < covered, last) {
                let prev: &Bx = &boxes[prev];
                return Err(Fault::Overlap(
                    prev.piece,
                    boxes[i].piece,
                    with(region, lo, hi.min(covered)),
                ));
            }
            (covered, last) = (hi, Some(i));
        }
        if covered < d {
            return Err(Fault::Gap(with(region, covered, d)));
        }
        return Ok(());
    }
    let mut bounds: Vec<usize> = active
        .iter()
        .flat_map(|&i| [boxes[i].lo[k], boxes[i].hi[k]])
        .chain([0, d])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    // Sweep the slabs between consecutive boundaries, keeping the boxes that span the
    // current one: those started at or before it and not yet ended.
    let (mut next, mut current) = (0, Vec::<usize>::new());
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        current.retain(|&i| boxes[i].hi[k] > a);
        while next < active.len() && boxes[active[next]].lo[k] <= a {
            current.push(active[next]);
            next += 1;
        }
        if current.is_empty() {
            return Err(Fault::Gap(with(region, a, b)));
        }
        region.push((a, b - a));
        let mut sub = current.clone();
        tile(shape, boxes, &mut sub, k + 1, region)?;
        region.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{piece_key, slice_key};

    fn flat(shape: &[usize], start: usize, end: usize) -> Piece {
        Piece {
            name: "w".into(),
            global_shape: shape.to_vec(),
            start,
            end,
            key: piece_key("w", shape, start, end),
            slice: None,
        }
    }

    fn nd(shape: &[usize], slice: &[(usize, usize)]) -> Piece {
        let (start, end) = crate::geometry::span(shape, slice);
        Piece {
            name: "w".into(),
            global_shape: shape.to_vec(),
            start,
            end,
            key: slice_key("w", shape, slice),
            slice: Some(slice.to_vec()),
        }
    }

    fn check(shape: &[usize], pieces: &[Piece]) -> Result<(), String> {
        let files: Vec<String> = (0..pieces.len()).map(|i| format!("f{i}")).collect();
        let with: Vec<(&Piece, &str)> = pieces
            .iter()
            .zip(&files)
            .map(|(p, f)| (p, f.as_str()))
            .collect();
        check_coverage("w", shape, &with).map_err(|e| {
            assert!(matches!(&e, CheckpointError::Coverage { name, .. } if name == "w"));
            e.to_string()
        })
    }

    fn columns(shape: &[usize], n: usize) -> Vec<Piece> {
        let w = shape[1] / n;
        (0..n)
            .map(|i| nd(shape, &[(0, shape[0]), (i * w, w)]))
            .collect()
    }

    #[test]
    fn column_and_row_blocks_tile() {
        check(&[12, 40], &columns(&[12, 40], 4)).unwrap();
        let s = [6, 4, 5];
        let rows = [(0, 2), (2, 3), (5, 1)];
        check(&s, &rows.map(|r| nd(&s, &[r, (0, 4), (0, 5)]))).unwrap();
        // A 3-D grid of 2 x 2 x 3 blocks, listed out of order.
        let mut grid = Vec::new();
        for c in [(0, 2), (2, 3), (0, 0)]
            .into_iter()
            .filter(|c| c.1 > 0)
            .rev()
        {
            for b in [(0, 1), (1, 3)] {
                for a in [(0, 4), (4, 2)] {
                    grid.push(nd(&[6, 4, 5], &[a, b, c]));
                }
            }
        }
        check(&[6, 4, 5], &grid).unwrap();
    }

    #[test]
    fn flat_and_nd_pieces_of_one_tensor_mix() {
        // Rows 0..4 and part of row 4 flat; the rest as two column blocks and a row.
        let s = [12, 10];
        let pieces = [
            flat(&s, 0, 43),
            nd(&s, &[(4, 1), (3, 7)]),
            nd(&s, &[(5, 6), (0, 5)]),
            nd(&s, &[(5, 6), (5, 5)]),
            flat(&s, 110, 120),
        ];
        check(&s, &pieces).unwrap();
        let mut overlap = pieces.to_vec();
        overlap[0] = flat(&s, 0, 45);
        let err = check(&s, &overlap).unwrap_err();
        assert!(
            err.contains("flat range [0, 45) in f0 and slice [4:5, 3:10] in f1 both hold elements [4:5, 3:5]"),
            "{err}"
        );
    }

    #[test]
    fn gaps_overlaps_and_misfits_name_the_region() {
        let s = [12, 40];
        let mut three = columns(&s, 4);
        three.remove(2);
        let err = check(&s, &three).unwrap_err();
        assert!(
            err.contains("elements [0:12, 20:30] are in no file"),
            "{err}"
        );

        let overlap = [nd(&s, &[(0, 12), (0, 25)]), nd(&s, &[(0, 12), (20, 20)])];
        let err = check(&s, &overlap).unwrap_err();
        assert!(
            err.contains("slice [0:12, 0:25] in f0 and slice [0:12, 20:40] in f1 both hold elements [0:12, 20:25]"),
            "{err}"
        );

        let rows = [nd(&s, &[(0, 5), (0, 40)]), nd(&s, &[(6, 6), (0, 40)])];
        let err = check(&s, &rows).unwrap_err();
        assert!(err.contains("elements [5:6, 0:40] are in no file"), "{err}");

        let outside = [nd(&s, &[(0, 12), (0, 20)]), nd(&s, &[(0, 12), (20, 21)])];
        let err = check(&s, &outside).unwrap_err();
        assert!(
            err.contains("slice [0:12, 20:41] in f1 does not fit: dim 1"),
            "{err}"
        );
        let rank = [nd(&s, &[(0, 12)])];
        assert!(check(&s, &rank).unwrap_err().contains("1 dims"));
        let mixed_outside = [nd(&s, &[(0, 12), (0, 20)]), flat(&s, 0, 481)];
        assert!(check(&s, &mixed_outside)
            .unwrap_err()
            .contains("outside [0, 480)"));
    }

    #[test]
    fn scalars_and_empty_tensors() {
        check(&[], &[nd(&[], &[])]).unwrap();
        assert!(check(&[], &[nd(&[], &[]), flat(&[], 0, 1)])
            .unwrap_err()
            .contains("both hold"));
        check(
            &[0, 4],
            &[nd(&[0, 4], &[(0, 0), (0, 2)]), flat(&[0, 4], 0, 0)],
        )
        .unwrap();
    }

    /// Coverage reasons on boxes, never on elements: a GPT-2 embedding in 8 column
    /// blocks, and in 8 x 4 irregular blocks, checks in well under a millisecond each.
    #[test]
    fn large_tensors_check_instantly() {
        let s = [50257, 768];
        let t = std::time::Instant::now();
        check(&s, &columns(&s, 8)).unwrap();
        let mut grid = Vec::new();
        let rows = [0, 7, 12000, 25128, 50257];
        for r in rows.windows(2) {
            for c in 0..8 {
                grid.push(nd(&s, &[(r[0], r[1] - r[0]), (c * 96, 96)]));
            }
        }
        check(&s, &grid).unwrap();
        grid.pop();
        let err = check(&s, &grid).unwrap_err();
        assert!(
            err.contains("elements [25128:50257, 672:768] are in no file"),
            "{err}"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
    }

    /// Against brute force: random mixes of flat ranges and boxes over small shapes are
    /// accepted exactly when every element is held once.
    #[test]
    fn agrees_with_counting_every_element() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut below = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..4000 {
            let rank = 1 + below(3);
            let shape: Vec<usize> = (0..rank).map(|_| 1 + below(4)).collect();
            let total: usize = shape.iter().product();
            // Start from a true tiling (cut flat, then turn some cuts into boxes), then
            // maybe perturb it.
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < total {
                let end = (at + 1 + below(total)).min(total);
                let boxes = crate::geometry::flat_to_boxes(&shape, at, end);
                if below(2) == 0 {
                    pieces.push(flat(&shape, at, end));
                } else {
                    pieces.extend(boxes.iter().map(|b| nd(&shape, b)));
                }
                at = end;
            }
            match below(4) {
                0 => {
                    pieces.remove(below(pieces.len()));
                }
                1 => {
                    let b: Vec<(usize, usize)> = shape
                        .iter()
                        .map(|&d| {
                            let s = below(d);
                            (s, 1 + below(d - s))
                        })
                        .collect();
                    pieces.push(nd(&shape, &b));
                }
                _ => {}
            }
            let mut count = vec![0; total];
            for p in &pieces {
                let boxes = match &p.slice {
                    Some(b) => vec![b.clone()],
                    None => crate::geometry::flat_to_boxes(&shape, p.start, p.end),
                };
                for b in boxes {
                    let (s, e) = crate::geometry::span(&shape, &b);
                    for (x, c) in count.iter_mut().enumerate().take(e).skip(s) {
                        let mut rest = x;
                        let inside = shape.iter().zip(&b).rev().all(|(&d, &(bs, bl))| {
                            let coord = rest % d;
                            rest /= d;
                            coord >= bs && coord < bs + bl
                        });
                        *c += usize::from(inside);
                    }
                }
            }
            let exact = count.iter().all(|&c| c == 1);
            let result = check(&shape, &pieces);
            assert_eq!(result.is_ok(), exact, "{shape:?} {pieces:?}: {result:?}");
            if exact {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(accepted > 1000 && refused > 1000, "{accepted} / {refused}");
    }
}
