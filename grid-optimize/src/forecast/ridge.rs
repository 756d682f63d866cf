//! Ridge regression (L2-regularised least squares) on standardised features, fitted with ndarray, with the
//! penalty tuned on a validation block by argmin's Brent minimiser; also one ridge per hour of the day.

use crate::error::{Error, Result};
use argmin::core::{CostFunction, Executor};
use argmin::solver::brent::BrentOpt;
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// A feature matrix (row-major, `n × n_features`) with one target per row.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Row-major features.
    pub x: Vec<f64>,
    /// Targets.
    pub y: Vec<f64>,
    /// Features per row.
    pub n_features: usize,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.n_features..(i + 1) * self.n_features]
    }
    /// The rows whose indices `keep` selects.
    pub fn select(&self, keep: impl Fn(usize, &[f64]) -> bool) -> Dataset {
        let mut d = Dataset {
            n_features: self.n_features,
            ..Default::default()
        };
        for i in 0..self.len() {
            if keep(i, self.row(i)) {
                d.x.extend_from_slice(self.row(i));
                d.y.push(self.y[i]);
            }
        }
        d
    }
}

/// A fitted ridge regression on a subset of the feature columns.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Ridge {
    /// Feature columns used, in coefficient order.
    pub columns: Vec<usize>,
    /// Column means (standardisation).
    pub mean: Vec<f64>,
    /// Column scales (standardisation; 1 for constant columns).
    pub scale: Vec<f64>,
    /// Coefficients on the standardised columns.
    pub coef: Vec<f64>,
    /// Intercept (the target mean).
    pub intercept: f64,
    /// The penalty it was fitted with (relative to the number of rows).
    pub lambda: f64,
}

/// Sufficient statistics of a least-squares problem on standardised columns.
struct Gram {
    columns: Vec<usize>,
    mean: Vec<f64>,
    scale: Vec<f64>,
    xtx: Array2<f64>,
    xty: Array1<f64>,
    y_mean: f64,
    n: usize,
}

impl Gram {
    fn new(data: &Dataset, columns: &[usize]) -> Self {
        let n = data.len();
        let p = columns.len();
        let mut x = Array2::<f64>::zeros((n, p));
        for (i, mut r) in x.axis_iter_mut(Axis(0)).enumerate() {
            let row = data.row(i);
            for (j, &c) in columns.iter().enumerate() {
                r[j] = row[c];
            }
        }
        let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(p));
        x -= &mean;
        let scale: Vec<f64> = x
            .axis_iter(Axis(1))
            .map(|c| {
                let s = (c.dot(&c) / n.max(1) as f64).sqrt();
                if s > 1e-12 { s } else { 1.0 }
            })
            .collect();
        for (j, mut c) in x.axis_iter_mut(Axis(1)).enumerate() {
            c /= scale[j];
        }
        let y_mean = if n > 0 {
            data.y.iter().sum::<f64>() / n as f64
        } else {
            0.0
        };
        let yc = Array1::from_iter(data.y.iter().map(|v| v - y_mean));
        let xv: ArrayView2<'_, f64> = x.view();
        let xtx = xv.t().dot(&xv);
        let xty = xv.t().dot(&yc);
        Self {
            columns: columns.to_vec(),
            mean: mean.to_vec(),
            scale,
            xtx,
            xty,
            y_mean,
            n,
        }
    }

    fn solve(&self, lambda: f64) -> Result<Ridge> {
        let p = self.columns.len();
        let mut a = self.xtx.clone();
        let pen = lambda * self.n.max(1) as f64;
        for j in 0..p {
            a[[j, j]] += pen + 1e-9 * self.n.max(1) as f64;
        }
        let coef = cholesky_solve(a, self.xty.to_vec())?;
        Ok(Ridge {
            columns: self.columns.clone(),
            mean: self.mean.clone(),
            scale: self.scale.clone(),
            coef,
            intercept: self.y_mean,
            lambda,
        })
    }
}

/// Solves `a x = b` for a symmetric positive definite `a`.
fn cholesky_solve(mut a: Array2<f64>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for j in 0..n {
        let mut d = a[[j, j]];
        for k in 0..j {
            d -= a[[j, k]] * a[[j, k]];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(Error::Unsupported(
                "ridge system is not positive definite".into(),
            ));
        }
        let d = d.sqrt();
        a[[j, j]] = d;
        for i in j + 1..n {
            let mut s = a[[i, j]];
            for k in 0..j {
                s -= a[[i, k]] * a[[j, k]];
            }
            a[[i, j]] = s / d;
        }
    }
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[[i, k]] * b[k];
        }
        b[i] = s / a[[i, i]];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= a[[k, i]] * b[k];
        }
        b[i] = s / a[[i, i]];
    }
    Ok(b)
}

