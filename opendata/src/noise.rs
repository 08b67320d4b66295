//! Randomness for differential privacy behind one small trait: [`OpenDpNoise`] is the production
//! source (OpenDP's exact Canonne–Kamath–Steinke samplers and `fill_bytes`, all drawing from
//! OpenSSL's `RAND_priv_bytes`, a CSPRNG); tests inject deterministic sources. There is no
//! floating-point noise and no other random number generator in this crate.

use dashu::integer::IBig;
use dashu::rational::RBig;

/// A noise source failed (no entropy, or a sample outside `i64`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoiseError(pub String);

/// The randomness a release needs.
pub trait Noise {
    /// One sample of the discrete Laplace distribution with the given scale b:
    /// P(x) = (e^{1/b} − 1)/(e^{1/b} + 1) · e^{−|x|/b}.
    fn discrete_laplace(&mut self, scale: &RBig) -> Result<i64, NoiseError>;
    /// One sample of the discrete Gaussian distribution with the given σ:
    /// P(x) ∝ e^{−x²/(2σ²)}.
    fn discrete_gaussian(&mut self, scale: &RBig) -> Result<i64, NoiseError>;
    /// 64 uniformly random bits (contribution bounding's subset choice).
    fn random_u64(&mut self) -> Result<u64, NoiseError>;

    /// An independent source of the same kind for another thread, if this source has one
    /// (deterministic test sources do not: their draws stay in order on one thread).
    fn fork(&self) -> Option<Box<dyn Noise + Send>> {
        None
    }

    /// A uniform integer in `0..n` (rejection sampling, no modulo bias); `n` must be positive.
    fn below(&mut self, n: u64) -> Result<u64, NoiseError> {
        if n <= 1 {
            return Ok(0);
        }
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.random_u64()?;
            if x < zone {
                return Ok(x % n);
            }
        }
    }
}

/// The production noise source: OpenDP's exact samplers over OpenSSL's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenDpNoise;

fn to_i64(x: IBig) -> Result<i64, NoiseError> {
    i64::try_from(&x).map_err(|_| NoiseError(format!("noise sample `{x}` outside i64")))
}

impl Noise for OpenDpNoise {
    fn discrete_laplace(&mut self, scale: &RBig) -> Result<i64, NoiseError> {
        let x = opendp::traits::samplers::sample_discrete_laplace(scale.clone())
            .map_err(|e| NoiseError(format!("discrete laplace sampler: {e}")))?;
        to_i64(x)
    }

    fn discrete_gaussian(&mut self, scale: &RBig) -> Result<i64, NoiseError> {
        let x = opendp::traits::samplers::sample_discrete_gaussian(scale.clone())
            .map_err(|e| NoiseError(format!("discrete gaussian sampler: {e}")))?;
        to_i64(x)
    }

    fn fork(&self) -> Option<Box<dyn Noise + Send>> {
        Some(Box::new(OpenDpNoise))
    }

    fn random_u64(&mut self) -> Result<u64, NoiseError> {
        let mut buf = [0u8; 8];
        opendp::traits::samplers::fill_bytes(&mut buf)
            .map_err(|e| NoiseError(format!("secure random bytes: {e}")))?;
        Ok(u64::from_le_bytes(buf))
    }
}

/// Converts a positive finite scale to the exact rational OpenDP takes.
pub fn scale_to_rbig(scale: f64) -> Result<RBig, NoiseError> {
    if !(scale.is_finite() && scale >= 0.0) {
        return Err(NoiseError(format!(
            "scale `{scale}` is not a non-negative finite number"
        )));
    }
    RBig::try_from(scale).map_err(|_| NoiseError(format!("scale `{scale}` not representable")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn production_samplers_return_values() {
        let mut n = OpenDpNoise;
        let s = scale_to_rbig(2.0).unwrap();
        for _ in 0..50 {
            let x = n.discrete_laplace(&s).unwrap();
            assert!(x.abs() < 1_000);
            let y = n.discrete_gaussian(&s).unwrap();
            assert!(y.abs() < 1_000);
        }
        let a = n.random_u64().unwrap();
        let b = n.random_u64().unwrap();
        assert_ne!(a, b, "two 64-bit draws collided");
        assert!(n.below(7).unwrap() < 7);
    }

    #[test]
    fn scale_conversion_is_exact() {
        assert_eq!(
            scale_to_rbig(0.5).unwrap(),
            RBig::from_parts(1.into(), 2u8.into())
        );
        assert!(scale_to_rbig(f64::NAN).is_err());
        assert!(scale_to_rbig(-1.0).is_err());
    }
}
