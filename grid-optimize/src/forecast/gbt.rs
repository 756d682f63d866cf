//! Histogram gradient-boosted regression trees with squared or absolute (pinball at 0.5) loss.
//!
//! Features are binned into at most 64 quantile bins; each tree grows depth-wise on a row subsample with the
//! histogram-subtraction trick. With absolute loss the trees are fitted to the sign of the residuals and the
//! leaves take the median residual (the pinball-loss minimiser), as in scikit-learn's `HistGradientBoosting`.

use crate::forecast::ridge::Dataset;

/// The loss the trees minimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum GbtLoss {
    /// Squared error (predicts the conditional mean).
    Squared,
    /// Absolute error, i.e. pinball loss at 0.5 (predicts the conditional median).
    Absolute,
}

/// Training parameters.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GbtParams {
    /// Loss.
    pub loss: GbtLoss,
    /// Maximum number of trees.
    pub n_trees: usize,
    /// Shrinkage.
    pub learning_rate: f64,
    /// Maximum depth of a tree.
    pub max_depth: usize,
    /// Minimum rows in a leaf.
    pub min_leaf: usize,
    /// Share of rows each tree is grown on.
    pub subsample: f64,
    /// Seed of the row subsampling.
    pub seed: u64,
    /// If set, the trees model the target minus this feature column (e.g. a recent mean), so forecasts
    /// follow level shifts beyond the range seen in training, which trees alone cannot extrapolate.
    pub offset_column: Option<usize>,
}

impl Default for GbtParams {
    fn default() -> Self {
        Self {
            loss: GbtLoss::Absolute,
            n_trees: 300,
            learning_rate: 0.08,
            max_depth: 5,
            min_leaf: 30,
            subsample: 0.5,
            seed: 0x9e37_79b9_7f4a_7c15,
            offset_column: None,
        }
    }
}

/// A node: a split when `feature != LEAF`, else a leaf holding `value`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Node {
    /// Index into the model's columns, or [`LEAF`].
    pub feature: u32,
    /// Rows with `x <= threshold` go left.
    pub threshold: f64,
    /// Left child.
    pub left: u32,
    /// Right child.
    pub right: u32,
    /// Leaf value (already shrunk).
    pub value: f64,
}

/// Marks a leaf.
pub const LEAF: u32 = u32::MAX;

/// A fitted boosted ensemble.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Gbt {
    /// Feature columns used.
    pub columns: Vec<usize>,
    /// Initial prediction.
    pub base: f64,
    /// Trees as flat node arrays (root first).
    pub trees: Vec<Vec<Node>>,
    /// Feature column added to the trees' output (see [`GbtParams::offset_column`]).
    pub offset_column: Option<usize>,
    /// The trees re-laid out for [`Gbt::predict_batch`], built on first use (not serialised).
    #[cfg_attr(feature = "serde", serde(skip))]
    sliced: SlicedCache,
}

/// Deepest tree [`Sliced`] lays out: a row's leaf position must fit in a byte. Deeper models use the
/// node-by-node path.
const MAX_SLICED_DEPTH: usize = 8;

/// Values read from a tree's first leaf on: a leaf position is a byte, so indexing this many values with it
/// needs no bounds check.
const LEAF_WINDOW: usize = 1 << MAX_SLICED_DEPTH;

/// Rows [`Sliced`] evaluates together: one bit per row of a [`Mask`].
const BLOCK_ROWS: usize = 128;

/// One bit per row of a block (two words, which the compiler keeps in one SSE register).
type Mask = [u64; 2];

/// Number of [`Mask`]s of a block: one for every `u16`, so that reading the mask of a stored condition (twice
/// its id, see [`Sliced::conds`]) needs no bounds check. (The array is allocated zeroed, so only the pages
/// of the ids in use are ever touched.)
const N_CONDS: usize = 1 << 16;

/// Condition ids a model may use: twice the largest must fit in a `u16`.
const MAX_CONDS: usize = 1 << 15;

/// A block's condition masks, indexed by condition id.
type Masks = [Mask; N_CONDS];

/// Condition id of a split that sends every row left (padding below a leaf above the full depth).
const GO_LEFT: u16 = 0;
/// Condition id of a split that sends every row right (a NaN threshold: `x <= NaN` is false).
const GO_RIGHT: u16 = 1;
/// Condition id of the first threshold of [`Sliced::thr`].
const FIRST_THRESHOLD: usize = 2;

/// `SPREAD[k][b]` has byte `i` equal to bit `i` of `b`, shifted left by `k`: eight rows' bits of a [`Mask`]
/// as bit `k` of eight bytes.
static SPREAD: [[u64; 256]; MAX_SLICED_DEPTH] = {
    let mut t = [[0u64; 256]; MAX_SLICED_DEPTH];
    let mut k = 0;
    while k < MAX_SLICED_DEPTH {
        let mut b = 0;
        while b < 256 {
            let mut i = 0;
            while i < 8 {
                t[k][b] |= ((b as u64 >> i) & 1) << (8 * i + k);
                i += 1;
            }
            b += 1;
        }
        k += 1;
    }
    t
};

