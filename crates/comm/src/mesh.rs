//! The device mesh: named axes `dp`, `tp`, `pp` over the world's ranks, and one
//! communicator per axis group.
//!
//! Rank order (as in Megatron-LM): `tp` varies fastest, then `dp`, then `pp`:
//!
//! ```text
//! rank = tp_index + tp * (dp_index + dp * pp_index)
//! ```
//!
//! so tensor-parallel partners (which exchange activations every layer) are
//! neighbours, i.e. on the same node, and pipeline stages are farthest apart. With
//! dp=2, tp=2, pp=2 the `tp` groups are {0,1} {2,3} {4,5} {6,7}, the `dp` groups {0,2}
//! {1,3} {4,6} {5,7} and the `pp` groups {0,4} {1,5} {2,6} {3,7}.

use std::sync::Arc;

use crate::error::{CommError, Result};
use crate::Communicator;

/// A mesh axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    Dp,
    Tp,
    Pp,
}

impl Axis {
    pub const ALL: [Axis; 3] = [Axis::Tp, Axis::Dp, Axis::Pp];

    pub fn name(self) -> &'static str {
        match self {
            Axis::Dp => "dp",
            Axis::Tp => "tp",
            Axis::Pp => "pp",
        }
    }
}

/// A rank's position along each axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Coords {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
}

impl Coords {
    pub fn get(&self, axis: Axis) -> usize {
        match axis {
            Axis::Dp => self.dp,
            Axis::Tp => self.tp,
            Axis::Pp => self.pp,
        }
    }
}

/// Axis sizes; their product is the world size. Pure arithmetic, no communication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshShape {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
}

impl MeshShape {
    /// Check that `dp * tp * pp == world_size` and that no size is zero.
    pub fn new(dp: usize, tp: usize, pp: usize, world_size: usize) -> Result<Self> {
        let product = dp.checked_mul(tp).and_then(|x| x.checked_mul(pp)).unwrap_or(usize::MAX);
        if dp == 0 || tp == 0 || pp == 0 || product != world_size {
            return Err(CommError::DegreeMismatch { dp, tp, pp, product, world_size });
        }
        Ok(MeshShape { dp, tp, pp })
    }

    pub fn size(&self) -> usize {
        self.dp * self.tp * self.pp
    }

    pub fn axis_size(&self, axis: Axis) -> usize {
        match axis {
            Axis::Dp => self.dp,
            Axis::Tp => self.tp,
            Axis::Pp => self.pp,
        }
    }

    /// Coordinates of world rank `rank` (tp fastest, then dp, then pp).
    pub fn coords(&self, rank: usize) -> Coords {
        Coords { tp: rank % self.tp, dp: (rank / self.tp) % self.dp, pp: rank / (self.tp * self.dp) }
    }

    /// World rank at `c`.
    pub fn rank(&self, c: Coords) -> usize {
        c.tp + self.tp * (c.dp + self.dp * c.pp)
    }

    /// The group of `rank` along `axis`: its index among the axis's groups (used as
    /// the split color) and its members in group-rank order (the coordinate along
    /// `axis`). Every rank of a group computes the same pair.
    pub fn group(&self, rank: usize, axis: Axis) -> (usize, Vec<usize>) {
        let c = self.coords(rank);
        let members = (0..self.axis_size(axis))
            .map(|i| {
                let mut m = c;
                match axis {
                    Axis::Dp => m.dp = i,
                    Axis::Tp => m.tp = i,
                    Axis::Pp => m.pp = i,
                }
                self.rank(m)
            })
            .collect();
        // Index the group by the coordinates it does not span, in rank order.
        let color = match axis {
            Axis::Tp => c.dp + self.dp * c.pp,
            Axis::Dp => c.tp + self.tp * c.pp,
            Axis::Pp => c.tp + self.tp * c.dp,
        };
        (color, members)
    }

    /// All groups along `axis`, indexed by color.
    pub fn groups(&self, axis: Axis) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.size() / self.axis_size(axis)];
        for r in 0..self.size() {
            let (color, members) = self.group(r, axis);
            if out[color].is_empty() {
                out[color] = members;
            }
        }
        out
    }

    /// Name of `rank`'s group along `axis`, e.g. `dp[tp=1,pp=0]`.
    pub fn group_name(&self, rank: usize, axis: Axis) -> String {
        let c = self.coords(rank);
        let others: Vec<String> =
            Axis::ALL.iter().filter(|&&a| a != axis).map(|&a| format!("{}={}", a.name(), c.get(a))).collect();
        format!("{}[{}]", axis.name(), others.join(","))
    }
}

/// A world communicator plus one communicator per axis for this rank.
pub struct Mesh {
    shape: MeshShape,
    coords: Coords,
    world: Arc<dyn Communicator>,
    groups: [Arc<dyn Communicator>; 3],
}

impl Mesh {
    /// Collective over `world`: splits it into this rank's `tp`, `dp` and `pp` groups.
    pub fn new(world: Arc<dyn Communicator>, dp: usize, tp: usize, pp: usize) -> Result<Mesh> {
        let shape = MeshShape::new(dp, tp, pp, world.size())?;
        let rank = world.rank();
        let split = |axis: Axis| -> Result<Arc<dyn Communicator>> {
            let (color, _) = shape.group(rank, axis);
            let key = shape.coords(rank).get(axis);
            Ok(Arc::from(world.split(color, key, &shape.group_name(rank, axis))?))
        };
        let groups = [split(Axis::Tp)?, split(Axis::Dp)?, split(Axis::Pp)?];
        Ok(Mesh { shape, coords: shape.coords(rank), world, groups })
    }

    pub fn shape(&self) -> MeshShape {
        self.shape
    }
    pub fn coords(&self) -> Coords {
        self.coords
    }
    pub fn world(&self) -> &Arc<dyn Communicator> {
        &self.world
    }
    /// This rank's communicator along `axis`; its rank is `coords().get(axis)`.
    pub fn axis(&self, axis: Axis) -> &Arc<dyn Communicator> {
        match axis {
            Axis::Tp => &self.groups[0],
            Axis::Dp => &self.groups[1],
            Axis::Pp => &self.groups[2],
        }
    }
}
