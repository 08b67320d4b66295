//! The differential-privacy accounting of one release: how ε (and δ) are split over the noisy
//! quantities, the noise scale of each, and the threshold τ on noisy distinct-unit counts that
//! makes releasing data-dependent cells (ε, δ)-DP.
//!
//! Neighbouring datasets differ in all rows of one unit (add/remove). After contribution bounding
//! a unit touches at most l0 = `max_cells_per_unit` cells with at most l∞ = `max_rows_per_cell`
//! rows each, and each summed value is clipped to `[lo, hi]` and rounded to an integer, so
//! |value| ≤ M = max(|round(lo)|, |round(hi)|).
//!
//! Quantities per cell: the distinct-unit count (always: it decides the release), the row count
//! (when a `count = "rows"` or `mean` measure needs it) and one sum per `sum`/`mean` measure.
//! Per-cell change from one unit: units 1, rows l∞, a sum l∞·M; over the l0 cells:
//! L1 sensitivity Δ1 = l0·c, L2 sensitivity Δ2 = √l0·c.
//!
//! * Laplace: each of the Q quantities gets ε/Q; discrete Laplace scale b = Δ1·Q/ε (pure
//!   ε-DP on the cells present in both neighbours, by sequential composition).
//! * Gaussian: zCDP. δ is split in halves: δ/2 for the conversion, δ/2 for thresholding.
//!   ρ is the largest with ε = ρ + 2√(ρ·ln(2/δ)) (Bun–Steinke 2016, Prop. 1.3), i.e.
//!   √ρ = √(ln(2/δ) + ε) − √(ln(2/δ)); each quantity gets ρ/Q, σ = Δ2/√(2ρ/Q)
//!   (discrete Gaussian: Δ2²/(2σ²)-zCDP, Canonne–Kamath–Steinke 2020, Thm. 14).
//!
//! Threshold τ. A cell present only because of one unit has true unit count 1; one unit creates
//! at most l0 such cells; the release is DP with δ_τ if l0·P(1 + Z ≥ τ) ≤ δ_τ.
//! * Laplace (δ_τ = δ): P(Z ≥ t) = r^t/(1 + r), r = e^{−1/b}, for t ≥ 1, hence
//!   τ = ⌈1 + b·ln(l0 / (δ·(1 + r)))⌉.
//! * Gaussian (δ_τ = δ/2): the discrete Gaussian is σ²-subgaussian (CKS20), so
//!   P(Z ≥ t) ≤ e^{−t²/(2σ²)}, hence τ = ⌈1 + σ·√(2·ln(2·l0/δ))⌉.
//!
//! Released cells: noisy unit count ≥ max(k, τ). Suppression looks only at noisy counts.

use serde::{Deserialize, Serialize};

use crate::spec::{DpSpec, MeasureKind, Mechanism};

/// One noisy quantity per cell and its noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoisyQuantity {
    /// `units`, `rows` or `sum:<measure>`.
    pub quantity: String,
    /// L1 sensitivity (Laplace) or L2 sensitivity (Gaussian) over all cells of one unit.
    pub sensitivity: f64,
    /// The discrete Laplace scale b or the discrete Gaussian σ.
    pub scale: f64,
    /// ε spent on it (Laplace) or ρ (Gaussian, zCDP).
    pub budget_share: f64,
}

/// The accounting of one release.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub quantities: Vec<NoisyQuantity>,
    pub threshold: i64,
    pub threshold_delta: f64,
    pub rho: Option<f64>,
}

/// The largest absolute integer a clipped and rounded value can take.
pub(crate) fn value_bound(clip: (f64, f64)) -> f64 {
    clip.0.round().abs().max(clip.1.round().abs())
}

/// Index of the row-count quantity and of each measure's sum quantity in [`Plan::quantities`].
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    pub rows: Option<usize>,
    /// Per measure: the quantity of its sum (sum and mean measures).
    pub sums: Vec<Option<usize>>,
}

/// Decides the noisy quantities and their slots.
pub(crate) fn slots(measures: &[(MeasureKind, String)]) -> (Vec<(String, f64)>, Slots) {
    // (name, per-cell sensitivity c)
    let mut q = vec![("units".to_string(), 1.0)];
    let needs_rows = measures
        .iter()
        .any(|(k, _)| matches!(k, MeasureKind::Rows | MeasureKind::Mean { .. }));
    let rows = needs_rows.then(|| {
        q.push(("rows".to_string(), 1.0));
        q.len() - 1
    });
    let mut sums = Vec::new();
    for (kind, name) in measures {
        match kind {
            MeasureKind::Sum { clip, .. } | MeasureKind::Mean { clip, .. } => {
                q.push((format!("sum:{name}"), clip.map_or(0.0, value_bound)));
                sums.push(Some(q.len() - 1));
            }
            _ => sums.push(None),
        }
    }
    (q, Slots { rows, sums })
}