/// The trees laid out for bit-sliced evaluation of a block of rows at once.
///
/// A split is a condition "column `j` > threshold, or NaN" (a row goes right, as in [`Gbt::predict`]), and
/// the thresholds of a column are shared by all trees: per block, each row's value is placed once among its
/// column's sorted thresholds, which gives, for every condition, the [`Mask`] of rows it sends right. The
/// trees are complete of one depth `d` in heap order (a leaf above depth `d` is padded with [`GO_LEFT`]
/// splits into copies of its value, so the routed value is unchanged). Bit `k` of a row's leaf position is
/// the condition of the row's node at level `k`, selected for all rows at once by bitwise multiplexers on
/// the bits above it; so a tree costs `2^d - 1` mask loads and `2^d - d - 1` multiplexers for the block,
/// plus one leaf load and add per row, where the node-by-node walk takes `d` dependent steps per row.
#[derive(Debug)]
struct Sliced {
    depth: usize,
    /// Per model column, where its thresholds start in `thr` (`columns.len() + 1` entries).
    col_start: Vec<usize>,
    /// Per model column, its distinct split thresholds, ascending (`-0.0` and `0.0` are one).
    thr: Vec<f64>,
    /// Per model column, where its thresholds start in `padded` (`columns.len() + 1` entries).
    padded_start: Vec<usize>,
    /// Per model column, its thresholds followed by `+inf` up to a power of two greater than their count,
    /// for [`below`].
    padded: Vec<f64>,
    /// Per tree, its `2^d - 1` splits in heap order as twice their condition ids (the index of the first
    /// word of the condition's mask among all masks' words; a condition id is [`GO_LEFT`], [`GO_RIGHT`], or
    /// [`FIRST_THRESHOLD`] plus an index into `thr`).
    conds: Vec<u16>,
    /// Per tree, its `2^d` leaf values; then [`LEAF_WINDOW`] zeros, so that the [`LEAF_WINDOW`] values from
    /// any tree's first leaf on are in the array.
    leaves: Vec<f64>,
    /// Largest feature column read, to check a row is long enough once per batch.
    max_col: usize,
    /// Number of trees laid out (a stale cache after `trees` was edited is not used).
    n_trees: usize,
}

impl Sliced {
    /// Lays out `m`'s trees; `None` if a tree is deeper than [`MAX_SLICED_DEPTH`], there are more than
    /// 65,534 distinct thresholds, or a tree is malformed.
    fn build(m: &Gbt) -> Option<Self> {
        fn depth(nodes: &[Node], i: usize, level: usize) -> Option<usize> {
            let n = nodes.get(i)?;
            if n.feature == LEAF {
                return Some(level);
            }
            if level >= MAX_SLICED_DEPTH {
                return None;
            }
            Some(depth(nodes, n.left as usize, level + 1)?.max(depth(
                nodes,
                n.right as usize,
                level + 1,
            )?))
        }
        let nc = m.columns.len();
        let mut d = 0;
        for t in &m.trees {
            d = d.max(depth(t, 0, 0)?);
        }
        let mut per_col: Vec<Vec<f64>> = vec![Vec::new(); nc];
        for n in m.trees.iter().flatten().filter(|n| n.feature != LEAF) {
            let t = per_col.get_mut(n.feature as usize)?;
            if !n.threshold.is_nan() {
                t.push(n.threshold);
            }
        }
        let mut col_start = Vec::with_capacity(nc + 1);
        let mut thr = Vec::new();
        let mut padded_start = Vec::with_capacity(nc + 1);
        let mut padded = Vec::new();
        for mut t in per_col {
            t.sort_by(f64::total_cmp);
            t.dedup_by(|a, b| a == b);
            col_start.push(thr.len());
            padded_start.push(padded.len());
            padded.extend(&t);
            padded.resize(
                padded.len() + (t.len() + 1).next_power_of_two() - t.len(),
                f64::INFINITY,
            );
            thr.extend(t);
        }
        col_start.push(thr.len());
        padded_start.push(padded.len());
        if FIRST_THRESHOLD + thr.len() > MAX_CONDS {
            return None;
        }
        let nt = m.trees.len();
        let mut f = Sliced {
            depth: d,
            col_start,
            thr,
            padded_start,
            padded,
            conds: vec![2 * GO_LEFT; nt * ((1 << d) - 1)],
            leaves: vec![0.0; (nt << d) + LEAF_WINDOW],
            max_col: m
                .columns
                .iter()
                .copied()
                .chain(m.offset_column)
                .max()
                .unwrap_or(0),
            n_trees: nt,
        };
        for (k, t) in m.trees.iter().enumerate() {
            f.fill(t, k, 0, 0, 0)?;
        }
        Some(f)
    }

