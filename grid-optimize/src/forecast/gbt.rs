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
    flat: FlatCache,
}

/// Deepest tree [`Flat`] lays out (a complete tree of depth 12 has 4095 splits); deeper models use the
/// node-by-node path.
const MAX_FLAT_DEPTH: usize = 12;

/// The trees as complete binary trees of one depth `d`, in heap order (children of split `i` at `2i + 1` and
/// `2i + 2`), so a row is routed by `d` branch-free steps. A leaf above depth `d` is padded with splits that
/// send every row left (`threshold = +inf`) into copies of its value, so the routed value is unchanged.
///
/// Every per-tree array has `2^d` entries (splits padded by one) and rows are copied to a power-of-two
/// stride, so indices are masked instead of bounds-checked.
#[derive(Debug)]
struct Flat {
    depth: usize,
    /// Per tree, the split's index into [`Gbt::columns`].
    cols: Vec<u8>,
    /// Per tree, the split thresholds (`x <= threshold` goes left).
    thr: Vec<f64>,
    /// Per tree, the leaf values.
    leaves: Vec<f64>,
    /// Row stride of the compacted rows (a power of two ≥ the number of columns).
    stride: usize,
    /// Largest feature column read, to check a row is long enough once per batch.
    max_col: usize,
    /// Number of trees laid out (a stale cache after `trees` was edited is not used).
    n_trees: usize,
}

impl Flat {
    /// Lays out `m`'s trees; `None` if a tree is deeper than [`MAX_FLAT_DEPTH`], uses more than 256 columns
    /// or is malformed.
    fn build(m: &Gbt) -> Option<Self> {
        fn depth(nodes: &[Node], i: usize, level: usize) -> Option<usize> {
            let n = nodes.get(i)?;
            if n.feature == LEAF {
                return Some(level);
            }
            if level >= MAX_FLAT_DEPTH {
                return None;
            }
            Some(depth(nodes, n.left as usize, level + 1)?.max(depth(
                nodes,
                n.right as usize,
                level + 1,
            )?))
        }
        struct Out<'a> {
            cols: &'a mut [u8],
            thr: &'a mut [f64],
            leaves: &'a mut [f64],
        }
        fn fill(
            nodes: &[Node],
            nc: usize,
            src: usize,
            pos: usize,
            level: usize,
            d: usize,
            o: &mut Out<'_>,
        ) -> Option<()> {
            let n = nodes.get(src)?;
            if level == d {
                o.leaves[pos + 1 - (1 << d)] = n.value;
                return Some(());
            }
            let (l, r) = if n.feature == LEAF {
                o.cols[pos] = 0;
                o.thr[pos] = f64::INFINITY;
                (src, src)
            } else {
                if n.feature as usize >= nc {
                    return None;
                }
                o.cols[pos] = u8::try_from(n.feature).ok()?;
                o.thr[pos] = n.threshold;
                (n.left as usize, n.right as usize)
            };
            fill(nodes, nc, l, 2 * pos + 1, level + 1, d, o)?;
            fill(nodes, nc, r, 2 * pos + 2, level + 1, d, o)
        }
        let nc = m.columns.len();
        if nc == 0 || nc > 256 {
            return None;
        }
        let mut d = 0;
        for t in &m.trees {
            d = d.max(depth(t, 0, 0)?);
        }
        let nl = 1usize << d;
        let nt = m.trees.len();
        let mut f = Flat {
            depth: d,
            cols: vec![0; nt * nl],
            thr: vec![f64::INFINITY; nt * nl],
            leaves: vec![0.0; nt * nl],
            stride: nc.next_power_of_two(),
            max_col: m.columns.iter().copied().chain(m.offset_column).max()?,
            n_trees: nt,
        };
        for (k, t) in m.trees.iter().enumerate() {
            let mut o = Out {
                cols: &mut f.cols[k * nl..(k + 1) * nl],
                thr: &mut f.thr[k * nl..(k + 1) * nl],
                leaves: &mut f.leaves[k * nl..(k + 1) * nl],
            };
            fill(t, nc, 0, 0, 0, d, &mut o)?;
        }
        Some(f)
    }
}

/// Lazily built [`Flat`] layout: a cache, so it is equal to any other and cloned empty.
#[derive(Default)]
struct FlatCache(std::sync::OnceLock<Option<Flat>>);