impl Ridge {
    /// Fits on `columns` of `data` with penalty `lambda` (per row, on standardised columns).
    ///
    /// # Errors
    /// [`Error::Unsupported`] if the system cannot be solved (e.g. non-finite features).
    pub fn fit(data: &Dataset, columns: &[usize], lambda: f64) -> Result<Self> {
        Gram::new(data, columns).solve(lambda)
    }

    /// The "model" that forecasts feature column `column` as it is (`0 + 1 · (x − 0) / 1`, which is `x` for
    /// every `x` but −0.0): a seasonal-naive forecast from a lag column.
    pub fn copy_of(column: usize) -> Self {
        Self {
            columns: vec![column],
            mean: vec![0.0],
            scale: vec![1.0],
            coef: vec![1.0],
            intercept: 0.0,
            lambda: 0.0,
        }
    }

    /// Predicts one row of the full feature vector.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let mut s = self.intercept;
        for (j, &c) in self.columns.iter().enumerate() {
            s += self.coef[j] * (row[c] - self.mean[j]) / self.scale[j];
        }
        s
    }

    /// [`Ridge::predict`] of each of the `out.len()` rows of `x` (row-major, `n_features` per row) into
    /// `out`; the same operations per row in the same order (so the same values), four rows interleaved.
    pub fn predict_batch(&self, x: &[f64], n_features: usize, out: &mut [f64]) {
        const LANES: usize = 4;
        let nf = n_features;
        let terms = self
            .columns
            .len()
            .min(self.coef.len())
            .min(self.mean.len())
            .min(self.scale.len());
        for (b, ob) in out.chunks_exact_mut(LANES).enumerate() {
            let rows: [&[f64]; LANES] =
                std::array::from_fn(|l| &x[(b * LANES + l) * nf..(b * LANES + l + 1) * nf]);
            let mut s = [self.intercept; LANES];
            for j in 0..terms {
                let (c, k, m, sc) = (self.columns[j], self.coef[j], self.mean[j], self.scale[j]);
                // The rows' values first, so the arithmetic runs on two rows at once.
                let v: [f64; LANES] = std::array::from_fn(|l| rows[l][c]);
                for l in 0..LANES {
                    s[l] += k * (v[l] - m) / sc;
                }
            }
            ob.copy_from_slice(&s);
        }
        let done = out.len() / LANES * LANES;
        for (r, o) in out.iter_mut().enumerate().skip(done) {
            *o = self.predict(&x[r * nf..(r + 1) * nf]);
        }
    }
}

/// Validation MAE of a ridge fit as a function of `log10(lambda)`, minimised with Brent's method.
struct PenaltyCost<'a> {
    gram: &'a Gram,
    val: &'a Dataset,
}

impl CostFunction for PenaltyCost<'_> {
    type Param = f64;
    type Output = f64;
    fn cost(&self, log_lambda: &f64) -> std::result::Result<f64, argmin::core::Error> {
        let r = self.gram.solve(10f64.powf(*log_lambda))?;
        let n = self.val.len().max(1) as f64;
        Ok((0..self.val.len())
            .map(|i| (r.predict(self.val.row(i)) - self.val.y[i]).abs())
            .sum::<f64>()
            / n)
    }
}

/// Chooses the ridge penalty on `val` (Brent's method on `log10 λ` in -6..=2) for a fit on `train`.
///
/// # Errors
/// [`Error::Unsupported`] if no fit succeeds.
pub fn tune_lambda(train: &Dataset, val: &Dataset, columns: &[usize]) -> Result<f64> {
    let gram = Gram::new(train, columns);
    let cost = PenaltyCost { gram: &gram, val };
    let res = Executor::new(cost, BrentOpt::new(-6.0, 2.0))
        .configure(|s| s.max_iters(30))
        .run()
        .map_err(|e| Error::Unsupported(format!("ridge penalty search failed: {e}")))?;
    Ok(10f64.powf(res.state().best_param.unwrap_or(-3.0)))
}

/// Number of time-of-day groups of [`RidgeByHour`].
pub const HOURS: usize = 24;

/// One ridge regression per hour of the day (the group of a row is read from its `tod` feature, column 0),
/// so each hour gets its own coefficients on the previous day's profile and the lags.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RidgeByHour {
    /// One model per hour of the day.
    pub hours: Vec<Ridge>,
}

fn hour_of(row: &[f64]) -> usize {
    ((row[0] * HOURS as f64 + 1e-9) as usize).min(HOURS - 1)
}