    /// Lays out node `src` of tree number `tree` at heap position `pos` of level `level`.
    fn fill(
        &mut self,
        nodes: &[Node],
        tree: usize,
        src: usize,
        pos: usize,
        level: usize,
    ) -> Option<()> {
        let n = nodes.get(src)?;
        let d = self.depth;
        if level == d {
            self.leaves[(tree << d) + pos + 1 - (1 << d)] = n.value;
            return Some(());
        }
        let (l, r) = if n.feature == LEAF {
            // The split stays `GO_LEFT`; both subtrees hold the value.
            (src, src)
        } else {
            let j = n.feature as usize;
            let id = if n.threshold.is_nan() {
                GO_RIGHT
            } else {
                let (a, b) = (*self.col_start.get(j)?, *self.col_start.get(j + 1)?);
                let k = self.thr[a..b].partition_point(|v| *v < n.threshold);
                u16::try_from(FIRST_THRESHOLD + a + k)
                    .ok()
                    .filter(|id| usize::from(*id) < MAX_CONDS)?
            };
            self.conds[tree * ((1 << d) - 1) + pos] = 2 * id;
            (n.left as usize, n.right as usize)
        };
        self.fill(nodes, tree, l, 2 * pos + 1, level + 1)?;
        self.fill(nodes, tree, r, 2 * pos + 2, level + 1)
    }

    /// Fills `masks` (one per condition id) for the rows `rows` of `x` (row-major, `nf` per row; at most
    /// [`BLOCK_ROWS`] rows): bit `r` of a condition's mask is set if it sends row `rows.start + r` right.
    fn masks(
        &self,
        columns: &[usize],
        x: &[f64],
        nf: usize,
        rows: std::ops::Range<usize>,
        masks: &mut Masks,
    ) {
        masks[..FIRST_THRESHOLD + self.thr.len()].fill([0; 2]);
        masks[usize::from(GO_RIGHT)] = [u64::MAX; 2];
        let xs = &x[rows.start * nf..rows.end * nf];
        for (j, &c) in columns.iter().enumerate() {
            let (a, b) = (self.col_start[j], self.col_start[j + 1]);
            let n = b - a;
            let t = &self.padded[self.padded_start[j]..self.padded_start[j + 1]];
            let Some(first) = xs.get(c).copied().filter(|_| n > 0) else {
                continue;
            };
            let m = &mut masks[FIRST_THRESHOLD + a..FIRST_THRESHOLD + b];
            // A row goes right at threshold `k` iff more than `k` thresholds lie below its value (all for NaN).
            if xs
                .chunks_exact(nf)
                .all(|r| r[c].to_bits() == first.to_bits())
            {
                // The same value in every row (the day's weekday, previous-day mean, …): one search. The bits
                // of rows past the block's end are never read.
                m[..below(t, n, first)].fill([u64::MAX; 2]);
            } else {
                let values = || xs.chunks_exact(nf).map(|r| r[c]);
                // A search unrolled for the column's padded length, for the usual lengths.
                let unrolled = mark_rows_unrolled::<2>(t, n, values(), m)
                    || mark_rows_unrolled::<4>(t, n, values(), m)
                    || mark_rows_unrolled::<8>(t, n, values(), m)
                    || mark_rows_unrolled::<16>(t, n, values(), m)
                    || mark_rows_unrolled::<32>(t, n, values(), m)
                    || mark_rows_unrolled::<64>(t, n, values(), m)
                    || mark_rows_unrolled::<128>(t, n, values(), m);
                if !unrolled {
                    mark_rows(values(), |v| below(t, n, v), m);
                }
                for k in (1..m.len()).rev() {
                    let above = m[k];
                    m[k - 1][0] |= above[0];
                    m[k - 1][1] |= above[1];
                }
            }
        }
    }

    /// Adds, tree by tree, the trees' values of a block's rows to `out` (one entry per row, at most
    /// [`BLOCK_ROWS`]); `masks` are the block's condition masks. The depth is `D`; `H`, `NS` and `NL` are
    /// `2^(D-1)` (1 for depth 0), `2^D - 1` (splits) and `2^D` (leaves); `K` trees are added per pass over the rows.
    fn add_block<
        const D: usize,
        const H: usize,
        const NS: usize,
        const NL: usize,
        const K: usize,
        const W: usize,
    >(
        &self,
        masks: &Masks,
        out: &mut [f64],
    ) -> Option<()> {
        if NS == 0 {
            // Depth 0: every tree is one leaf.
            for &v in self.leaves.get(..self.n_trees)? {
                for o in out.iter_mut() {
                    *o += v;
                }
            }
            return Some(());
        }
        let (conds, _) = self.conds.as_chunks::<NS>();
        // The windows of the `k` trees from tree `t` on (the windows past the last tree repeat the first).
        fn windows<const V: usize>(
            leaves: &[f64],
            t: usize,
            k: usize,
            nl: usize,
        ) -> Option<[&[f64; LEAF_WINDOW]; V]> {
            let per_window = LEAF_WINDOW / nl;
            let first = leaves.get(t * nl..)?.first_chunk::<LEAF_WINDOW>()?;
            let mut w = [first; V];
            for (i, w) in w.iter_mut().enumerate().take(k.div_ceil(per_window)) {
                *w = leaves
                    .get((t + i * per_window) * nl..)?
                    .first_chunk::<LEAF_WINDOW>()?;
            }
            Some(w)
        }
        let mut passes = conds.chunks_exact(K);
        for (p, c) in (&mut passes).enumerate() {
            let w = windows::<W>(&self.leaves, p * K, K, NL)?;
            add_trees::<D, H, NS, K, W>(c, w, masks, out);
        }
        // The rest in passes of eight trees, then one by one.
        let mut t = self.n_trees / K * K;
        let mut eights = passes.remainder().chunks_exact(8);
        for c in &mut eights {
            let w = windows::<8>(&self.leaves, t, 8, NL)?;
            add_trees::<D, H, NS, 8, 8>(c, w, masks, out);
            t += 8;
        }
        for c in eights.remainder() {
            let w = windows::<1>(&self.leaves, t, 1, NL)?;
            add_trees::<D, H, NS, 1, 1>(std::slice::from_ref(c), w, masks, out);
            t += 1;
        }
        Some(())
    }
}