/// The noise plan: scales and threshold for the given quantities.
pub(crate) fn plan(dp: &DpSpec, k: u64, quantities: &[(String, f64)]) -> Plan {
    let l0 = f64::from(dp.max_cells_per_unit);
    let linf = f64::from(dp.max_rows_per_cell);
    let n = quantities.len() as f64;
    let mut out = Vec::new();
    let (threshold, threshold_delta, rho) = match dp.mechanism {
        Mechanism::Laplace => {
            let eps_q = dp.epsilon / n;
            for (i, (name, c)) in quantities.iter().enumerate() {
                // Per-cell change by one unit: 1 for units, l∞·c for rows (c = 1) and sums.
                let per = if i == 0 { 1.0 } else { linf * c };
                let sens = l0 * per;
                out.push(NoisyQuantity {
                    quantity: name.clone(),
                    sensitivity: sens,
                    scale: sens / eps_q,
                    budget_share: eps_q,
                });
            }
            let b = out[0].scale;
            let r = (-1.0 / b).exp();
            let tau = (1.0 + b * (l0 / (dp.delta * (1.0 + r))).ln()).ceil();
            (tau, dp.delta, None)
        }
        Mechanism::Gaussian => {
            let l = (2.0 / dp.delta).ln();
            let rho = ((l + dp.epsilon).sqrt() - l.sqrt()).powi(2);
            let rho_q = rho / n;
            for (i, (name, c)) in quantities.iter().enumerate() {
                // Per-cell change by one unit: 1 for units, l∞·c for rows (c = 1) and sums.
                let per = if i == 0 { 1.0 } else { linf * c };
                let sens = l0.sqrt() * per;
                out.push(NoisyQuantity {
                    quantity: name.clone(),
                    sensitivity: sens,
                    scale: sens / (2.0 * rho_q).sqrt(),
                    budget_share: rho_q,
                });
            }
            let sigma = out[0].scale;
            let tau = (1.0 + sigma * (2.0 * (2.0 * l0 / dp.delta).ln()).sqrt()).ceil();
            (tau, dp.delta / 2.0, Some(rho))
        }
    };
    let threshold = (threshold as i64).max(i64::try_from(k).unwrap_or(i64::MAX));
    Plan {
        quantities: out,
        threshold,
        threshold_delta,
        rho,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn spec(mechanism: Mechanism) -> DpSpec {
        DpSpec {
            epsilon: 1.0,
            delta: 1e-6,
            mechanism,
            max_cells_per_unit: 4,
            max_rows_per_cell: 3,
        }
    }

    #[test]
    fn laplace_split_and_threshold() {
        let q = vec![
            ("units".to_string(), 1.0),
            ("rows".to_string(), 1.0),
            ("sum:d".to_string(), 20_000.0),
        ];
        let p = plan(&spec(Mechanism::Laplace), 2, &q);
        // ε/3 each; units Δ1 = 4, rows Δ1 = 4·3, sum Δ1 = 4·3·20000.
        assert_eq!(p.quantities[0].scale, 12.0);
        assert_eq!(p.quantities[1].scale, 36.0);
        assert_eq!(p.quantities[2].scale, 720_000.0);
        // τ from l0·r^{τ−1}/(1+r) ≤ δ; check the inequality holds at τ and fails at τ − 1.
        let b = 12.0f64;
        let r = (-1.0 / b).exp();
        let tail = |t: f64| 4.0 * r.powf(t - 1.0) / (1.0 + r);
        let tau = p.threshold as f64;
        assert!(tail(tau) <= 1e-6 && tail(tau - 1.0) > 1e-6, "tau {tau}");
        // k dominates when larger.
        assert_eq!(
            plan(&spec(Mechanism::Laplace), 10_000, &q).threshold,
            10_000
        );
    }

    #[test]
    fn gaussian_rho_converts_back_to_epsilon() {
        let q = vec![("units".to_string(), 1.0)];
        let p = plan(&spec(Mechanism::Gaussian), 2, &q);
        let rho = p.rho.unwrap();
        let eps = rho + 2.0 * (rho * (2.0f64 / 1e-6).ln()).sqrt();
        assert!((eps - 1.0).abs() < 1e-9, "eps {eps}");
        // σ for Δ2 = √4 and ρ: Δ2²/(2σ²) = ρ.
        let s = p.quantities[0].scale;
        assert!((4.0 / (2.0 * s * s) - rho).abs() < 1e-12);
        assert_eq!(p.threshold_delta, 5e-7);
    }
}
