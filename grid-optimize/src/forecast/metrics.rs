//! Point and quantile forecast error metrics: MAE, RMSE, sMAPE, pinball loss and interval coverage.

/// Mean absolute error of paired values (NaN if empty).
pub fn mae(actual: &[f64], forecast: &[f64]) -> f64 {
    mean(actual.iter().zip(forecast).map(|(a, f)| (a - f).abs()))
}

/// Root mean squared error of paired values (NaN if empty).
pub fn rmse(actual: &[f64], forecast: &[f64]) -> f64 {
    mean(actual.iter().zip(forecast).map(|(a, f)| (a - f) * (a - f))).sqrt()
}

/// Symmetric MAPE in percent (0..=200): mean of `2|f - a| / (|a| + |f|)`, a pair of zeros counting as 0.
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    100.0
        * mean(actual.iter().zip(forecast).map(|(a, f)| {
            let d = a.abs() + f.abs();
            if d == 0.0 {
                0.0
            } else {
                2.0 * (a - f).abs() / d
            }
        }))
}

/// Pinball (quantile) loss of one forecast `q` of the `alpha` quantile given the actual value `y`.
///
/// It is minimised in expectation by the true `alpha` quantile, is never negative, and is zero iff `q == y`.
pub fn pinball(alpha: f64, y: f64, q: f64) -> f64 {
    let d = y - q;
    if d >= 0.0 {
        alpha * d
    } else {
        (alpha - 1.0) * d
    }
}

/// Mean pinball loss over paired values (NaN if empty).
pub fn mean_pinball(alpha: f64, actual: &[f64], q: &[f64]) -> f64 {
    mean(actual.iter().zip(q).map(|(y, q)| pinball(alpha, *y, *q)))
}

/// Share (0..=1) of actual values inside their `[lo, hi]` interval, bounds included.
pub fn coverage(actual: &[f64], lo: &[f64], hi: &[f64]) -> f64 {
    mean(
        actual
            .iter()
            .zip(lo.iter().zip(hi))
            .map(|(a, (l, h))| f64::from(u8::from(*l <= *a && *a <= *h))),
    )
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = it.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// The empirical `p` quantile (0..=1) of `v` with linear interpolation (NaN if empty); sorts `v`.
pub fn quantile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let x = p.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let i = x.floor() as usize;
    let j = (i + 1).min(v.len() - 1);
    v[i] + (v[j] - v[i]) * (x - i as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn simple_values() {
        assert_eq!(mae(&[1.0, 3.0], &[2.0, 1.0]), 1.5);
        assert_eq!(rmse(&[0.0, 0.0], &[3.0, 4.0]), (12.5f64).sqrt());
        assert_eq!(smape(&[0.0, 1.0], &[0.0, 3.0]), 50.0);
        assert_eq!(coverage(&[1.0, 5.0], &[0.0, 0.0], &[1.0, 4.0]), 0.5);
        assert_eq!(quantile(&mut [3.0, 1.0, 2.0], 0.5), 2.0);
        assert!(mae(&[], &[]).is_nan());
    }

    proptest! {
        #[test]
        fn pinball_is_nonnegative_and_zero_only_at_the_actual(a in 0.01f64..0.99, y in -1e3f64..1e3, q in -1e3f64..1e3) {
            let l = pinball(a, y, q);
            prop_assert!(l >= 0.0);
            prop_assert_eq!(l == 0.0, y == q);
        }

        #[test]
        fn the_empirical_quantile_minimises_mean_pinball(
            ys in proptest::collection::vec(-100.0f64..100.0, 5..60),
            a in 0.05f64..0.95,
            dq in -50.0f64..50.0,
        ) {
            // Any sample quantile (an order statistic) minimises the mean pinball loss over the sample.
            let mut s = ys.clone();
            s.sort_by(f64::total_cmp);
            let k = ((a * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
            let best = s[k];
            let loss = |q: f64| ys.iter().map(|y| pinball(a, *y, q)).sum::<f64>();
            prop_assert!(loss(best) <= loss(best + dq) + 1e-9);
        }

        #[test]
        fn mae_never_exceeds_rmse(pairs in proptest::collection::vec((-1e3f64..1e3, -1e3f64..1e3), 1..50)) {
            let (a, f): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
            prop_assert!(mae(&a, &f) <= rmse(&a, &f) + 1e-9);
        }
    }
}