/// Adds the values of the `K` trees with splits `conds` (see [`Sliced`]) to `out`, in tree order for each
/// row (so each row's sum is the one of adding the trees one by one); `leaves` starts at the first tree's
/// leaves, and the `K` trees' leaves fit in it (`K · 2^D ≤ LEAF_WINDOW`).
#[inline(always)]
fn add_trees<const D: usize, const H: usize, const NS: usize, const K: usize, const W: usize>(
    conds: &[[u16; NS]],
    leaves: [&[f64; LEAF_WINDOW]; W],
    masks: &Masks,
    out: &mut [f64],
) {
    // Trees whose leaves are in one window.
    let per_window = LEAF_WINDOW >> D;
    const { assert!(K <= W * (LEAF_WINDOW >> D)) };
    let n = out.len().min(BLOCK_ROWS);
    let out = &mut out[..n];
    let groups = out.len().div_ceil(8);
    // Every row's leaf index in `leaves` for each tree, one byte per row: first all the indices, then the
    // sums, so the adding loop is two instructions per tree and row (a byte load and an add from memory,
    // all from one base address).
    let mut pos = [[0u8; BLOCK_ROWS]; K];
    for (t, (p, c)) in pos.iter_mut().zip(conds).enumerate() {
        // The planes as bytes: byte `g` holds rows `8g..8g + 8`.
        let mut bytes = [[0u8; 16]; D];
        for (b, m) in bytes.iter_mut().zip(tree_planes::<D, H, NS>(c, masks)) {
            let (lo, hi) = b.split_at_mut(8);
            lo.copy_from_slice(&m[0].to_le_bytes());
            hi.copy_from_slice(&m[1].to_le_bytes());
        }
        let (p, _) = p.as_chunks_mut::<8>();
        for (g, p) in p.iter_mut().enumerate().take(groups) {
            // Eight rows' indices, one per byte: tree `t`'s leaves start at `t · 2^D`, and plane `k` is bit
            // `D - 1 - k` of the position among them (no carries: the sum stays below 256).
            let mut w = (((t % per_window) << D) as u64) * 0x0101_0101_0101_0101;
            for (k, b) in bytes.iter().enumerate() {
                w |= SPREAD[(D - 1 - k) % MAX_SLICED_DEPTH][usize::from(b[g % 16])];
            }
            *p = w.to_le_bytes();
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let mut v = *o;
        for k in 0..K {
            v += leaves[k / per_window][usize::from(pos[k][r % BLOCK_ROWS])];
        }
        *o = v;
    }
}

/// The bits of a block's rows' leaf positions in a complete tree of depth `D` (`H` = `2^(D-1)`), root
/// first: plane `k` has the bit of a row set if the split the row meets at level `k` sends it right.
#[inline(always)]
fn tree_planes<const D: usize, const H: usize, const NS: usize>(
    conds: &[u16; NS],
    masks: &Masks,
) -> [Mask; D] {
    let words = masks.as_flattened();
    let mut planes = [[0u64; 2]; D];
    let mut sel = [[0u64; 2]; H];
    for level in 0..D {
        let first = (1 << level) - 1;
        let mut len = 1 << level;
        for (i, s) in sel[..len].iter_mut().enumerate() {
            let w = usize::from(conds[first + i]);
            *s = [words[w], words[w + 1]];
        }
        // The row's node at this level is `first + i`, the bits of `i` being the row's planes above (plane 0
        // the most significant): select by the last plane first.
        for p in planes[..level].iter().rev() {
            len /= 2;
            for i in 0..len {
                sel[i] = mux(*p, sel[2 * i], sel[2 * i + 1]);
            }
        }
        planes[level] = sel[0];
    }
    planes
}

/// The number of thresholds below `v` (`n`, all of them, for NaN), where `padded` holds the `n` thresholds in
/// ascending order followed by `+inf` up to a power of two greater than `n`: a binary search whose steps do
/// not depend on `v` (a conditional move each), where `partition_point` took twice the instructions.
#[inline(always)]
fn below(padded: &[f64], n: usize, v: f64) -> usize {
    if v.is_nan() {
        return n;
    }
    // The count lies in `base..base + 2h`; `+inf` is never below `v`, so it is at most `n`.
    let mut base = 0;
    let mut h = padded.len() / 2;
    while h > 0 {
        if padded.get(base + h - 1).is_some_and(|u| *u < v) {
            base += h;
        }
        h /= 2;
    }
    base
}

/// [`below`] for a padded length `P` known at compile time: unrolled, and without bounds checks.
#[inline(always)]
fn below_unrolled<const P: usize>(padded: &[f64; P], n: usize, v: f64) -> usize {
    if v.is_nan() {
        return n;
    }
    let mut base = 0;
    let mut h = P / 2;
    while h > 0 {
        // `base + h - 1 < P` always; the mask only tells the compiler so.
        let probe = padded[(base + h - 1) & (P - 1)];
        base = std::hint::select_unpredictable(probe < v, base + h, base);
        h /= 2;
    }
    base
}

/// Sets, for each row `r` of `values` and each threshold `k` with `below(v) == k + 1`, bit `r` of `m[k]`
/// (the masks are completed downwards afterwards: a row above threshold `k` is above every lower one).
#[inline(always)]
fn mark_rows(values: impl Iterator<Item = f64>, below: impl Fn(f64) -> usize, m: &mut [Mask]) {
    for (r, v) in values.enumerate() {
        if let Some(mk) = below(v).checked_sub(1).and_then(|k| m.get_mut(k)) {
            mk[(r / 64) & 1] |= 1 << (r % 64);
        }
    }
}

/// [`mark_rows`] with [`below_unrolled`] if the column's padded thresholds have length `P`; `false` if not.
fn mark_rows_unrolled<const P: usize>(
    padded: &[f64],
    n: usize,
    values: impl Iterator<Item = f64>,
    m: &mut [Mask],
) -> bool {
    let Ok(t) = <&[f64; P]>::try_from(padded) else {
        return false;
    };
    mark_rows(values, |v| below_unrolled(t, n, v), m);
    true
}

/// Per row (bit): `b` where `s` is set, else `a`.
#[inline(always)]
fn mux(s: Mask, a: Mask, b: Mask) -> Mask {
    [a[0] ^ ((a[0] ^ b[0]) & s[0]), a[1] ^ ((a[1] ^ b[1]) & s[1])]
}

/// Work buffers of [`Gbt::predict_batch`], reused across calls so that a warm call does not allocate.
#[derive(Debug, Default, Clone)]
pub struct GbtScratch {
    /// The block's condition masks ([`N_CONDS`] of them once used).
    masks: Vec<Mask>,
}

/// Lazily built [`Sliced`] layout: a cache, so it is equal to any other and cloned empty.
#[derive(Default)]
struct SlicedCache(std::sync::OnceLock<Option<Sliced>>);

impl Clone for SlicedCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for SlicedCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for SlicedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlicedCache")
    }
}

