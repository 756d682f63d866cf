//! Warm starts: the interior-point iterate a solve keeps with its solution ([`WarmPoint`]), shifting it when an MPC
//! horizon rolls forward, and turning it into a well-centred starting point for the next solve.

use super::site::SiteModel;

/// An interior-point iterate (primal values, bound multipliers and row multipliers) kept with a solution so that the
/// next solve of a similar problem can start from it ([`crate::Solver::solve_warm`]).
///
/// It is not the final iterate: that one sits within round-off of the active bounds and is a poor start for a
/// changed problem. It is the first iterate whose relative complementarity fell below
/// [`super::Settings::warm_capture_gap`] — close to the optimum, still clearly inside the feasible box. The layout
/// is the method's own (see the module doc of [`crate::ipm`]); the point is opaque to users, who only keep it with
/// the solution, shift it with [`WarmPoint::shifted`] (which [`crate::mpc::MpcController`] does) and hand the
/// solution back.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmPoint {
    pub(crate) t: usize,
    /// Average complementarity `(x − l)·zl`, `(u − x)·zu` of the point.
    pub(crate) mu: f64,
    pub(crate) sites: Vec<SitePoint>,
    pub(crate) fleet: Option<FleetPoint>,
}

/// One site's share of a [`WarmPoint`]: arrays in the site's variable order (kind-major) and row order. Single
/// precision: the start re-centres the point anyway, and a large fleet's point is half the memory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SitePoint {
    pub x: Vec<f32>,
    pub zl: Vec<f32>,
    pub zu: Vec<f32>,
    pub v: Vec<f32>,
}

/// The fleet's share of a [`WarmPoint`]: net import `z`, its bound multipliers and the fleet rows' multipliers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FleetPoint {
    pub x: Vec<f64>,
    pub zl: Vec<f64>,
    pub zu: Vec<f64>,
    pub y: Vec<f64>,
}

/// Drops the first `k` entries of each length-`t` block of `v` and repeats the block's last entry `k` times at its
/// end; entries after the last whole block (the peak variable) are kept.
fn shift_blocks<F: Copy>(v: &[F], t: usize, k: usize) -> Vec<F> {
    let mut out = v.to_vec();
    if t == 0 || k == 0 {
        return out;
    }
    let k = k.min(t - 1);
    for block in out.chunks_exact_mut(t) {
        block.copy_within(k.., 0);
        let last = block[t - 1 - k];
        block[t - k..].fill(last);
    }
    out
}

impl WarmPoint {
    /// Horizon length (slots) of the problem this point was computed for.
    pub fn slots(&self) -> usize {
        self.t
    }

    /// Number of sites of the problem this point was computed for.
    pub fn site_count(&self) -> usize {
        self.sites.len()
    }

    /// The point for a horizon rolled forward by `k` slots: every per-slot quantity moves `k` slots earlier and
    /// the new last slots repeat the old last slot (the start's re-centring makes them consistent with the new
    /// data). `k ≥ T` keeps only the last slot's values everywhere.
    pub fn shifted(&self, k: usize) -> WarmPoint {
        let t = self.t;
        WarmPoint {
            t,
            mu: self.mu,
            sites: self
                .sites
                .iter()
                .map(|s| SitePoint {
                    x: shift_blocks(&s.x, t, k),
                    zl: shift_blocks(&s.zl, t, k),
                    zu: shift_blocks(&s.zu, t, k),
                    v: shift_blocks(&s.v, t, k),
                })
                .collect(),
            fleet: self.fleet.as_ref().map(|f| FleetPoint {
                x: shift_blocks(&f.x, t, k),
                zl: shift_blocks(&f.zl, t, k),
                zu: shift_blocks(&f.zu, t, k),
                y: shift_blocks(&f.y, t, k),
            }),
        }
    }

    /// Whether the point has the shape of `models` (same horizon, sites, variables and rows) and of the fleet part.
    pub(crate) fn fits(&self, t: usize, models: &[SiteModel], coupled: bool) -> bool {
        self.t == t
            && self.sites.len() == models.len()
            && self.fleet.is_some() == coupled
            && self
                .sites
                .iter()
                .zip(models)
                .all(|(s, m)| s.x.len() == m.nv && s.v.len() == m.nr)
    }
}

/// Moves a warm value into the box `[l, u]` with a margin of `frac` of its width from either bound.
#[inline]
pub(crate) fn inside(x: f64, l: f64, u: f64, frac: f64) -> f64 {
    if l.is_finite() && u.is_finite() {
        let m = frac * (u - l);
        x.clamp(l + m, u - m)
    } else if l.is_finite() {
        x.max(l + frac * (1.0 + l.abs()))
    } else if u.is_finite() {
        x.min(u - frac * (1.0 + u.abs()))
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_moves_each_block_and_keeps_the_tail() {
        let v: [f64; 7] = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 99.0];
        assert_eq!(
            shift_blocks(&v, 3, 1),
            [2.0, 3.0, 3.0, 20.0, 30.0, 30.0, 99.0]
        );
        assert_eq!(
            shift_blocks(&v, 3, 5),
            [3.0, 3.0, 3.0, 30.0, 30.0, 30.0, 99.0]
        );
        assert_eq!(shift_blocks(&v, 3, 0), v);
    }

    #[test]
    fn inside_keeps_a_margin() {
        assert_eq!(inside(-1.0, 0.0, 10.0, 0.01), 0.1);
        assert_eq!(inside(11.0, 0.0, 10.0, 0.01), 9.9);
        assert_eq!(inside(5.0, 0.0, 10.0, 0.01), 5.0);
    }
}