impl Clone for FlatCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for FlatCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for FlatCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlatCache")
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
            flat: FlatCache::default(),
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
    /// [`Gbt::predict`] on each row (the trees are summed in the same order), tree by tree over all rows.
    /// `work` is a buffer for the rows' model columns.
    pub fn predict_batch(
        &self,
        x: &[f64],
        n_features: usize,
        out: &mut [f64],
        work: &mut Vec<f64>,
    ) {
        let n = out.len();
        let flat = self.flat.0.get_or_init(|| Flat::build(self)).as_ref();
        let Some(f) = flat.filter(|f| {
            f.n_trees == self.trees.len() && f.max_col < n_features && x.len() >= n * n_features
        }) else {
            for (r, o) in out.iter_mut().enumerate() {
                *o = self.predict(&x[r * n_features..(r + 1) * n_features]);
            }
            return;
        };
        // The model's columns of each row, compacted to a power-of-two stride.
        let stride = f.stride;
        work.clear();
        work.resize(n * stride, 0.0);
        for (r, w) in work.chunks_exact_mut(stride).enumerate() {
            let row = &x[r * n_features..(r + 1) * n_features];
            for (w, &c) in w.iter_mut().zip(&self.columns) {
                *w = row[c];
            }
        }
        // `Sum` of f64 starts from -0.0.
        out.fill(-0.0);
        let (d, nl) = (f.depth, 1usize << f.depth);
        let (imask, smask) = (nl - 1, stride - 1);
        let first_leaf = nl - 1;
        const LANES: usize = 8;
        // Columns with the same value in every row (e.g. the day's weekday or previous-day mean): the splits
        // on them at the top of a tree send all rows the same way, so they are taken once per tree.
        let mut konst = [false; 256];
        if let Some(first) = work.get(..stride) {
            for (j, k) in konst.iter_mut().enumerate().take(self.columns.len()) {
                *k = work
                    .chunks_exact(stride)
                    .all(|w| w[j].to_bits() == first[j].to_bits());
            }
        }
        let first = work.get(..stride).unwrap_or_default();
        for t in 0..self.trees.len() {
            let cols = &f.cols[t * nl..(t + 1) * nl];
            let thr = &f.thr[t * nl..(t + 1) * nl];
            let (mut start, mut steps) = (0usize, d);
            while steps > 0 {
                let (c, th) = (cols[start & imask] as usize, thr[start & imask]);
                if th == f64::INFINITY {
                    // Padding: both subtrees hold the same value.
                    start = 2 * start + 1;
                } else if konst[c] {
                    start = 2 * start + 1 + (usize::from(first[c & smask] <= th) ^ 1);
                } else {
                    break;
                }
                steps -= 1;
            }
            let leaves = &f.leaves[t * nl..(t + 1) * nl];
            // `(v <= t) ^ 1`, not `v > t`: a NaN goes right, as in `predict_tree`.
            let mut blocks = work.chunks_exact(LANES * stride);
            let mut outs = out.chunks_exact_mut(LANES);
            for (xb, ob) in (&mut blocks).zip(&mut outs) {
                let mut idx = [start; LANES];
                for _ in 0..steps {
                    for (k, i) in idx.iter_mut().enumerate() {
                        let j = *i & imask;
                        let v = xb[(k * stride + cols[j] as usize) & (LANES * stride - 1)];
                        *i = 2 * *i + 1 + (usize::from(v <= thr[j]) ^ 1);
                    }
                }
                for (o, i) in ob.iter_mut().zip(idx) {
                    *o += leaves[i.wrapping_sub(first_leaf) & imask];
                }
            }
            for (xr, o) in blocks
                .remainder()
                .chunks_exact(stride)
                .zip(outs.into_remainder())
            {
                let mut i = start;
                for _ in 0..steps {
                    let j = i & imask;
                    let v = xr[cols[j] as usize & smask];
                    i = 2 * i + 1 + (usize::from(v <= thr[j]) ^ 1);
                }
                *o += leaves[i.wrapping_sub(first_leaf) & imask];
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
            m.predict_batch(&x, 2, &mut out, &mut Vec::new());
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
                m.predict_batch(&x, 2, &mut out, &mut Vec::new());
                for (i, o) in out.iter().enumerate() {
                    let want = m.predict(&x[2 * i..2 * i + 2]);
                    assert_eq!(o.to_bits(), want.to_bits(), "{a}: row {i}");
                }
            }
        }
    }
}