const MAX_BINS: usize = 64;

struct Binned {
    bins: Vec<u8>,
    thresholds: Vec<Vec<f64>>,
    nc: usize,
}

fn bin_data(data: &Dataset, columns: &[usize]) -> Binned {
    let n = data.len();
    let nc = columns.len();
    let stride = (n / 4000).max(1);
    let thresholds: Vec<Vec<f64>> = columns
        .iter()
        .map(|&c| {
            let mut v: Vec<f64> = (0..n).step_by(stride).map(|i| data.row(i)[c]).collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            if v.len() <= MAX_BINS {
                // Split between distinct values.
                v.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect()
            } else {
                let mut t: Vec<f64> = (1..MAX_BINS).map(|k| v[k * v.len() / MAX_BINS]).collect();
                t.dedup();
                t
            }
        })
        .collect();
    let mut bins = vec![0u8; n * nc];
    for i in 0..n {
        let row = data.row(i);
        for (j, &c) in columns.iter().enumerate() {
            bins[i * nc + j] = thresholds[j].partition_point(|t| *t < row[c]) as u8;
        }
    }
    Binned {
        bins,
        thresholds,
        nc,
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    let (_, x, _) = v.select_nth_unstable_by(m, f64::total_cmp);
    *x
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Histogram of one node: per column and bin, (sum of gradients, count).
type Hist = Vec<(f64, u32)>;

struct Builder<'a> {
    b: &'a Binned,
    grad: &'a [f64],
    resid: &'a [f64],
    p: &'a GbtParams,
    nodes: Vec<Node>,
    /// Split bin of each node (for routing binned rows).
    split_bins: Vec<u8>,
}

impl Builder<'_> {
    fn hist(&self, rows: &[u32]) -> Hist {
        let nc = self.b.nc;
        let mut h = vec![(0.0, 0u32); nc * MAX_BINS];
        for &r in rows {
            let g = self.grad[r as usize];
            let base = r as usize * nc;
            for j in 0..nc {
                let e = &mut h[j * MAX_BINS + self.b.bins[base + j] as usize];
                e.0 += g;
                e.1 += 1;
            }
        }
        h
    }

    fn leaf(&mut self, rows: &[u32]) -> u32 {
        let v = match self.p.loss {
            GbtLoss::Squared => {
                rows.iter().map(|&r| self.resid[r as usize]).sum::<f64>() / rows.len().max(1) as f64
            }
            GbtLoss::Absolute => {
                let mut v: Vec<f64> = rows.iter().map(|&r| self.resid[r as usize]).collect();
                median(&mut v)
            }
        };
        self.nodes.push(Node {
            feature: LEAF,
            threshold: 0.0,
            left: 0,
            right: 0,
            value: v * self.p.learning_rate,
        });
        self.split_bins.push(0);
        (self.nodes.len() - 1) as u32
    }

    fn grow(&mut self, rows: Vec<u32>, hist: Hist, depth: usize) -> u32 {
        let n = rows.len();
        if depth >= self.p.max_depth || n < 2 * self.p.min_leaf {
            return self.leaf(&rows);
        }
        let nc = self.b.nc;
        let (g_tot, _) = (0..MAX_BINS).fold((0.0, 0u32), |a, k| (a.0 + hist[k].0, a.1 + hist[k].1));
        let parent = g_tot * g_tot / n as f64;
        let mut best: Option<(f64, usize, usize)> = None;
        for j in 0..nc {
            let (mut gl, mut nl) = (0.0, 0usize);
            for k in 0..MAX_BINS - 1 {
                let (g, c) = hist[j * MAX_BINS + k];
                gl += g;
                nl += c as usize;
                let nr = n - nl;
                if nl < self.p.min_leaf {
                    continue;
                }
                if nr < self.p.min_leaf {
                    break;
                }
                let gr = g_tot - gl;
                let gain = gl * gl / nl as f64 + gr * gr / nr as f64 - parent;
                if best.is_none_or(|b| gain > b.0) {
                    best = Some((gain, j, k));
                }
            }
        }
        let Some((gain, j, k)) = best else {
            return self.leaf(&rows);
        };
        if gain <= 1e-12 {
            return self.leaf(&rows);
        }
        let (l, r): (Vec<u32>, Vec<u32>) = rows
            .into_iter()
            .partition(|&row| self.b.bins[row as usize * nc + j] as usize <= k);
        let id = self.nodes.len();
        let threshold = self.b.thresholds[j]
            .get(k)
            .copied()
            .unwrap_or(f64::INFINITY);
        self.nodes.push(Node {
            feature: j as u32,
            threshold,
            left: 0,
            right: 0,
            value: 0.0,
        });
        self.split_bins.push(k as u8);
        let (small, large_is_left) = if l.len() <= r.len() {
            (&l, false)
        } else {
            (&r, true)
        };
        let h_small = self.hist(small);
        let h_large: Hist = hist
            .iter()
            .zip(&h_small)
            .map(|(p, s)| (p.0 - s.0, p.1 - s.1))
            .collect();
        let (hl, hr) = if large_is_left {
            (h_large, h_small)
        } else {
            (h_small, h_large)
        };
        let left = self.grow(l, hl, depth + 1);
        let right = self.grow(r, hr, depth + 1);
        self.nodes[id].left = left;
        self.nodes[id].right = right;
        id as u32
    }
}