impl RidgeByHour {
    /// Fits one ridge per hour with a shared penalty.
    ///
    /// # Errors
    /// [`Error::Unsupported`] if an hour has no rows or cannot be solved.
    pub fn fit(data: &Dataset, columns: &[usize], lambda: f64) -> Result<Self> {
        let hours = (0..HOURS)
            .map(|h| {
                let d = data.select(|_, r| hour_of(r) == h);
                if d.is_empty() {
                    return Err(Error::Unsupported(format!("no training rows for hour {h}")));
                }
                Ridge::fit(&d, columns, lambda)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { hours })
    }

    /// Predicts one row of the full feature vector.
    pub fn predict(&self, row: &[f64]) -> f64 {
        self.hours[hour_of(row)].predict(row)
    }

    /// [`RidgeByHour::predict`] of each of the `out.len()` rows of `x` (row-major, `n_features` per row)
    /// into `out`, each run of consecutive rows of one hour with [`Ridge::predict_batch`] (same values).
    pub fn predict_batch(&self, x: &[f64], n_features: usize, out: &mut [f64]) {
        let nf = n_features;
        let hour = |r: usize| hour_of(&x[r * nf..(r + 1) * nf]);
        let mut r0 = 0;
        while r0 < out.len() {
            let h = hour(r0);
            let mut r1 = r0 + 1;
            while r1 < out.len() && hour(r1) == h {
                r1 += 1;
            }
            self.hours[h].predict_batch(&x[r0 * nf..r1 * nf], nf, &mut out[r0..r1]);
            r0 = r1;
        }
    }
}

/// Chooses the shared penalty of [`RidgeByHour`] on `val` from a small grid (each grid point is 24 solves).
///
/// # Errors
/// [`Error::Unsupported`] if no fit succeeds.
pub fn tune_lambda_by_hour(train: &Dataset, val: &Dataset, columns: &[usize]) -> Result<f64> {
    let grams: Vec<(Gram, Dataset)> = (0..HOURS)
        .map(|h| {
            (
                Gram::new(&train.select(|_, r| hour_of(r) == h), columns),
                val.select(|_, r| hour_of(r) == h),
            )
        })
        .collect();
    let mut best = (f64::INFINITY, 1e-2);
    for lambda in [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0] {
        let mut err = 0.0;
        for (g, v) in &grams {
            let r = g.solve(lambda)?;
            err += (0..v.len())
                .map(|i| (r.predict(v.row(i)) - v.y[i]).abs())
                .sum::<f64>();
        }
        if err < best.0 {
            best = (err, lambda);
        }
    }
    Ok(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_linear_function() {
        let mut d = Dataset {
            n_features: 3,
            ..Default::default()
        };
        for i in 0..200 {
            let a = (i as f64 * 0.37).sin();
            let b = (i as f64 * 0.11).cos();
            d.x.extend([a, b, 5.0]);
            d.y.push(2.0 + 3.0 * a - b);
        }
        let r = Ridge::fit(&d, &[0, 1, 2], 1e-8).unwrap();
        for i in 0..200 {
            assert!((r.predict(d.row(i)) - d.y[i]).abs() < 1e-4);
        }
        let lam = tune_lambda(&d, &d, &[0, 1, 2]).unwrap();
        assert!(lam < 1e-3, "{lam}");
    }

    #[test]
    fn batch_predictions_equal_row_by_row_ones_bit_for_bit() {
        // Column 0 is the time of day (it picks the hour of `RidgeByHour`); 5 rows per hour.
        let mut d = Dataset {
            n_features: 4,
            ..Default::default()
        };
        for i in 0..24 * 5 * 4 {
            let (a, b) = ((i as f64 * 0.37).sin(), (i as f64 * 0.11).cos() * 1e3);
            d.x.extend([(i % 120) as f64 / 120.0, a, b, a * b]);
            d.y.push(2.0 + 3.0 * a - b + 0.1 * (i as f64 * 1.3).sin());
        }
        let ridge = Ridge::fit(&d, &[1, 2, 3], 1e-3).unwrap();
        let by_hour = RidgeByHour::fit(&d, &[1, 2, 3], 1e-3).unwrap();
        // Row counts that are not a multiple of the four interleaved rows, and hours out of order.
        let mut x = d.x.clone();
        x.rotate_left(4 * 7);
        x[4 * 3 + 2] = f64::NAN;
        for n in [0, 1, 3, 5, 117, 480] {
            let mut out = vec![0.0; n];
            ridge.predict_batch(&x, 4, &mut out);
            for (r, o) in out.iter().enumerate() {
                assert_eq!(
                    o.to_bits(),
                    ridge.predict(&x[4 * r..4 * r + 4]).to_bits(),
                    "{n}: {r}"
                );
            }
            by_hour.predict_batch(&x, 4, &mut out);
            for (r, o) in out.iter().enumerate() {
                let want = by_hour.predict(&x[4 * r..4 * r + 4]);
                assert_eq!(o.to_bits(), want.to_bits(), "{n}: {r}");
            }
        }
    }
}
