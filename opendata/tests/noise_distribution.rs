//! The production noise source against the exact distributions: chi-square goodness-of-fit
//! tests of OpenDP's discrete Laplace and discrete Gaussian samplers (over OpenSSL's CSPRNG) at a
//! configured scale, with false-alarm rate α = 1e-6, and the same test rejecting a wrong scale.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use allmende_opendata::noise::scale_to_rbig;
use allmende_opendata::{Noise, OpenDpNoise};

/// Upper 1e-6 quantile of the standard normal distribution.
const Z_1E6: f64 = 4.753_424_308_822_899;

/// The chi-square critical value for `df` degrees of freedom at α = 1e-6 (Wilson–Hilferty:
/// (χ²/df)^{1/3} is close to normal with mean 1 − 2/(9 df) and variance 2/(9 df); for df ≥ 20,
/// which the bins below give, it lies within 2 % above the exact quantile, so the real
/// false-alarm rate is at most 1e-6).
fn critical(df: usize) -> f64 {
    let d = df as f64;
    let v = 2.0 / (9.0 * d);
    d * (1.0 - v + Z_1E6 * v.sqrt()).powi(3)
}

/// Bins −t..=t with both tails pooled into the outermost bins, t the largest with an expected
/// count of at least 5 in every inner bin; returns the statistic and the degrees of freedom.
fn chi_square(samples: &[i64], pmf: &dyn Fn(i64) -> f64) -> (f64, usize) {
    let n = samples.len() as f64;
    let mut t = 0i64;
    while n * pmf(t + 1) >= 5.0 {
        t += 1;
    }
    // Expected probabilities of −t..=t; the outer bins take their tails (symmetric pmfs).
    let mut probs: Vec<f64> = (-t..=t).map(pmf).collect();
    let inner: f64 = probs.iter().sum();
    let tail = (1.0 - inner) / 2.0;
    let last = probs.len() - 1;
    probs[0] += tail;
    probs[last] += tail;
    let mut counts = vec![0u64; probs.len()];
    for &x in samples {
        counts[(x.clamp(-t, t) + t) as usize] += 1;
    }
    let stat = counts
        .iter()
        .zip(&probs)
        .map(|(&o, &p)| {
            let e = n * p;
            (o as f64 - e).powi(2) / e
        })
        .sum();
    (stat, probs.len() - 1)
}

fn laplace_pmf(b: f64) -> impl Fn(i64) -> f64 {
    // P(x) = (e^{1/b} − 1)/(e^{1/b} + 1) · e^{−|x|/b}
    let c = ((1.0 / b).exp() - 1.0) / ((1.0 / b).exp() + 1.0);
    move |x| c * (-(x.abs() as f64) / b).exp()
}

fn gaussian_pmf(sigma: f64) -> impl Fn(i64) -> f64 {
    let w = move |x: i64| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp();
    let reach = (40.0 * sigma) as i64 + 10;
    let norm: f64 = (-reach..=reach).map(w).sum();
    move |x| w(x) / norm
}

fn draw(n: usize, scale: f64, gaussian: bool) -> Vec<i64> {
    let mut noise = OpenDpNoise;
    let s = scale_to_rbig(scale).unwrap();
    (0..n)
        .map(|_| {
            if gaussian {
                noise.discrete_gaussian(&s).unwrap()
            } else {
                noise.discrete_laplace(&s).unwrap()
            }
        })
        .collect()
}

const SCALE: f64 = 3.0;

#[test]
fn discrete_laplace_matches_its_pmf() {
    let samples = draw(200_000, SCALE, false);
    let (stat, df) = chi_square(&samples, &laplace_pmf(SCALE));
    let crit = critical(df);
    assert!(df >= 20, "df {df}");
    assert!(
        stat < crit,
        "chi-square {stat:.1} ≥ {crit:.1} (df {df}): laplace sampler off"
    );
}

#[test]
fn discrete_laplace_at_a_wrong_scale_is_rejected() {
    let samples = draw(40_000, 1.5 * SCALE, false);
    let (stat, df) = chi_square(&samples, &laplace_pmf(SCALE));
    assert!(
        stat > critical(df),
        "1.5× scale passed: {stat:.1} (df {df})"
    );
}

#[test]
fn discrete_gaussian_matches_its_pmf() {
    let samples = draw(100_000, SCALE, true);
    let (stat, df) = chi_square(&samples, &gaussian_pmf(SCALE));
    let crit = critical(df);
    assert!(df >= 20, "df {df}");
    assert!(
        stat < crit,
        "chi-square {stat:.1} ≥ {crit:.1} (df {df}): gaussian sampler off"
    );
}

#[test]
fn discrete_gaussian_at_a_wrong_scale_is_rejected() {
    let samples = draw(40_000, 1.5 * SCALE, true);
    let (stat, df) = chi_square(&samples, &gaussian_pmf(SCALE));
    assert!(
        stat > critical(df),
        "1.5× scale passed: {stat:.1} (df {df})"
    );
}

#[test]
fn the_critical_value_is_right() {
    // Exact χ² upper 1e-6 quantiles (regularised incomplete gamma, bisection):
    // df 20 → 65.421, df 30 → 82.044, df 50 → 112.608.
    for (df, exact) in [(20, 65.421), (30, 82.044), (50, 112.608)] {
        let c = critical(df);
        assert!(c >= exact && c / exact < 1.02, "df {df}: {c}");
    }
}