fn route_binned(nodes: &[Node], split_bins: &[u8], bins: &[u8]) -> f64 {
    let mut i = 0usize;
    loop {
        let n = &nodes[i];
        if n.feature == LEAF {
            return n.value;
        }
        i = if bins[n.feature as usize] <= split_bins[i] {
            n.left
        } else {
            n.right
        } as usize;
    }
}

impl Gbt {
    /// Fits on `columns` of `train`. With `val`, training stops early when the validation MAE has not
    /// improved for 40 trees, and the ensemble is cut at its best size; returns the model and, per tree, the
    /// validation MAE.
    pub fn fit(
        train: &Dataset,
        columns: &[usize],
        p: &GbtParams,
        val: Option<&Dataset>,
    ) -> (Self, Vec<f64>) {
        let n = train.len();
        let b = bin_data(train, columns);
        let off = |row: &[f64]| p.offset_column.map_or(0.0, |c| row[c]);
        let target: Vec<f64> = (0..n).map(|i| train.y[i] - off(train.row(i))).collect();
        let mut y: Vec<f64> = target.clone();
        let base = match p.loss {
            GbtLoss::Squared => y.iter().sum::<f64>() / n.max(1) as f64,
            GbtLoss::Absolute => median(&mut y),
        };
        let mut pred = vec![base; n];
        let mut resid = vec![0.0; n];
        let mut grad = vec![0.0; n];
        let mut model = Gbt {
            columns: columns.to_vec(),
            base,
            trees: Vec::with_capacity(p.n_trees),
            offset_column: p.offset_column,
            sliced: SlicedCache::default(),
        };
        let mut val_pred: Vec<f64> = val.map(|v| vec![base; v.len()]).unwrap_or_default();
        let mut val_curve = Vec::new();
        let mut rng = Rng(p.seed | 1);
        let mut best = (f64::INFINITY, 0usize);
        for _ in 0..p.n_trees {
            for i in 0..n {
                resid[i] = target[i] - pred[i];
                grad[i] = match p.loss {
                    GbtLoss::Squared => resid[i],
                    GbtLoss::Absolute => resid[i].signum() * f64::from(u8::from(resid[i] != 0.0)),
                };
            }
            let rows: Vec<u32> = (0..n as u32)
                .filter(|_| p.subsample >= 1.0 || rng.unit() < p.subsample)
                .collect();
            let mut builder = Builder {
                b: &b,
                grad: &grad,
                resid: &resid,
                p,
                nodes: Vec::new(),
                split_bins: Vec::new(),
            };
            let h = builder.hist(&rows);
            builder.grow(rows, h, 0);
            let (nodes, split_bins) = (builder.nodes, builder.split_bins);
            for (i, pr) in pred.iter_mut().enumerate() {
                *pr += route_binned(&nodes, &split_bins, &b.bins[i * b.nc..(i + 1) * b.nc]);
            }
            model.trees.push(nodes);
            if let Some(v) = val {
                let tree = model.trees.last().map(Vec::as_slice).unwrap_or_default();
                let mut err = 0.0;
                for (i, vp) in val_pred.iter_mut().enumerate() {
                    *vp += predict_tree(tree, columns, v.row(i));
                    err += (v.y[i] - off(v.row(i)) - *vp).abs();
                }
                let err = err / v.len().max(1) as f64;
                val_curve.push(err);
                if err < best.0 {
                    best = (err, model.trees.len());
                }
                if model.trees.len() > best.1 + 40 {
                    break;
                }
            }
        }
        if val.is_some() {
            model.trees.truncate(best.1.max(1));
        }
        (model, val_curve)
    }

