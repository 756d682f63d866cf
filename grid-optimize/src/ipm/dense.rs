//! Dense Cholesky factorisation and solve of the fleet's T×T Schur complement (row-major, lower triangle).

/// Factorises the symmetric positive definite matrix whose lower triangle is stored row-major in `a` (n×n), in
/// place: afterwards the lower triangle holds `L` with `A = L Lᵀ`. A pivot that rounding drives to zero or below is
/// replaced by a huge value, which drops that direction from the step instead of failing (the usual interior-point
/// safeguard). Returns the number of such replaced pivots.
pub(crate) fn cholesky(a: &mut [f64], n: usize) -> usize {
    let mut replaced = 0;
    let scale = (0..n)
        .fold(0.0_f64, |m, i| m.max(a[i * n + i].abs()))
        .max(1e-300);
    for j in 0..n {
        let (head, tail) = a.split_at_mut(j * n);
        let rowj = &mut tail[..n];
        // rowj[k] for k < j already holds the finished L[j][k] after the updates below.
        for k in 0..j {
            let rowk = &head[k * n..k * n + k + 1];
            rowj[k] = (rowj[k] - dot(&rowj[..k], &rowk[..k])) / rowk[k];
        }
        let mut d = rowj[j] - dot(&rowj[..j], &rowj[..j]);
        if d <= 1e-14 * scale || !d.is_finite() {
            d = 1e128;
            replaced += 1;
        }
        rowj[j] = d.sqrt();
    }
    replaced
}

/// `Σ a_i b_i` with four independent partial sums, so that the loop vectorises and pipelines.
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Solves `L Lᵀ x = b` in place for the factor produced by [`cholesky`].
pub(crate) fn solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let row = &l[i * n..i * n + i];
        b[i] = (b[i] - dot(row, &b[..i])) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let v = b[i] / l[i * n + i];
        b[i] = v;
        for k in 0..i {
            b[k] -= l[i * n + k] * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_small_spd_system() {
        // A = [[4, 2, 0], [2, 5, 1], [0, 1, 3]], lower triangle row-major.
        let n = 3;
        let mut a = vec![4.0, 0.0, 0.0, 2.0, 5.0, 0.0, 0.0, 1.0, 3.0];
        assert_eq!(cholesky(&mut a, n), 0);
        let x_true = [1.0, -2.0, 0.5];
        let mut b = vec![4.0 - 4.0, 2.0 - 10.0 + 0.5, -2.0 + 1.5];
        solve(&a, n, &mut b);
        for (x, t) in b.iter().zip(x_true) {
            assert!((x - t).abs() < 1e-12, "{x} vs {t}");
        }
    }
}