    /// Predicts one row of the full feature vector.
    pub fn predict(&self, row: &[f64]) -> f64 {
        self.offset_column.map_or(0.0, |c| row[c])
            + self.base
            + self
                .trees
                .iter()
                .map(|t| predict_tree(t, &self.columns, row))
                .sum::<f64>()
    }

    /// Predicts `out.len()` rows of `x` (row-major, `n_features` per row) into `out`, with the same values as
    /// [`Gbt::predict`] on each row (bit for bit: each row's trees are summed in the same order), evaluating
    /// the trees bit-sliced over blocks of 128 rows.
    pub fn predict_batch(
        &self,
        x: &[f64],
        n_features: usize,
        out: &mut [f64],
        scratch: &mut GbtScratch,
    ) {
        let n = out.len();
        let sliced = self.sliced.0.get_or_init(|| Sliced::build(self)).as_ref();
        let row_by_row = |out: &mut [f64]| {
            for (r, o) in out.iter_mut().enumerate() {
                *o = self.predict(&x[r * n_features..(r + 1) * n_features]);
            }
        };
        let Some(f) = sliced.filter(|f| {
            f.n_trees == self.trees.len() && f.max_col < n_features && x.len() >= n * n_features
        }) else {
            row_by_row(out);
            return;
        };
        // `Sum` of f64 starts from -0.0.
        out.fill(-0.0);
        for (b, ob) in out.chunks_mut(BLOCK_ROWS).enumerate() {
            let r0 = b * BLOCK_ROWS;
            if scratch.masks.len() != N_CONDS {
                scratch.masks = vec![[0; 2]; N_CONDS];
            }
            let Ok(masks) = <&mut Masks>::try_from(scratch.masks.as_mut_slice()) else {
                // Not reached: the length was just set.
                row_by_row(out);
                return;
            };
            f.masks(&self.columns, x, n_features, r0..r0 + ob.len(), masks);
            let masks = &*masks;
            let added = match f.depth {
                // Trees per pass: eight, or as many as have their leaves in one `LEAF_WINDOW`.
                0 => f.add_block::<0, 1, 0, 1, 16, 1>(masks, ob),
                1 => f.add_block::<1, 1, 1, 2, 16, 1>(masks, ob),
                2 => f.add_block::<2, 2, 3, 4, 16, 1>(masks, ob),
                3 => f.add_block::<3, 4, 7, 8, 16, 1>(masks, ob),
                4 => f.add_block::<4, 8, 15, 16, 16, 1>(masks, ob),
                5 => f.add_block::<5, 16, 31, 32, 16, 2>(masks, ob),
                6 => f.add_block::<6, 32, 63, 64, 8, 2>(masks, ob),
                7 => f.add_block::<7, 64, 127, 128, 4, 2>(masks, ob),
                _ => f.add_block::<8, 128, 255, 256, 2, 2>(masks, ob),
            };
            if added.is_none() {
                // Not reached: `Sliced::build` pads the leaves.
                row_by_row(out);
                return;
            }
        }
        for (r, o) in out.iter_mut().enumerate() {
            let row = &x[r * n_features..(r + 1) * n_features];
            *o += self.offset_column.map_or(0.0, |c| row[c]) + self.base;
        }
    }
}

fn predict_tree(nodes: &[Node], columns: &[usize], row: &[f64]) -> f64 {
    let mut i = 0usize;
    loop {
        let n = &nodes[i];
        if n.feature == LEAF {
            return n.value;
        }
        i = if row[columns[n.feature as usize]] <= n.threshold {
            n.left
        } else {
            n.right
        } as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_step_and_an_interaction() {
        let mut d = Dataset {
            n_features: 2,
            ..Default::default()
        };
        let mut rng = Rng(7);
        for _ in 0..4000 {
            let a = rng.unit();
            let b = rng.unit();
            d.x.extend([a, b]);
            d.y.push(if a > 0.5 { 10.0 } else { 0.0 } + if b > 0.3 && a < 0.5 { 5.0 } else { 0.0 });
        }
        for loss in [GbtLoss::Squared, GbtLoss::Absolute] {
            let p = GbtParams {
                loss,
                n_trees: 150,
                learning_rate: 0.2,
                ..Default::default()
            };
            let (mut m, _) = Gbt::fit(&d, &[0, 1], &p, None);
            let err: f64 = (0..d.len())
                .map(|i| (m.predict(d.row(i)) - d.y[i]).abs())
                .sum::<f64>()
                / d.len() as f64;
            // Absolute loss moves leaves by medians of sign-fitted trees, so it converges more slowly.
            let tol = if loss == GbtLoss::Squared { 0.3 } else { 1.0 };
            assert!(err < tol, "{loss:?}: {err}");
            // Binned routing and raw-feature prediction agree on the training rows.
            assert!((m.predict(&[0.9, 0.9]) - 10.0).abs() < 0.5);
            // The batch path gives the row-by-row values, also on NaN and threshold-equal inputs.
            m.offset_column = (loss == GbtLoss::Squared).then_some(1);
            let mut x = d.x.clone();
            x[2] = f64::NAN;
            x[5] = f64::NAN;
            if let Some(t) = m.trees[0].first().filter(|n| n.feature != LEAF) {
                x[6 + t.feature as usize] = t.threshold;
            }
            let mut out = vec![0.0; d.len()];
            m.predict_batch(&x, 2, &mut out, &mut GbtScratch::default());
            for (i, o) in out.iter().enumerate() {
                assert_eq!(
                    o.to_bits(),
                    m.predict(&x[2 * i..2 * i + 2]).to_bits(),
                    "row {i}"
                );
            }
            // A column with one value in every row (its splits are taken once per tree), also NaN.
            for a in [0.2, 0.7, f64::NAN] {
                for r in x.chunks_exact_mut(2) {
                    r[0] = a;
                }
                m.predict_batch(&x, 2, &mut out, &mut GbtScratch::default());
                for (i, o) in out.iter().enumerate() {
                    let want = m.predict(&x[2 * i..2 * i + 2]);
                    assert_eq!(o.to_bits(), want.to_bits(), "{a}: row {i}");
                }
            }
        }
    }

    /// Trees of every depth the bit-sliced layout takes (and one deeper, which falls back to the node walk),
    /// over several 128-row blocks, with NaN, infinite and threshold-equal values, a column constant over
    /// all rows and a NaN threshold: the batch gives the row-by-row values bit for bit.
    #[test]
    fn batch_equals_row_by_row_for_all_depths_and_blocks() {
        let mut d = Dataset {
            n_features: 4,
            ..Default::default()
        };
        let mut rng = Rng(11);
        for _ in 0..3000 {
            let (a, b, c) = (rng.unit(), rng.unit(), (rng.unit() * 8.0).floor());
            d.x.extend([a, b, c, 1.0]);
            d.y.push((a * 7.0).sin() * 3.0 + b * b * 5.0 + c + rng.unit());
        }
        let n = 333;
        let mut x = d.x[..n * 4].to_vec();
        x[4 + 1] = f64::NAN;
        x[8] = f64::INFINITY;
        x[12 + 1] = f64::NEG_INFINITY;
        x[16 + 2] = -0.0;
        for (max_depth, loss) in [
            (0, GbtLoss::Squared),
            (1, GbtLoss::Absolute),
            (3, GbtLoss::Squared),
            (5, GbtLoss::Absolute),
            (8, GbtLoss::Squared),
            (10, GbtLoss::Squared),
        ] {
            let p = GbtParams {
                loss,
                // Passes of 16 trees (depth ≤ 5), one of eight and single trees.
                n_trees: 45,
                max_depth,
                min_leaf: 5,
                offset_column: Some(2),
                ..Default::default()
            };
            let (mut m, _) = Gbt::fit(&d, &[0, 1, 2, 3], &p, None);
            if max_depth == 5 {
                // A NaN threshold sends every row right.
                if let Some(node) = m.trees[1].iter_mut().find(|n| n.feature != LEAF) {
                    node.threshold = f64::NAN;
                }
            }
            if let Some(t) = m.trees[0].first().filter(|n| n.feature != LEAF) {
                x[20 + t.feature as usize] = t.threshold;
            }
            let mut scratch = GbtScratch::default();
            for rows in [0, 1, 7, 128, 129, n] {
                let mut out = vec![0.0; rows];
                m.predict_batch(&x, 4, &mut out, &mut scratch);
                for (r, o) in out.iter().enumerate() {
                    let want = m.predict(&x[4 * r..4 * r + 4]);
                    assert_eq!(
                        o.to_bits(),
                        want.to_bits(),
                        "depth {max_depth}, {rows} rows: row {r}"
                    );
                }
            }
        }
    }
}
